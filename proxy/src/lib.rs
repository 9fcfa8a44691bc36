//! Maille's per-node proxy: turns a routing table into traffic decisions, on Pingora.

pub mod acl;
pub mod resilience;
pub mod split;
pub mod store;
pub mod tcp;
pub mod udp;

pub use store::TableStore;
