//! Test helpers shared by the controller's unit tests and its integration tests (feature
//! `testing`): the in-memory Kubernetes API server.

pub mod fake_api;
