//! Gateway API for the mesh (GAMMA): the HTTPRoute and GRPCRoute resources whose `parentRefs`
//! name a Service, translated into the ordered `routes` of the service ports they attach to,
//! and the `status.parents[]` Maille writes back on them (docs/gateway-api.md).
//!
//! Like SMI, nothing here refuses a table: a route that cannot be honoured is left out whole
//! (never half-applied) and its status says why.

pub mod crd;
pub mod precedence;
pub mod routes;
pub mod status;

use std::sync::Arc;

use serde::de::DeserializeOwned;

pub use crd::{GRPCRoute, HTTPRoute, GROUP, SUPPORTED};

/// The `controllerName` of the status entries Maille writes.
pub const CONTROLLER_NAME: &str = "maille.io/gateway-controller";

/// Why an object of a manifests folder could not be read as a Gateway API route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A route kind at a version Maille does not read.
    #[error("{kind} {object}: field apiVersion: {api_version:?} is not supported; expected one of {expected}")]
    UnsupportedVersion {
        /// Kind of the object.
        kind: String,
        /// `namespace/name`.
        object: String,
        /// The apiVersion found (cut).
        api_version: String,
        /// The apiVersions accepted for this kind.
        expected: String,
    },
    /// The object does not have the shape of its kind.
    #[error("{kind} {object}: {message}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// `namespace/name`.
        object: String,
        /// What serde found wrong (names the field).
        message: String,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One route of either kind.
#[derive(Clone, Debug)]
pub enum RouteObject {
    /// An HTTPRoute.
    Http(HTTPRoute),
    /// A GRPCRoute.
    Grpc(GRPCRoute),
}

/// Every Gateway API route the controller currently knows of.
#[derive(Clone, Debug, Default)]
pub struct GatewayObjects {
    /// HTTPRoutes.
    pub http_routes: Vec<Arc<HTTPRoute>>,
    /// GRPCRoutes.
    pub grpc_routes: Vec<Arc<GRPCRoute>>,
}

impl GatewayObjects {
    /// Adds one route.
    pub fn insert(&mut self, obj: RouteObject) {
        match obj {
            RouteObject::Http(r) => self.http_routes.push(Arc::new(r)),
            RouteObject::Grpc(r) => self.grpc_routes.push(Arc::new(r)),
        }
    }

    /// Appends the routes of `other`.
    pub fn extend_from(&mut self, other: &GatewayObjects) {
        self.http_routes.extend(other.http_routes.iter().cloned());
        self.grpc_routes.extend(other.grpc_routes.iter().cloned());
    }

    /// Object counts per kind, for the `maille_controller_objects_watched` gauge.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("HTTPRoute", self.http_routes.len()),
            ("GRPCRoute", self.grpc_routes.len()),
        ]
    }

    /// Whether there is no route at all.
    pub fn is_empty(&self) -> bool {
        self.http_routes.is_empty() && self.grpc_routes.is_empty()
    }
}

/// Reads one manifest as a Gateway API route. `None` when it is not a route kind Maille reads;
/// an error when it is one but at an unsupported version or badly shaped. A manifest without a
/// namespace lands in `default`, as kubectl would put it.
pub fn parse_manifest(doc: &serde_json::Value) -> Option<Result<RouteObject>> {
    let api_version = doc.get("apiVersion")?.as_str()?;
    let kind = doc.get("kind")?.as_str()?;
    let (group, version) = api_version.split_once('/')?;
    let (_, _, versions) = SUPPORTED
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)?;
    let meta = doc.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let namespace = match field("namespace") {
        ns if ns.is_empty() => "default".to_string(),
        ns => ns,
    };
    let object = format!("{namespace}/{}", field("name"));
    if !versions.contains(&version) {
        return Some(Err(Error::UnsupportedVersion {
            kind: kind.into(),
            object,
            api_version: config_model::cut::cut(api_version).into_owned(),
            expected: versions
                .iter()
                .map(|v| format!("{group}/{v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }));
    }
    fn typed<T: DeserializeOwned>(doc: &serde_json::Value, kind: &str, object: &str) -> Result<T> {
        serde_json::from_value(doc.clone()).map_err(|e| Error::Invalid {
            kind: kind.into(),
            object: object.into(),
            message: config_model::cut::cut_message(&e.to_string(), config_model::cut::MAX_MESSAGE)
                .into_owned(),
        })
    }
    let obj = match kind {
        "HTTPRoute" => typed::<HTTPRoute>(doc, kind, &object).map(|mut r| {
            r.metadata.namespace = Some(namespace.clone());
            RouteObject::Http(r)
        }),
        "GRPCRoute" => typed::<GRPCRoute>(doc, kind, &object).map(|mut r| {
            r.metadata.namespace = Some(namespace.clone());
            RouteObject::Grpc(r)
        }),
        _ => return None,
    };
    Some(obj)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod writer_tests;
