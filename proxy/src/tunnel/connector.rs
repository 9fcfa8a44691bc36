//! HTTP through the tunnel: a Pingora custom L4 connector (`HttpPeer.options.custom_l4`) whose
//! "connection" to the endpoint is a `CONNECT` stream of the session to the endpoint's node,
//! handed to Pingora as a Unix socket of this proxy ([`super::bridge`]) so that Pingora pools
//! and reuses it like a TCP connection: one stream carries many requests. The peer's
//! `group_key` keeps tunnelled connections apart from direct ones, and from those of another
//! node, claim (client address and identity, service, endpoint) or certificate.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

use super::bridge::Listening;
use super::client::Pool;
use super::{PeerNode, StreamClaim};

/// How long a tunnelled connection may wait in Pingora's pool for its next request. Each
/// holds a stream of the session and a connection from the destination proxy to its pod.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Connects through the tunnel to `peer` with `claim`.
#[derive(Debug)]
pub struct TunnelConnect {
    pool: Arc<Pool>,
    peer: PeerNode,
    claim: StreamClaim,
    socket: Arc<Listening>,
}

#[async_trait]
impl L4Connect for TunnelConnect {
    async fn connect(&self, _addr: &PingoraAddr) -> Result<Stream> {
        let stream = match self.pool.open(&self.peer, &self.claim).await {
            Ok(stream) => stream,
            Err(e) => {
                let etype = match e.label() {
                    "timeout" => ErrorType::ConnectTimedout,
                    // The client gets the destination's answer.
                    "denied" => ErrorType::HTTPStatus(403),
                    "refused" => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                let mut err = Error::explain(etype, e.to_string());
                err.esource = pingora_error::ErrorSource::Upstream;
                return Err(err);
            }
        };
        let idle = self.pool.settings().stream_idle;
        match self.socket.connect(stream, idle).await {
            Ok(s) => Ok(Stream::from(s)),
            Err(e) => {
                let mut err = Error::explain(
                    ErrorType::ConnectError,
                    format!(
                        "tunnel to {}: socket {}: {e}",
                        self.peer,
                        self.socket.path().display()
                    ),
                );
                err.esource = pingora_error::ErrorSource::Internal;
                Err(err)
            }
        }
    }
}

/// Whether a connect error is the destination proxy's denial of the claim (403): neither the
/// endpoint's failure nor worth another endpoint.
pub fn is_denial(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::HTTPStatus(403))
}

/// Sends `peer`'s connections through the tunnel to `node` with `claim`. Its pooled
/// connections are kept apart (`group_key`) from direct ones to the same endpoint, and from
/// those of another node, claim or certificate: a connection opened for one client identity
/// never carries another's requests.
pub fn tunnel_peer(
    peer: &mut HttpPeer,
    pool: Arc<Pool>,
    node: PeerNode,
    claim: StreamClaim,
) -> Result<()> {
    let socket = pool.http_socket().map_err(|e| {
        let mut err = Error::explain(
            ErrorType::InternalError,
            format!("tunnel to {node}: cannot listen for tunnelled HTTP connections: {e}"),
        );
        err.esource = pingora_error::ErrorSource::Internal;
        err
    })?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "maille-tunnel".hash(&mut h);
    node.hash(&mut h);
    claim.hash(&mut h);
    pool.generation().hash(&mut h);
    // 0 is what every direct peer has.
    peer.group_key = h.finish() | 1;
    // Pingora hands a pooled connection back only if its socket is connected to this address.
    peer._address = socket.peer_addr().clone();
    peer.options.idle_timeout = Some(POOL_IDLE);
    peer.options.custom_l4 = Some(Arc::new(TunnelConnect {
        pool,
        peer: node,
        claim,
        socket,
    }));
    Ok(())
}
