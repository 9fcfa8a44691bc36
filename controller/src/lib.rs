//! Maille's controller: watches Kubernetes objects (or reads a folder of manifests), builds
//! the routing table, serves it to the proxies, and keeps the objects that make mesh names
//! reachable.

pub mod dns;
pub mod naming;
pub mod smi;
