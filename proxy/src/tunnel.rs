//! The tunnel between node proxies (issue 14 item 3), in the manner of Istio's HBONE: one
//! mutual-TLS session per pair of nodes carrying HTTP/2, and on it one `CONNECT` stream per
//! carried TCP connection, HTTP upstream connection or UDP session. The stream's request names
//! the endpoint (`:authority` = `ip:port`) and states the claim: the client pod's address, its
//! identity (`namespace/serviceaccount`) and the service it called. The destination proxy
//! believes the claim only as far as the peer's certificate allows ([`server`]), connects to
//! the pod on its own node and copies both ways; the source proxy keeps one session per peer
//! node ([`client::Pool`]). UDP datagrams travel length-prefixed on their stream ([`udp`]).
//! See docs/security.md, "The tunnel".

pub mod admit;
pub mod bridge;
pub mod client;
pub mod connector;
pub mod hop;
pub mod lease;
pub mod server;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod udp;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use config_model::{ServiceKey, WorkloadIdentity};
use http::{HeaderMap, HeaderValue, Method, Request};

pub use stream::TunnelStream;

/// HTTP/2 streams a session carries at once (each side's `SETTINGS_MAX_CONCURRENT_STREAMS`);
/// a client beyond it waits for a stream to end.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest header block a side accepts (`SETTINGS_MAX_HEADER_LIST_SIZE`); the claim needs a
/// few hundred bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 8 * 1024;
/// Flow-control window of one stream: enough for a fast stream over a LAN round trip.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Flow-control window of a whole session.
pub const SESSION_WINDOW: u32 = 8 * 1024 * 1024;
/// Bytes a stream may have queued for sending beyond its window.
pub const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Time allowed to open a session (TCP, TLS and HTTP/2 handshakes), and for the destination
/// to connect to its pod and answer a stream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that carried no stream for this long is closed (by either side).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);
/// Longest value of a claim header quoted in an error.
const QUOTE: usize = 64;

/// Claim headers of a `CONNECT` stream.
pub mod header {
    /// The client pod's address, as the source proxy saw it.
    pub const SOURCE_IP: &str = "maille-source-ip";
    /// The client pod's identity, `namespace/serviceaccount`; absent for a client outside
    /// the mesh.
    pub const SOURCE_IDENTITY: &str = "maille-source-identity";
    /// The service port called, `namespace/name:port`.
    pub const SERVICE: &str = "maille-service";
    /// `tcp` (a byte stream, also HTTP) or `udp` (length-prefixed datagrams).
    pub const PROTOCOL: &str = "maille-protocol";
    /// On a refusal: why (a [`super::server::Denied`] reason).
    pub const REASON: &str = "maille-reason";
}

/// The bounds and timeouts of the tunnel, on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelSettings {
    /// Opening a session; the destination's connect to its pod.
    pub connect_timeout: Duration,
    /// A session without streams for this long is closed.
    pub session_idle: Duration,
    /// A carried connection without a byte either way for this long is closed.
    pub stream_idle: Option<Duration>,
    /// Streams per session at once.
    pub max_streams: u32,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            session_idle: DEFAULT_SESSION_IDLE,
            stream_idle: Some(crate::tcp::DEFAULT_IDLE_TIMEOUT),
            max_streams: MAX_CONCURRENT_STREAMS,
        }
    }
}

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A byte stream (TCP, and HTTP upstream connections).
    Tcp,
    /// Datagrams, each prefixed with its length ([`udp`]).
    Udp,
}

impl Protocol {
    /// The `maille-protocol` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A node proxy at the other end of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerNode {
    /// Its node name: the DNS name its certificate must carry.
    pub name: Arc<str>,
    /// Its tunnel listener.
    pub addr: SocketAddr,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// What the source proxy states about a carried connection, sent as the headers of its
/// `CONNECT` request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamClaim {
    /// The endpoint: a pod on the destination's node.
    pub target: SocketAddr,
    /// Byte stream or datagrams.
    pub protocol: Protocol,
    /// The client pod's address.
    pub source_ip: Option<IpAddr>,
    /// The client pod's identity (a pod of the source's node, looked up by address), if the
    /// client is in the mesh.
    pub identity: Option<WorkloadIdentity>,
    /// The service port called.
    pub service: ServiceKey,
}

