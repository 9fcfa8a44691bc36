//! Maille's routing table: the wire form served by the controller, its validation, and the
//! immutable, indexed form that the proxy routes with.
//!
//! Data flows one way: the controller builds a [`TableSpec`], checks it with
//! [`Table::try_from`], and serves the spec as JSON; each proxy parses the JSON into a
//! [`TableSpec`] and validates it again into a [`Table`], which it swaps in whole.
//! This crate does no I/O.

// Every public item of the table is documented (clippy's `-D warnings` makes this an error).
#![warn(missing_docs)]

pub mod annotations;
pub mod cut;
pub mod delta;
pub mod duration;
pub mod expr;
#[cfg(test)]
mod fuzz;
pub mod matching;
pub mod mesh;
pub mod options;
pub mod route;
pub mod split_graph;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

pub use delta::{Changes, DeltaError};
pub use mesh::{MtlsMode, Node, NodeSpec, Workload, WorkloadIdentity, WorkloadSpec, Workloads};
pub use options::{
    CircuitBreaker, OptionError, OptionField, OptionProblem, RateLimit, RetryPolicy, Scheme,
    ServiceOptions, TlsOptions,
};
pub use route::{Route, RouteError, RouteKind, RouteSpec};
pub use table::{
    is_dns_label, AccessRule, Chunks, Endpoint, Error, HttpMatch, Result, Service, ServiceId,
    ServiceKey, Split, SplitBackend, Table,
};
pub use wire::{
    AccessRuleSpec, EndpointSpec, HttpMatchSpec, OptionsSpec, RateLimitSpec, SchemeSpec,
    ServiceSpec, SplitBackendSpec, SplitSpec, TableDelta, TableSpec, TrafficType, DELTA_MEDIA_TYPE,
};

/// The schema version this build writes and accepts. A table with another version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// The DNS suffix of mesh names: a service is reached as `<name>.<namespace>.maille.mesh`.
pub const MESH_DOMAIN: &str = "maille.mesh";
