//! HTTP through the tunnel: a Pingora custom L4 connector (`HttpPeer.options.custom_l4`) whose
//! "connection" to the endpoint is a `CONNECT` stream of the session to the endpoint's node.
//! Pingora speaks HTTP/1.1, h2c or TLS on it as on a socket and pools it like one; the peer's
//! `group_key` keeps tunnelled connections apart from direct ones and from other claims.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::VirtualSocketStream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

use super::client::Pool;
use super::{PeerNode, StreamClaim};

/// Connects through the tunnel to `peer` with `claim`.
#[derive(Debug)]
pub struct TunnelConnect {
    pool: Arc<Pool>,
    peer: PeerNode,
    claim: StreamClaim,
}

#[async_trait]
impl L4Connect for TunnelConnect {
    async fn connect(&self, _addr: &PingoraAddr) -> Result<Stream> {
        match self.pool.open(&self.peer, &self.claim).await {
            Ok(stream) => Ok(Stream::from(VirtualSocketStream::new(Box::new(stream)))),
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
/// those of another node or claim: a connection opened for one client identity never carries
/// another's requests.
pub fn tunnel_peer(peer: &mut HttpPeer, pool: Arc<Pool>, node: PeerNode, claim: StreamClaim) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "maille-tunnel".hash(&mut h);
    node.hash(&mut h);
    claim.hash(&mut h);
    // 0 is what every direct peer has.
    peer.group_key = h.finish() | 1;
    peer.options.custom_l4 = Some(Arc::new(TunnelConnect {
        pool,
        peer: node,
        claim,
    }));
}
