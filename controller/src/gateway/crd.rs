//! The Gateway API route resources Maille reads (`gateway.networking.k8s.io` HTTPRoute and
//! GRPCRoute, standard channel, plus the `retry` field of the experimental channel), one type
//! per kind at its storage version (v1). HTTPRoute v1beta1 has the same schema, so an object
//! of either version reads into the same type ([`SUPPORTED`]).
//!
//! The fields Maille does not act on (CORS, RequestMirror, ExtensionRef, per-backend filters)
//! are kept as written (`x-kubernetes-preserve-unknown-fields`), so a definition generated from
//! these types never prunes what a user wrote, and translation can report them as unsupported
//! instead of silently dropping them. The chart installs these definitions only when the
//! cluster has none ([`definitions`], written by the `crdgen` binary).
//!
//! List bounds are those of the specification's published CRDs (v1.6): the API server refuses
//! larger lists, and translation checks them again for objects that come from a manifests
//! folder.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the Gateway API.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// (group, kind, versions) of every Gateway API resource Maille reads; the first version is
/// the one watched and stored.
pub const SUPPORTED: &[(&str, &str, &[&str])] = &[
    (GROUP, "HTTPRoute", &["v1", "v1beta1"]),
    (GROUP, "GRPCRoute", &["v1"]),
];

/// The specification's bounds (maxItems / maxLength of the v1.6 standard CRDs).
pub mod limits {
    /// `spec.parentRefs`.
    pub const PARENT_REFS: usize = 32;
    /// `spec.hostnames`.
    pub const HOSTNAMES: usize = 16;
    /// `spec.rules`.
    pub const RULES: usize = 16;
    /// `spec.rules[].matches`.
    pub const MATCHES: usize = 64;
    /// All matches of a route together (the CRD's CEL rule: fewer than 128).
    pub const MATCHES_PER_ROUTE: usize = 127;
    /// `matches[].headers`, `matches[].queryParams`.
    pub const CONDITIONS: usize = 16;
    /// `spec.rules[].filters`, `backendRefs[].filters`.
    pub const FILTERS: usize = 16;
    /// `spec.rules[].backendRefs`.
    pub const BACKEND_REFS: usize = 16;
    /// Header modifier `set`, `add`, `remove`.
    pub const HEADER_EDITS: usize = 16;
    /// `status.parents`.
    pub const STATUS_PARENTS: usize = 32;
    /// A header value (match or modifier).
    pub const HEADER_VALUE: usize = 4096;
    /// A path value, a query parameter value.
    pub const PATH_VALUE: usize = 1024;
    /// A header or query parameter name.
    pub const NAME: usize = 256;
    /// Maximum backend weight.
    pub const WEIGHT: i32 = 1_000_000;
}

/// `gateway.networking.k8s.io/v1` HTTPRoute: how HTTP requests to its parents are routed.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "RouteStatus",
    category = "gateway-api",
    doc = "HTTPRoute provides a way to route HTTP requests: matches on path, headers, query parameters and method, filters, and weighted backends. Maille reads the routes whose parentRefs name a Service (GAMMA).",
    printcolumn(name = "Hostnames", type_ = "string", json_path = ".spec.hostnames"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// The parents the route attaches to; Maille reads those of group "" and kind Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<ParentReference>,
    /// Host names; ignored for Service parents (the Service is the host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
    /// The rules; none means one rule sending everything to the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rules: Vec<HTTPRouteRule>,
}

