//! The JSON form of the routing table, exchanged between controller and proxy.
//!
//! Unknown fields are ignored so that a newer controller can talk to an older proxy during a
//! rolling upgrade; everything optional has a default. Nothing here is validated: see
//! [`crate::Table`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mesh::{MtlsMode, NodeSpec, WorkloadSpec};
use crate::options::Scheme;
use crate::table::ServiceKey;

/// The whole routing table as it travels over the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    /// Must equal [`crate::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Generation number assigned by the controller; grows with every rebuild.
    #[serde(default)]
    pub version: u64,
    /// Access-control mode: when true, traffic needs an [`AccessRuleSpec`] that allows it.
    #[serde(default)]
    pub acl: bool,
    /// One entry per meshed service port.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// How traffic between nodes is carried (default `disabled`: directly, as before; not
    /// written when disabled, so tables without mutual TLS read as they always did).
    #[serde(default, skip_serializing_if = "MtlsMode::is_disabled")]
    pub mtls: MtlsMode,
    /// The node proxies and their tunnel addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    /// The workloads (pod IP, node, ServiceAccount), filled only when `mtls` is not disabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSpec>,
}

/// How the proxy carries a service's traffic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrafficType {
    /// HTTP/1.1, h2c and gRPC, routed by listener port and Host header.
    #[default]
    Http,
    /// Raw TCP, routed by listener port alone.
    Tcp,
    /// UDP datagrams, routed by listener port alone.
    Udp,
}

impl TrafficType {
    /// The lowercase name used in annotations, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Http => "http",
            TrafficType::Tcp => "tcp",
            TrafficType::Udp => "udp",
        }
    }
}

impl fmt::Display for TrafficType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrafficType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "http" => Ok(TrafficType::Http),
            "tcp" => Ok(TrafficType::Tcp),
            "udp" => Ok(TrafficType::Udp),
            _ => Err(()),
        }
    }
}

/// One meshed port of one Kubernetes Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Namespace of the user's Service.
    pub namespace: String,
    /// Name of the user's Service.
    pub name: String,
    /// The Service port clients call.
    pub port: u16,
    /// The Service port's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The proxy listener port this service port is reached on.
    pub mesh_port: u16,
    /// How the traffic is carried.
    #[serde(default)]
    pub traffic_type: TrafficType,
    /// The Service's ClusterIP; HTTP requests whose Host is this address also match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Ready endpoints, `ip:port` with the resolved target port.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Per-service middlewares, from annotations.
    #[serde(default)]
    pub options: OptionsSpec,
    /// Traffic splits rooted at this service port; the first whose matches fit a request wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<SplitSpec>,
    /// In ACL mode, who may reach this service port. Ignored when the table's `acl` is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRuleSpec>,
    /// Gateway API routes attached to this service port: one entry per match, in precedence
    /// order; the first that fits a request wins, and none fitting is answered 404.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::route::RouteSpec>,
}

/// One backend address of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `ip:port` (IPv6 as `[ip]:port`).
    pub address: String,
    /// Relative weight, 1 to [`crate::table::MAX_WEIGHT`]; 0 takes the endpoint out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The node the endpoint runs on (EndpointSlice `endpoints[].nodeName`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl EndpointSpec {
    /// An endpoint of weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        EndpointSpec {
            address: address.into(),
            weight: 1,
            node: None,
        }
    }

    /// This endpoint, running on `node`.
    pub fn on_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }
}

/// Per-service middleware settings as carried on the wire. All off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionsSpec {
    /// Extra attempts after the first, on another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<u32>,
    /// Share of the request rate that retries may add, in percent (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<u32>,
    /// Whole-request deadline in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Token-bucket rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Circuit-breaker expression in the Traefik Mesh language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<String>,
    /// How long a tripped circuit breaker stays open before probing, in milliseconds
    /// (default 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_recovery_ms: Option<u64>,
    /// How the proxy talks to the endpoints: `http`, `https` or `h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<SchemeSpec>,
    /// For `https`: the name to verify the endpoint's certificate against (and send as SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// For `https`: skip certificate verification. Only when the user asked for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_insecure_skip_verify: bool,
}

