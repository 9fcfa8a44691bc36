//! The SMI custom resources Maille reads, one version-tolerant type per kind.
//!
//! Each type is declared at the newest version Maille serves (that is the version the
//! controller watches; the chart's CRDs serve every version with `conversion: None`, so the API
//! server hands out older objects under it unchanged). Fields that only some versions have are
//! optional, so an object written for any supported version deserializes into the same type.
//! [`SUPPORTED`] lists the versions accepted from a manifests folder. The chart's CRDs are
//! generated from these types ([`definitions`], written by the `crdgen` binary).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of TrafficTarget.
pub const ACCESS_GROUP: &str = "access.smi-spec.io";
/// API group of HTTPRouteGroup, TCPRoute and UDPRoute.
pub const SPECS_GROUP: &str = "specs.smi-spec.io";
/// API group of TrafficSplit.
pub const SPLIT_GROUP: &str = "split.smi-spec.io";

/// (group, kind, versions) of every SMI resource Maille reads.
pub const SUPPORTED: &[(&str, &str, &[&str])] = &[
    (ACCESS_GROUP, "TrafficTarget", &["v1alpha2", "v1alpha3"]),
    (SPECS_GROUP, "HTTPRouteGroup", &["v1alpha3", "v1alpha4"]),
    (SPECS_GROUP, "TCPRoute", &["v1alpha3", "v1alpha4"]),
    (SPECS_GROUP, "UDPRoute", &["v1alpha4"]),
    (SPLIT_GROUP, "TrafficSplit", &["v1alpha3", "v1alpha4"]),
];

/// `access.smi-spec.io` TrafficTarget: lets the pods of the source ServiceAccounts reach the
/// pods of the destination ServiceAccount, on the traffic its rules describe.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "access.smi-spec.io",
    version = "v1alpha3",
    kind = "TrafficTarget",
    namespaced,
    shortname = "tt",
    label("app.kubernetes.io/part-of", "maille"),
    doc = "Lets the pods of the source ServiceAccounts reach the pods of the destination ServiceAccount, on the traffic its rules describe.",
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destination.name"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTargetSpec {
    /// Whose pods are reached.
    pub destination: IdentityBindingSubject,
    /// What traffic is allowed; none allows nothing.
    #[serde(default)]
    pub rules: Vec<TrafficTargetRule>,
    /// Who may connect.
    #[serde(default)]
    pub sources: Vec<IdentityBindingSubject>,
}

/// A ServiceAccount named by a TrafficTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityBindingSubject {
    /// Always `ServiceAccount`.
    #[schemars(extend("enum" = ["ServiceAccount"]))]
    pub kind: String,
    /// ServiceAccount name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// ServiceAccount namespace; defaults to the TrafficTarget's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Destination only (v1alpha2; accepted in v1alpha3 too): the pod port allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}

/// A reference from a TrafficTarget to a route resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTargetRule {
    /// `HTTPRouteGroup`, `TCPRoute` or `UDPRoute`.
    #[schemars(extend("enum" = ["HTTPRouteGroup", "TCPRoute", "UDPRoute"]))]
    pub kind: String,
    /// Name of the route resource, in the TrafficTarget's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// HTTPRouteGroup only: names of the matches allowed; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
}

/// `specs.smi-spec.io` HTTPRouteGroup: named HTTP request matches.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "HTTPRouteGroup",
    namespaced,
    shortname = "htr",
    label("app.kubernetes.io/part-of", "maille"),
    doc = "Named HTTP request matches; a request fits the group when it fits one of them."
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteGroupSpec {
    /// The matches; a request fits the group when it fits one of them.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
}

/// One HTTP match; its conditions are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The match's name, referenced by TrafficTarget rules.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Regex the path must match, anchored at both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Methods, or `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name → value regex. Written as a map (the spec's documents) or a list of maps
    /// (the published v1alpha4 CRD schema); both are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "either_header_shape")]
    pub headers: Option<HttpHeaders>,
}

/// Header conditions in either of the two shapes found in the wild.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HttpHeaders {
    /// `headers: {user-agent: ".*Firefox.*"}`
    Map(BTreeMap<String, String>),
    /// `headers: [{user-agent: ".*Firefox.*"}]`
    List(Vec<BTreeMap<String, String>>),
}

