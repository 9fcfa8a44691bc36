//! The destination proxy's judgement of what a peer node proxy states about a stream it
//! carries through the tunnel: which pod of this node it is for, and who the client is. Pure
//! checks on the compiled table; the caller counts and logs a [`Denial`] by its
//! [`Denial::reason`].
//!
//! A peer is believed about a client's identity only for pods of its own node (as its
//! certificate names it): no node can speak for pods of another node.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use config_model::{ServiceId, ServiceKey};

use crate::compiled::mesh::WorkloadIdentity;
use crate::compiled::CompiledTable;

/// What a peer node proxy states about a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The client pod's address, as the source proxy saw it.
    pub source_ip: Option<IpAddr>,
    /// The client pod's identity, when the source proxy knows it (a pod of its node).
    pub identity: Option<WorkloadIdentity>,
    /// The service port the client called.
    pub service: ServiceKey,
    /// The endpoint the source proxy picked: must be a pod of this node.
    pub target: SocketAddr,
}

/// A claim this proxy carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The service port, in the table the claim was judged on.
    pub service: ServiceId,
    /// In ACL mode, the access rule (position in the service's rules) that allowed it.
    pub rule: Option<usize>,
}

/// Why a claim is refused. [`Denial::reason`] is stable (metric label, `maille-reason`);
/// `Display` says what was wrong, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The service port is not in this proxy's table.
    NoService {
        /// What was claimed.
        service: ServiceKey,
    },
    /// The target is not an endpoint of that service port.
    NotAnEndpoint {
        /// What was claimed.
        service: ServiceKey,
        /// The target.
        target: SocketAddr,
    },
    /// The target is an endpoint of the service, but not on this proxy's node.
    NotOnThisNode {
        /// The target.
        target: SocketAddr,
        /// Its node, if the table says.
        node: Option<String>,
    },
    /// The peer stated an identity for a client that is not a pod of that identity on the
    /// peer's node: a node speaking for pods of another node, or for an address it does not
    /// have.
    Spoofed {
        /// The peer node.
        peer_node: String,
        /// The address stated.
        source_ip: Option<IpAddr>,
        /// The identity stated.
        identity: WorkloadIdentity,
    },
    /// ACL mode, and the client has no identity (not in the mesh).
    NoIdentity {
        /// The service port.
        service: ServiceKey,
    },
    /// ACL mode, and no access rule of the service allows the identity.
    AccessDenied {
        /// The service port.
        service: ServiceKey,
        /// The client's identity.
        identity: WorkloadIdentity,
    },
}

impl Denial {
    /// A stable, short name for the `reason` label and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoService { .. } => "no_service",
            Denial::NotAnEndpoint { .. } => "not_an_endpoint",
            Denial::NotOnThisNode { .. } => "not_on_this_node",
            Denial::Spoofed { .. } => "spoofed_identity",
            Denial::NoIdentity { .. } => "no_identity",
            Denial::AccessDenied { .. } => "access_denied",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoService { service } => write!(f, "no service {service} in the table"),
            Denial::NotAnEndpoint { service, target } => {
                write!(f, "{target} is not an endpoint of {service}")
            }
            Denial::NotOnThisNode { target, node } => match node {
                Some(n) => write!(f, "{target} runs on node {n}, not this one"),
                None => write!(f, "{target} is not known to run on this node"),
            },
            Denial::Spoofed {
                peer_node,
                source_ip,
                identity,
            } => match source_ip {
                Some(ip) => write!(
                    f,
                    "node {peer_node} stated identity {identity} for {ip}, which is not a pod of that identity on node {peer_node}"
                ),
                None => write!(
                    f,
                    "node {peer_node} stated identity {identity} without a client address"
                ),
            },
            Denial::NoIdentity { service } => write!(
                f,
                "access to {service} needs a client identity and the client has none"
            ),
            Denial::AccessDenied { service, identity } => {
                write!(f, "no access rule of {service} allows {identity}")
            }
        }
    }
}

impl std::error::Error for Denial {}

/// Judges a claim of the proxy of `peer_node` (as its certificate names it) on `table`:
/// the target must be an endpoint of the claimed service on this proxy's node; a stated
/// identity is believed only if a workload with that address and identity runs on
/// `peer_node`; in ACL mode an access rule of the service must allow the identity (no
/// identity: denied).
pub fn admit(table: &CompiledTable, peer_node: &str, claim: &Claim) -> Result<Admitted, Denial> {
    let Some(id) = table.service(&claim.service) else {
        return Err(Denial::NoService {
            service: claim.service.clone(),
        });
    };
    let node = table.endpoint_node(id, claim.target);
    if node.is_none() && !table[id].endpoints.iter().any(|e| e.addr == claim.target) {
        return Err(Denial::NotAnEndpoint {
            service: claim.service.clone(),
            target: claim.target,
        });
    }
    if node.is_none() || node.map(|n| &**n) != table.node_name() {
        return Err(Denial::NotOnThisNode {
            target: claim.target,
            node: node.map(|n| n.to_string()),
        });
    }
    if let Some(identity) = &claim.identity {
        let believed = claim
            .source_ip
            .and_then(|ip| table.workload(ip))
            .is_some_and(|w| &*w.node == peer_node && w.identity == *identity);
        if !believed {
            return Err(Denial::Spoofed {
                peer_node: peer_node.to_string(),
                source_ip: claim.source_ip,
                identity: identity.clone(),
            });
        }
    }
    if !table.acl {
        return Ok(Admitted {
            service: id,
            rule: None,
        });
    }
    let Some(identity) = &claim.identity else {
        return Err(Denial::NoIdentity {
            service: claim.service.clone(),
        });
    };
    match table[id]
        .access
        .iter()
        .position(|r| r.admits_identity(identity))
    {
        Some(rule) => Ok(Admitted {
            service: id,
            rule: Some(rule),
        }),
        None => Err(Denial::AccessDenied {
            service: claim.service.clone(),
            identity: identity.clone(),
        }),
    }
}

#[cfg(test)]
mod tests;