/// `gateway.networking.k8s.io/v1` GRPCRoute: how gRPC requests to its parents are routed.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    namespaced,
    status = "RouteStatus",
    category = "gateway-api",
    doc = "GRPCRoute provides a way to route gRPC requests: matches on service, method and headers, filters, and weighted backends. Maille reads the routes whose parentRefs name a Service (GAMMA).",
    printcolumn(name = "Hostnames", type_ = "string", json_path = ".spec.hostnames"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteSpec {
    /// The parents the route attaches to; Maille reads those of group "" and kind Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<ParentReference>,
    /// Host names; ignored for Service parents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rules: Vec<GRPCRouteRule>,
}

/// A reference from a route to a parent (a Gateway, or a Service for a mesh route).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Group of the parent; absent means `gateway.networking.k8s.io`, "" the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    /// Kind of the parent; absent means `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: Option<String>,
    /// Namespace of the parent; absent means the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// For a Service: the name of the port attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    /// For a Service: the port attached to; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// Optional name of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Conditions, ORed; none means every request (a `/` path prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub matches: Vec<HTTPRouteMatch>,
    /// Filters applied to the matched requests, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<HTTPRouteFilter>,
    /// Weighted backends; none means the parent Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Request and backend-request timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HTTPRouteTimeouts>,
    /// Retries (experimental channel, GEP-1731).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HTTPRouteRetry>,
    /// Session persistence (experimental): not supported by Maille; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "kept_as_written")]
    pub session_persistence: Option<serde_json::Value>,
}

/// One HTTP request match; its conditions are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    /// The path condition; absent means a `/` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathMatch>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<ValueMatch>,
    /// The method, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]))]
    pub method: Option<String>,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default = "path_prefix", rename = "type")]
    #[schemars(extend("enum" = ["Exact", "PathPrefix", "RegularExpression"]))]
    pub type_: String,
    /// The path, prefix or regular expression; defaults to `/`.
    #[serde(default = "slash")]
    #[schemars(length(max = 1024))]
    pub value: String,
}

impl Default for HTTPPathMatch {
    fn default() -> Self {
        HTTPPathMatch {
            type_: path_prefix(),
            value: slash(),
        }
    }
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

fn slash() -> String {
    "/".into()
}

fn exact() -> String {
    "Exact".into()
}

/// A header or query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default = "exact", rename = "type")]
    #[schemars(extend("enum" = ["Exact", "RegularExpression"]))]
    pub type_: String,
    /// Header or parameter name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The value, or a regular expression.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

/// One filter of an HTTPRoute rule: its `type` names which of the other fields is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`, `URLRewrite`
    /// (supported), `RequestMirror`, `CORS`, `ExtensionRef` (not supported).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"]))]
    pub type_: String,
    /// Headers set, added and removed on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Headers set, added and removed on the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// Rewrite the host or path before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Not supported; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "kept_as_written")]
    pub request_mirror: Option<serde_json::Value>,
    /// Not supported; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "kept_as_written")]
    pub cors: Option<serde_json::Value>,
    /// Not supported; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "kept_as_written")]
    pub extension_ref: Option<serde_json::Value>,
}

/// A header modifier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers replaced (or added when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HTTPHeader>,
    /// Headers appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HTTPHeader>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HTTPHeader {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

/// A redirect answered instead of forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`; absent keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["http", "https"]))]
    pub scheme: Option<String>,
    /// Host name of the Location; absent keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
    /// Path of the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Port of the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [301, 302, 303, 307, 308]))]
    pub status_code: Option<i64>,
}

/// A URL rewrite before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Host header sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
    /// Path sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A path replacement: the whole path, or the part the rule's prefix match matched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["ReplaceFullPath", "ReplacePrefixMatch"]))]
    pub type_: String,
    /// With `ReplaceFullPath`: the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`: what replaces the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_prefix_match: Option<String>,
}

/// A weighted backend of a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Group of the backend; absent or "" is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    /// Kind of the backend; absent means `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: Option<String>,
    /// Name of the backend.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the backend; absent means the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port (required for a Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Relative weight, 0 to 1,000,000; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
    /// Per-backend filters: not supported by Maille; kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "filters_kept_as_written")]
    pub filters: Vec<serde_json::Value>,
}

/// Timeouts of an HTTPRoute rule, as Gateway API durations (`10s`, `1m30s`, `500ms`; `0s`
/// means none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    /// The whole request, from the client's point of view, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<String>,
    /// One attempt to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<String>,
}

