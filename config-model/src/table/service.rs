//! The validated parts of a table: service ports and what they hold (endpoints, HTTP matches,
//! splits, access rules), each independent of the table it sits in.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use regex::Regex;

use super::canonical_ip;
use crate::mesh::WorkloadIdentity;
use crate::options::ServiceOptions;
use crate::wire::TrafficType;

/// Identity of a meshed service port (also its wire form, in deltas).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port.
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// A backend address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight, 1 to [`MAX_WEIGHT`](super::MAX_WEIGHT).
    pub weight: u32,
    /// The node it runs on, when known.
    pub node: Option<Arc<str>>,
}

/// A compiled HTTP match; conditions are ANDed.
#[derive(Clone, Debug)]
pub struct HttpMatch {
    /// Name of the match, for diagnostics.
    pub name: Option<String>,
    /// Anchored path regex.
    pub path: Option<Regex>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    /// Lower-case header name and anchored value regex.
    pub headers: Vec<(String, Regex)>,
}

impl HttpMatch {
    /// Whether a request fits this match. `header` returns the value of a header by its
    /// lower-case name. Methods compare exactly: RFC 9110 methods are case-sensitive, so
    /// `get` does not fit a `GET` rule.
    pub fn matches<'a>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if let Some(re) = &self.path {
            if !re.is_match(path) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, re)| header(name).is_some_and(|v| re.is_match(v)))
    }
}

/// One weighted backend of a split, named by its identity: a [`Service`] is shared between the
/// tables that hold it unchanged, so it cannot hold positions in one of them. The table resolves
/// it to a [`ServiceId`](super::ServiceId) ([`Table::split_targets`](super::Table::split_targets)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitBackend {
    /// The backend service port.
    pub service: ServiceKey,
    /// Relative weight; 0 sends it nothing.
    pub weight: u32,
}

/// A traffic split on a root service port.
#[derive(Clone, Debug)]
pub struct Split {
    /// `namespace/name` of the TrafficSplit.
    pub name: String,
    /// Requests it applies to; empty means all.
    pub matches: Vec<HttpMatch>,
    /// Weighted backends.
    pub backends: Vec<SplitBackend>,
}

impl Split {
    /// Sum of the backend weights; 0 means the split sends no traffic anywhere.
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }
}

/// In ACL mode: one rule allowing some clients to reach a service port.
#[derive(Clone, Debug)]
pub struct AccessRule {
    /// `namespace/name` of the TrafficTarget.
    pub name: String,
    /// Allowed client addresses (checked for clients on the proxy's own node).
    pub sources: Vec<IpAddr>,
    /// Allowed client identities (checked for traffic arriving through the tunnel).
    pub identities: Vec<WorkloadIdentity>,
    /// For HTTP, the requests allowed (any of them); `None` allows everything.
    pub http: Option<Vec<HttpMatch>>,
}

impl AccessRule {
    /// Whether the rule lets this client in (before any HTTP match).
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = canonical_ip(client);
        self.sources.contains(&client)
    }

    /// Whether the rule lets a client of this identity in (before any HTTP match).
    pub fn admits_identity(&self, identity: &WorkloadIdentity) -> bool {
        self.identities.contains(identity)
    }
}

/// One validated, meshed service port. Shared (`Arc`) by every table that holds it unchanged.
#[derive(Clone, Debug)]
pub struct Service {
    /// Identity.
    pub key: ServiceKey,
    /// Name of the service port, if any.
    pub port_name: Option<String>,
    /// Listener port on the proxy.
    pub mesh_port: u16,
    /// How traffic is carried.
    pub traffic_type: TrafficType,
    /// ClusterIP, if known.
    pub cluster_ip: Option<IpAddr>,
    /// Ready endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Middlewares.
    pub options: ServiceOptions,
    /// Traffic splits rooted here.
    pub splits: Vec<Split>,
    /// Access rules (meaningful in ACL mode only).
    pub access: Vec<AccessRule>,
    /// Gateway API route entries, in precedence order (http services only).
    pub routes: Vec<crate::route::Route>,
}