/// The `scheme` option as it travels: a scheme this build knows, or another value, kept so that
/// validation can refuse it naming the service, the field and the value (a newer controller may
/// send a scheme an older proxy does not know). Written as the bare string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SchemeSpec {
    /// `http`, `https` or `h2c`.
    Known(Scheme),
    /// Any other string.
    Unknown(String),
}

impl SchemeSpec {
    /// The string as written.
    pub fn as_str(&self) -> &str {
        match self {
            SchemeSpec::Known(s) => s.as_str(),
            SchemeSpec::Unknown(s) => s,
        }
    }
}

impl From<Scheme> for SchemeSpec {
    fn from(s: Scheme) -> Self {
        SchemeSpec::Known(s)
    }
}

impl From<&str> for SchemeSpec {
    fn from(s: &str) -> Self {
        Scheme::parse(s).map_or_else(|| SchemeSpec::Unknown(s.to_string()), SchemeSpec::Known)
    }
}

impl fmt::Display for SchemeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SchemeSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SchemeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(SchemeSpec::from(s.as_str()))
    }
}

/// A token bucket: `average` requests per second sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSpec {
    /// Sustained requests per second.
    pub average: u32,
    /// Bucket size.
    pub burst: u32,
}

/// A TrafficSplit rule on a root service port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitSpec {
    /// `namespace/name` of the TrafficSplit, for logs and metrics.
    pub name: String,
    /// HTTP matches restricting which requests the split applies to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchSpec>,
    /// Weighted backends, each another service port of the table.
    pub backends: Vec<SplitBackendSpec>,
}

/// One weighted backend of a split: a service port that is itself in the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitBackendSpec {
    /// Namespace of the backend service.
    pub namespace: String,
    /// Name of the backend service.
    pub name: String,
    /// Service port of the backend.
    pub port: u16,
    /// Relative weight; 0 sends it nothing.
    pub weight: u32,
}

/// An HTTP request match (from an SMI HTTPRouteGroup). Conditions are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchSpec {
    /// Name of the match in its HTTPRouteGroup, for diagnostics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Regex the whole path must match (anchored at both ends, as SMI specifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Allowed methods; empty or `*` means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name → regex its value must match (anchored).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// In ACL mode: clients allowed to reach a service port, from one SMI TrafficTarget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRuleSpec {
    /// `namespace/name` of the TrafficTarget, for logs and metrics.
    pub name: String,
    /// Client IP addresses (pod IPs of the source ServiceAccounts), checked by a proxy for
    /// clients on its own node.
    pub sources: Vec<String>,
    /// The source identities, `namespace/serviceaccount`, checked by the destination proxy
    /// for traffic that arrives through the tunnel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// For HTTP: requests must fit one of these matches. `None` allows any request or
    /// connection (a TCPRoute, or a rule without HTTP restrictions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpMatchSpec>>,
}

/// The media type of a [`TableDelta`] on the wire; a proxy that can apply deltas lists it in
/// `Accept`.
pub const DELTA_MEDIA_TYPE: &str = "application/vnd.maille.delta+json";

/// What changed in the table between the version a proxy holds and the current one, keyed by
/// service port. Applying it to the table of `base_version` gives the table of `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableDelta {
    /// Must equal [`crate::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The version the delta starts from: the one the proxy holds.
    pub base_version: u64,
    /// The version the delta leads to.
    pub version: u64,
    /// Access-control mode of the new version.
    #[serde(default)]
    pub acl: bool,
    /// Service ports added or changed, each whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ServiceSpec>,
    /// Service ports no longer in the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ServiceKey>,
    /// Mutual-TLS mode of the new version.
    #[serde(default, skip_serializing_if = "MtlsMode::is_disabled")]
    pub mtls: MtlsMode,
    /// The node proxies of the new version, whole; `None` leaves them as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeSpec>>,
    /// Workloads added or changed, each whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads_changed: Vec<WorkloadSpec>,
    /// IPs of the workloads no longer in the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads_removed: Vec<String>,
}
