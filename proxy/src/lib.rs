//! Maille's per-node proxy: turns a routing table into traffic decisions, on Pingora.

pub mod acl;
pub mod admin;
pub mod balance;
pub mod clock;
pub mod compiled;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod picker;
pub mod refusal;
pub mod resilience;
pub mod server;
pub mod source;
pub mod split;
pub mod store;
pub mod tcp;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
pub mod tunnel;
pub mod udp;
pub mod upgrade;
pub mod upstream;

pub use config::Config;
pub use server::ProxyServer;
pub use store::TableStore;