/// A `CONNECT` request whose claim cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel stream: {field} {value:?}: {reason}")]
pub struct BadClaim {
    /// The header or pseudo-header.
    pub field: &'static str,
    /// Its value, cut.
    pub value: String,
    /// What was expected.
    pub reason: &'static str,
}

fn bad(field: &'static str, value: &str, reason: &'static str) -> BadClaim {
    let mut end = value.len().min(QUOTE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    BadClaim {
        field,
        value: value[..end].to_string(),
        reason,
    }
}

/// A Kubernetes name part (namespace, ServiceAccount, Service): lowercase letters, digits,
/// `-` and `.`, 1 to 253 bytes.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Reads `namespace/name:port`.
pub fn parse_service(s: &str) -> Option<ServiceKey> {
    let (rest, port) = s.rsplit_once(':')?;
    let (ns, name) = rest.split_once('/')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (name_ok(ns) && name_ok(name)).then(|| ServiceKey {
        namespace: ns.to_string(),
        name: name.to_string(),
        port,
    })
}

impl StreamClaim {
    /// The `CONNECT` request stating this claim.
    pub fn to_request(&self) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(self.target.to_string())
            .body(())
            .expect("a socket address is an authority");
        let h = req.headers_mut();
        let val = |s: &str| HeaderValue::from_str(s).expect("claim values are header-safe");
        if let Some(ip) = self.source_ip {
            h.insert(header::SOURCE_IP, val(&ip.to_string()));
        }
        if let Some(id) = &self.identity {
            h.insert(header::SOURCE_IDENTITY, val(&id.to_string()));
        }
        h.insert(header::SERVICE, val(&self.service.to_string()));
        h.insert(header::PROTOCOL, val(self.protocol.as_str()));
        req
    }

    /// Reads the claim of a `CONNECT` request; every field is checked, none is guessed.
    pub fn from_request<B>(req: &Request<B>) -> Result<StreamClaim, BadClaim> {
        if req.method() != Method::CONNECT {
            return Err(bad(":method", req.method().as_str(), "expected CONNECT"));
        }
        let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
        let target: SocketAddr = authority
            .parse()
            .map_err(|_| bad(":authority", authority, "expected ip:port"))?;
        let h = req.headers();
        let one = |name: &'static str| -> Result<Option<&str>, BadClaim> { one_header(h, name) };
        let source_ip = match one(header::SOURCE_IP)? {
            Some(v) => Some(
                v.parse::<IpAddr>()
                    .map_err(|_| bad(header::SOURCE_IP, v, "expected an IP address"))?,
            ),
            None => None,
        };
        let identity = match one(header::SOURCE_IDENTITY)? {
            Some(v) => Some(v.parse::<WorkloadIdentity>().map_err(|_| {
                bad(
                    header::SOURCE_IDENTITY,
                    v,
                    "expected namespace/serviceaccount",
                )
            })?),
            None => None,
        };
        let svc = one(header::SERVICE)?.unwrap_or("");
        let service = parse_service(svc)
            .ok_or_else(|| bad(header::SERVICE, svc, "expected namespace/name:port"))?;
        let protocol = match one(header::PROTOCOL)?.unwrap_or("") {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(bad(header::PROTOCOL, other, "expected tcp or udp")),
        };
        Ok(StreamClaim {
            target,
            protocol,
            source_ip,
            identity,
            service,
        })
    }
}

fn one_header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, BadClaim> {
    let mut values = h.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad(name, "", "repeated"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| bad(name, "", "not visible ASCII"))
}

#[cfg(test)]
mod tests;