/// Retries of an HTTPRoute rule (GEP-1731).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRetry {
    /// Response codes retried (400 to 599).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 400, max = 599)))]
    pub codes: Vec<i64>,
    /// Attempts after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempts: Option<i64>,
    /// Wait between attempts, a Gateway API duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backoff: Option<String>,
}

/// One rule of a GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteRule {
    /// Optional name of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Conditions, ORed; none means every gRPC request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub matches: Vec<GRPCRouteMatch>,
    /// Filters: `RequestHeaderModifier`, `ResponseHeaderModifier` (supported), `RequestMirror`,
    /// `ExtensionRef` (not supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<HTTPRouteFilter>,
    /// Weighted backends; none means the parent Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Session persistence (experimental): not supported; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "kept_as_written")]
    pub session_persistence: Option<serde_json::Value>,
}

/// One gRPC request match; its conditions are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteMatch {
    /// Service and method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GRPCMethodMatch>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ValueMatch>,
}

/// A gRPC service and method condition; at least one of the two is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GRPCMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default = "exact", rename = "type")]
    #[schemars(extend("enum" = ["Exact", "RegularExpression"]))]
    pub type_: String,
    /// Fully qualified service, e.g. `shop.v1.Cart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub service: Option<String>,
    /// Method, e.g. `AddItem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub method: Option<String>,
}

/// The status of a route: one entry per parent and controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Per parent, what the controller that handles it did with the route.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub parents: Vec<RouteParentStatus>,
}

/// What one controller did with a route for one parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef, as written in the route.
    pub parent_ref: ParentReference,
    /// The controller writing this entry (`maille.io/gateway-controller` for Maille).
    #[schemars(length(min = 1, max = 253))]
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`, ...
    #[serde(default)]
    #[schemars(length(min = 1, max = 8))]
    pub conditions: Vec<Condition>,
}

/// A status condition (`metav1.Condition`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, ...
    #[serde(rename = "type")]
    #[schemars(length(max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// The generation of the route the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// A CamelCase reason.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// What happened, for people.
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// The CRD schema of a field Maille keeps as written without reading it.
fn kept_as_written(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// The CRD schema of a list of objects Maille keeps as written (at most 16).
fn filters_kept_as_written(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// The CustomResourceDefinitions of HTTPRoute and GRPCRoute, generated from the types above,
/// with the status subresource and every version of [`SUPPORTED`] served (the first stored).
pub fn definitions() -> Vec<CustomResourceDefinition> {
    [HTTPRoute::crd(), GRPCRoute::crd()]
        .into_iter()
        .map(|mut crd| {
            let versions = SUPPORTED
                .iter()
                .find(|(_, kind, _)| *kind == crd.spec.names.kind)
                .map(|(_, _, v)| *v)
                .unwrap_or_default();
            let stored = crd.spec.versions[0].clone();
            for version in versions.iter().filter(|v| **v != stored.name) {
                crd.spec.versions.push(CustomResourceDefinitionVersion {
                    name: version.to_string(),
                    storage: false,
                    ..stored.clone()
                });
            }
            crd.spec.conversion = Some(CustomResourceConversion {
                strategy: "None".into(),
                webhook: None,
            });
            let annotations = crd.metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(
                "gateway.networking.k8s.io/channel".into(),
                "standard".into(),
            );
            annotations.insert(
                "maille.io/generated-from".into(),
                "controller/src/gateway/crd.rs (the fields of Gateway API v1.6 standard, plus rules[].retry)".into(),
            );
            crd
        })
        .collect()
}

/// The chart's `gateway-crds/` folder: one `(file name, YAML text)` per definition. The chart
/// installs them only when the cluster has no such definition (`gatewayAPI.installCRDs`).
pub fn chart_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    definitions()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
            let text = format!("{CHART_FILE_HEADER}{}", serde_yaml::to_string(&crd)?);
            Ok((name, text))
        })
        .collect()
}

/// First line of every generated chart file.
pub const CHART_FILE_HEADER: &str = "# Generated from controller/src/gateway/crd.rs by \
`cargo run -p maille-controller --bin crdgen -- --gateway-out charts/maille/gateway-crds`: do not edit.\n";
