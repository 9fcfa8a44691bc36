//! Maille's controller: watches Kubernetes objects (or reads a folder of manifests), builds
//! the routing table, serves it to the proxies, and keeps the objects that make mesh names
//! reachable.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod dns;
pub mod gateway;
pub mod identity;
pub mod kubernetes;
pub mod lease;
pub mod manifests;
pub mod mesh;
pub mod metrics;
pub mod naming;
pub mod problem;
pub mod rebuild;
pub mod run;
pub mod settings;
pub mod smi;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod translate;
pub mod writer;

pub use problem::{ObjectRef, Problem};
pub use settings::{PortRange, Settings};
pub use snapshot::Snapshot;
pub use translate::{translate, ServiceStatus, Translation};
