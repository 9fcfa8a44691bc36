//! HTTP through the tunnel: Pingora custom L4 connectors (`HttpPeer.options.custom_l4`) whose
//! "connection" to the endpoint is a `CONNECT` stream of the session to the endpoint's node,
//! so that one stream carries many requests. Plain HTTP/1 gets the stream itself, kept between
//! requests by this proxy ([`super::lease`]); TLS and h2c upstreams get it as a Unix socket of
//! this proxy ([`super::bridge`]), pooled by Pingora like a TCP connection. Either way a
//! stream is kept apart from direct connections, and from those of another node, claim
//! (client address and identity, service, endpoint) or certificate.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

use super::bridge::Listening;
use super::client::Pool;
use super::lease::Ticket;
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
        let stream = self
            .pool
            .open(&self.peer, &self.claim)
            .await
            .map_err(open_error)?;
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

/// A stream that could not be opened, as Pingora's connect error.
pub(crate) fn open_error(e: super::client::OpenError) -> Box<Error> {
    let etype = match e.label() {
        "timeout" => ErrorType::ConnectTimedout,
        // The client gets the destination's answer.
        "denied" => ErrorType::HTTPStatus(403),
        "refused" => ErrorType::ConnectRefused,
        _ => ErrorType::ConnectError,
    };
    let mut err = Error::explain(etype, e.to_string());
    err.esource = pingora_error::ErrorSource::Upstream;
    err
}

/// Whether a connect error is the destination proxy's denial of the claim (403): neither the
/// endpoint's failure nor worth another endpoint.
pub fn is_denial(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::HTTPStatus(403))
}

/// Sends `peer`'s connections through the tunnel to `node` with `claim`. A plain HTTP/1 peer
/// rides a tunnel stream directly ([`super::lease`]): the returned ticket, kept in the
/// request's context, settles whether that stream may carry another request of the claim.
/// Any other (TLS, h2c) rides the bridge ([`super::bridge`]), and Pingora pools it: its pooled
/// connections are kept apart (`group_key`) from direct ones to the same endpoint, and from
/// those of another node, claim or certificate. Either way a connection opened for one client
/// identity never carries another's requests.
pub fn tunnel_peer(
    peer: &mut HttpPeer,
    pool: Arc<Pool>,
    node: PeerNode,
    claim: StreamClaim,
) -> Result<Option<Ticket>> {
    if !peer.is_tls() && peer.options.alpn == ALPN::H1 {
        // Pingora keeps the lease in its own pool from the end of the response until the
        // request's end settles it (then it reads an end of stream and leaves). A key of its
        // own per attempt: no other request takes it out (and closes it) meanwhile. Nothing
        // is ever handed back for this path (no descriptor is connected to it): a tunnel peer
        // never gets a direct connection from Pingora's pool.
        peer._address = PingoraAddr::Unix(
            std::os::unix::net::SocketAddr::from_pathname(LEASED_PATH)
                .expect("a short absolute path"),
        );
        peer.group_key = super::lease::attempt_key();
        peer.options.idle_timeout = Some(POOL_IDLE);
        let (connect, ticket) = super::lease::lease(pool, node, claim);
        peer.options.custom_l4 = Some(Arc::new(connect));
        return Ok(Some(ticket));
    }
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
    Ok(None)
}

/// The address Pingora sees for a plain HTTP/1 peer through the tunnel: no socket is ever
/// bound or connected there.
const LEASED_PATH: &str = "/nonexistent/maille-tunnel-lease";
