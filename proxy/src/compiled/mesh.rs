//! The mesh view of a compiled table, for the proxy that holds it: how an endpoint is reached
//! from this node (directly, through the peer node's tunnel, in cleartext or not at all) and
//! which identity a client of this node has. The table is compiled knowing this proxy's node
//! (`--node-name`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use config_model::{MtlsMode, WorkloadIdentity};
use config_model::{Service, ServiceId};

use super::CompiledTable;

/// How the proxy reaches an endpoint it picked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Connect to the endpoint itself: mutual TLS is disabled, the endpoint's node is not
    /// known, or it is this proxy's node.
    Direct,
    /// Through the tunnel of the proxy on the endpoint's node.
    Tunnel {
        /// The endpoint's node.
        node: Arc<str>,
        /// That node proxy's tunnel listener.
        addr: SocketAddr,
    },
    /// Permissive mode, the endpoint's node runs no proxy: connect directly, in cleartext
    /// (the caller counts it).
    Cleartext {
        /// The endpoint's node.
        node: Arc<str>,
    },
    /// Strict mode, the endpoint's node runs no proxy: do not connect (the caller refuses the
    /// request, connection or datagram and counts it).
    Refused {
        /// The endpoint's node.
        node: Arc<str>,
    },
}

impl Hop {
    /// A stable name for labels and logs: `direct`, `tunnel`, `cleartext`, `refused`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hop::Direct => "direct",
            Hop::Tunnel { .. } => "tunnel",
            Hop::Cleartext { .. } => "cleartext",
            Hop::Refused { .. } => "refused",
        }
    }
}

/// Per service port: where to find the node of an endpoint address, for endpoints whose node
/// is known. Built with the service's runtime (and shared with it while the service is
/// unchanged); the nodes themselves stay in the service's endpoints, so this holds 4 bytes per
/// endpoint with a node and nothing for a service without.
#[derive(Debug, Default)]
pub struct EndpointNodes {
    /// Positions in the service's endpoints of those with a node, in address order.
    by_addr: Box<[u32]>,
}

impl EndpointNodes {
    pub(super) fn new(svc: &Service) -> EndpointNodes {
        let eps = &svc.endpoints;
        let mut by_addr: Vec<u32> = (0..eps.len())
            .filter(|&i| eps[i].node.is_some())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        by_addr.sort_by_key(|&i| eps[i as usize].addr);
        EndpointNodes {
            by_addr: by_addr.into(),
        }
    }

    /// The node an endpoint address of `svc` (the service this was built from) runs on, if
    /// known.
    pub fn get<'a>(&self, svc: &'a Service, addr: SocketAddr) -> Option<&'a Arc<str>> {
        let eps = &svc.endpoints;
        let at = self
            .by_addr
            .binary_search_by(|&i| eps[i as usize].addr.cmp(&addr))
            .ok()?;
        eps[self.by_addr[at] as usize].node.as_ref()
    }
}

impl CompiledTable {
    /// The node this proxy runs on (`--node-name`), if it was given one.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The node an endpoint of a service port runs on, if the table says.
    pub fn endpoint_node(&self, id: ServiceId, endpoint: SocketAddr) -> Option<&Arc<str>> {
        let rt = self.runtime(id);
        rt.nodes.get(rt.service(), endpoint)
    }

    /// How this proxy reaches `endpoint` of service port `id`: directly when mutual TLS is
    /// disabled, the endpoint's node is not known or is this proxy's own; through the
    /// tunnel when the endpoint's node runs a proxy; otherwise in cleartext (permissive) or
    /// not at all (strict).
    ///
    /// A proxy without a node name takes every endpoint whose node is known for one of
    /// another node: it cannot tell its own pods apart, and sending their traffic in
    /// cleartext would break a strict mesh's promise.
    pub fn hop(&self, id: ServiceId, endpoint: SocketAddr) -> Hop {
        let mode = self.mtls();
        if mode == MtlsMode::Disabled {
            return Hop::Direct;
        }
        let Some(node) = self.endpoint_node(id, endpoint) else {
            return Hop::Direct;
        };
        if self.node.as_deref() == Some(&**node) {
            return Hop::Direct;
        }
        match self.table.node(node) {
            Some(peer) => Hop::Tunnel {
                node: node.clone(),
                addr: peer.tunnel,
            },
            None if mode == MtlsMode::Permissive => Hop::Cleartext { node: node.clone() },
            None => Hop::Refused { node: node.clone() },
        }
    }

    /// The identity of a client of this node: the workload with this address, if it runs on
    /// this proxy's node. A pod of another node (or an address nobody has) has none here:
    /// a proxy states identities only for its own node's pods.
    pub fn local_identity(&self, client: IpAddr) -> Option<&WorkloadIdentity> {
        let own = self.node.as_deref()?;
        self.table
            .workload(client)
            .filter(|w| &*w.node == own)
            .map(|w| &w.identity)
    }
}

#[cfg(test)]
mod tests;