/// The CRD schema of `headers`: a map or a list of maps, which a structural schema cannot
/// express as one type, so the API server keeps the field as written and the controller checks it.
fn either_header_shape(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

impl HttpHeaders {
    /// All conditions as (name, regex) pairs, in order.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        match self {
            HttpHeaders::Map(m) => m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            HttpHeaders::List(l) => l
                .iter()
                .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .collect(),
        }
    }
}

/// `specs.smi-spec.io` TCPRoute: raw TCP traffic, to the listed pod ports (v1alpha4) or to any
/// port (v1alpha3, or no ports listed).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "TCPRoute",
    namespaced,
    shortname = "tr",
    label("app.kubernetes.io/part-of", "maille"),
    doc = "Raw TCP traffic to the listed pod ports, or to any port."
)]
#[serde(rename_all = "camelCase")]
pub struct TCPRouteSpec {
    /// Ports matched (v1alpha4); absent in v1alpha3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PortMatches>,
}

/// `specs.smi-spec.io` UDPRoute (v1alpha4): UDP traffic to the listed pod ports, or any port.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "UDPRoute",
    namespaced,
    shortname = "ur",
    label("app.kubernetes.io/part-of", "maille"),
    doc = "UDP traffic to the listed pod ports, or to any port."
)]
#[serde(rename_all = "camelCase")]
pub struct UDPRouteSpec {
    /// Ports matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PortMatches>,
}

/// The port list of a TCPRoute or UDPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMatches {
    /// Optional name of the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pod ports; empty means all ports.
    #[serde(default)]
    #[schemars(inner(range(min = 1)))]
    pub ports: Vec<u16>,
}

/// `split.smi-spec.io` TrafficSplit: spreads a root service's traffic over backend services.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha4",
    kind = "TrafficSplit",
    namespaced,
    shortname = "ts",
    label("app.kubernetes.io/part-of", "maille"),
    doc = "Spreads the traffic of the root service over backend services by weight.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The root service clients call, in the split's namespace.
    #[schemars(length(min = 1))]
    pub service: String,
    /// HTTPRouteGroups whose matches restrict the requests split (merged, ORed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TrafficSplitMatch>,
    /// Weighted backend services, in the split's namespace.
    #[serde(default)]
    pub backends: Vec<TrafficSplitBackend>,
}

/// A reference from a TrafficSplit to an HTTPRouteGroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitMatch {
    /// `specs.smi-spec.io` (v1alpha3 carries it; optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// `HTTPRouteGroup`.
    #[schemars(extend("enum" = ["HTTPRouteGroup"]))]
    pub kind: String,
    /// Name of the HTTPRouteGroup.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// One weighted backend of a TrafficSplit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitBackend {
    /// Backend service name.
    #[schemars(length(min = 1))]
    pub service: String,
    /// Relative weight, a non-negative integer.
    #[schemars(range(min = 0))]
    pub weight: i64,
}

/// The CustomResourceDefinitions of every kind in [`SUPPORTED`], generated from the types
/// above. The type's version is the stored one; every other supported version is served with
/// the same schema and `conversion: None`, so objects of any of them read back unchanged.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    [
        TrafficTarget::crd(),
        HTTPRouteGroup::crd(),
        TCPRoute::crd(),
        UDPRoute::crd(),
        TrafficSplit::crd(),
    ]
    .into_iter()
    .map(serve_every_supported_version)
    .collect()
}

fn serve_every_supported_version(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let versions = SUPPORTED
        .iter()
        .find(|(group, kind, _)| *group == crd.spec.group && *kind == crd.spec.names.kind)
        .map(|(_, _, versions)| *versions)
        .unwrap_or_default();
    let stored = crd.spec.versions[0].clone();
    for version in versions.iter().rev().filter(|v| **v != stored.name) {
        crd.spec.versions.push(CustomResourceDefinitionVersion {
            name: version.to_string(),
            storage: false,
            ..stored.clone()
        });
    }
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "None".to_string(),
        webhook: None,
    });
    crd
}

/// The chart's `crds/` folder as it must be: one `(file name, YAML text)` per definition.
/// `crdgen` writes it; a test checks that the chart's copy matches.
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
pub const CHART_FILE_HEADER: &str = "# Generated from controller/src/smi/crd.rs by \
`cargo run -p maille-controller --bin crdgen -- --out charts/maille/crds`: do not edit.\n";
