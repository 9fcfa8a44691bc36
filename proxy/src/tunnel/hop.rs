//! The data paths' use of the table's hop decision ([`crate::compiled::mesh::Hop`]) for an
//! endpoint picked: direct, through the tunnel to the endpoint's node, or (its node running no
//! proxy) in cleartext (`permissive`, counted) or not at all (`strict`, counted). Both cases are
//! logged with service and endpoint, at most once a minute per endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use config_model::{MtlsMode, ServiceId};

use super::client::Pool;
use super::{PeerNode, Protocol, StreamClaim};
use crate::compiled::mesh::Hop;
use crate::compiled::CompiledTable;

/// A cleartext send or refusal is logged at most once per this interval per endpoint.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How to reach an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Way {
    /// A connection of its own, as without a mesh (same node, or mTLS disabled).
    Direct,
    /// A connection of its own to a node without proxy (`permissive`): counted.
    Cleartext,
    /// A stream of the session to the endpoint's node.
    Tunnel(PeerNode),
    /// Not at all (`strict`, the node runs no proxy): counted.
    Refused,
}

static LOGGED: LazyLock<parking_lot::Mutex<HashMap<(SocketAddr, bool), Instant>>> =
    LazyLock::new(Default::default);

fn due(endpoint: SocketAddr, refused: bool) -> bool {
    let now = Instant::now();
    let mut logged = LOGGED.lock();
    if logged.len() > 4096 {
        logged.retain(|_, at| now.duration_since(*at) < LOG_INTERVAL);
    }
    let due = logged
        .get(&(endpoint, refused))
        .is_none_or(|at| now.duration_since(*at) >= LOG_INTERVAL);
    if due {
        logged.insert((endpoint, refused), now);
    }
    due
}

/// The way to `endpoint` of service `id` (the service whose endpoints were picked), counting
/// and logging cleartext sends and refusals. A tunnel hop without a tunnel (this proxy holds
/// no identity) is what the mode says of a node without proxy.
pub fn way(
    table: &CompiledTable,
    id: ServiceId,
    endpoint: SocketAddr,
    pool: Option<&Arc<Pool>>,
    protocol: Protocol,
) -> Way {
    let (node, refused, why) = match table.hop(id, endpoint) {
        Hop::Direct => return Way::Direct,
        Hop::Tunnel { node, addr } if pool.is_some() => {
            return Way::Tunnel(PeerNode { name: node, addr })
        }
        Hop::Tunnel { node, .. } => (
            node,
            table.mtls() == MtlsMode::Strict,
            "this proxy holds no mesh identity (--identity-token-file)",
        ),
        Hop::Cleartext { node } => (node, false, "its node runs no proxy"),
        Hop::Refused { node } => (node, true, "its node runs no proxy"),
    };
    let rt = table.runtime(id);
    let m = crate::metrics::register();
    let labels = rt.labels();
    let key = &rt.service().key;
    let proto = protocol.as_str();
    if refused {
        m.mtls_refused
            .with_label_values(&[labels[0], labels[1], labels[2], proto])
            .inc();
        if due(endpoint, true) {
            tracing::warn!(service = %key, %endpoint, %node, protocol = proto, why, "mTLS strict: endpoint not reached ({why}); logged once a minute per endpoint");
        }
        Way::Refused
    } else {
        m.mtls_cleartext
            .with_label_values(&[labels[0], labels[1], labels[2], proto])
            .inc();
        if due(endpoint, false) {
            tracing::info!(service = %key, %endpoint, %node, protocol = proto, why, "mTLS permissive: sending in cleartext ({why}); logged once a minute per endpoint");
        }
        Way::Cleartext
    }
}

/// The claim for a connection from `client` to `endpoint` of service `id`: the client's
/// identity is that of a pod of this proxy's node with that address, if any.
pub fn claim(
    table: &CompiledTable,
    id: ServiceId,
    endpoint: SocketAddr,
    client: Option<IpAddr>,
    protocol: Protocol,
) -> StreamClaim {
    StreamClaim {
        target: endpoint,
        protocol,
        source_ip: client,
        identity: client.and_then(|ip| table.local_identity(ip)).cloned(),
        service: table[id].key.clone(),
    }
}
