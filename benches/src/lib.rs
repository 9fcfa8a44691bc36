//! Maille's benchmarks: table fixtures and the Kubernetes objects behind them for the criterion
//! micro-benches, and the pieces the load bench runs (a fixed-response backend, a forward-only
//! Pingora proxy, a TCP load generator, and a counting allocator for memory figures); and the
//! fleet bench (controller, simulated proxies and the real proxy under a churn of changes).
//!
//! The criterion benches live in `benches/`, the load bench driver in `load/run`; see
//! `README.md` for how to run each and how to read the figures.

pub mod alloc_count;
pub mod backend;
pub mod fixtures;
pub mod fleet;
pub mod floor;
pub mod objects;
pub mod tcp_load;
