//! How the proxy talks to a service's endpoints: clear HTTP/1.1, h2c, or TLS with certificate
//! verification (the service's `scheme` and TLS options, the proxy's CA bundle); and the
//! per-attempt timeouts that enforce a whole-request deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config_model::{Scheme, Service};
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::tls::RootCertStore;
use pingora_core::upstreams::peer::{HttpPeer, Scheme as PeerScheme};
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Which certificate authorities verify `https` upstreams.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    /// CAs from `--upstream-ca-file`; `None` uses the system's trust store (and the
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` environment variables).
    pub ca: Option<Arc<CaType>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_certificates", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// A CA bundle that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Unreadable, or not PEM.
    #[error("upstream CA file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No certificate in it.
    #[error("upstream CA file {path}: no CERTIFICATE block found")]
    Empty {
        /// The file.
        path: String,
    },
}

impl UpstreamTls {
    /// Trusts exactly the certificates of a PEM bundle.
    pub fn from_pem_file(path: &Path) -> Result<Self, CaError> {
        Ok(UpstreamTls {
            ca: Some(load_ca_file(path)?),
        })
    }
}

/// Reads a PEM bundle of CA certificates, checking each one parses.
pub fn load_ca_file(path: &Path) -> Result<Arc<CaType>, CaError> {
    let shown = path.display().to_string();
    let read_err = |reason: String| CaError::Read {
        path: shown.clone(),
        reason,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| read_err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let mut certs = Vec::new();
    for (i, der) in iter.enumerate() {
        let der = der.map_err(|e| read_err(format!("certificate {}: {e}", i + 1)))?;
        // Checked by webpki first: Pingora's own parser panics on bad DER.
        store
            .add(der.clone())
            .map_err(|e| read_err(format!("certificate {}: {e}", i + 1)))?;
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(CaError::Empty { path: shown });
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}

/// The name an `https` endpoint's certificate must carry (also sent as SNI):
/// `tls-server-name`, or `<name>.<namespace>.svc.cluster.local`.
pub fn server_name(svc: &Service) -> String {
    svc.options
        .tls
        .server_name
        .clone()
        .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", svc.key.name, svc.key.namespace))
}

/// How to reach endpoint `addr` of `svc`: HTTP/1.1 with keep-alive (Pingora pools upstream
/// connections per peer) unless the service's scheme asks for h2c or TLS. The timeouts of the
/// attempt are set afterwards ([`crate::resilience::RequestState::start_attempt`]).
pub fn peer(addr: SocketAddr, svc: &Service, tls: &UpstreamTls) -> Box<HttpPeer> {
    let mut peer = Box::new(HttpPeer::new(addr, false, String::new()));
    apply_scheme(&mut peer, svc, tls);
    peer
}

/// Sets the peer's protocol from the service's `scheme`.
fn apply_scheme(peer: &mut HttpPeer, svc: &Service, tls: &UpstreamTls) {
    match svc.options.scheme {
        Scheme::Http => {}
        Scheme::H2c => {
            peer.scheme = PeerScheme::HTTP;
            peer.options.set_http_version(2, 2);
        }
        Scheme::Https => {
            let verify = !svc.options.tls.insecure_skip_verify;
            peer.scheme = PeerScheme::HTTPS;
            peer.sni = server_name(svc);
            peer.options.verify_cert = verify;
            peer.options.verify_hostname = verify;
            peer.options.alpn = ALPN::H2H1;
            if let Some(ca) = &tls.ca {
                peer.options.ca = Some(ca.clone());
            }
        }
    }
}

fn at_most(current: Option<Duration>, limit: Duration) -> Option<Duration> {
    Some(current.map_or(limit, |c| c.min(limit)))
}

/// Caps every I/O timeout of this attempt at the time left before the deadline: connecting,
/// the TLS handshake, and each read and write. A response that keeps trickling within each
/// read timeout can outlive the deadline once its headers were sent; the deadline is checked
/// again before every retry.
pub fn apply_deadline(peer: &mut HttpPeer, left: Duration) {
    let o = &mut peer.options;
    o.connection_timeout = at_most(o.connection_timeout, left);
    o.total_connection_timeout = at_most(o.total_connection_timeout, left);
    o.read_timeout = at_most(o.read_timeout, left);
    o.write_timeout = at_most(o.write_timeout, left);
}

/// An endpoint picked for a request and how to reach it.
pub struct MeshPeer {
    /// The pick (counted in flight while held).
    pub pick: crate::balance::Pick,
    /// The peer: direct, or through the tunnel to the endpoint's node.
    pub peer: Box<HttpPeer>,
    /// For plain HTTP/1 through the tunnel: the attempt's hold on its tunnel stream, to settle
    /// when the request ends ([`crate::tunnel::lease::settle`]).
    pub ticket: Option<crate::tunnel::lease::Ticket>,
}

/// Picks an endpoint of `backend` (avoiding `failed`) for a request from `client` and the
/// peer that reaches it: directly on this node (or mTLS off, or cleartext to a node without
/// proxy in `permissive`), else through the tunnel to the endpoint's node stating the
/// client's identity. Endpoints that `strict` forbids to reach are passed over; when no other
/// is left, the error is a 503 naming the service, endpoint and node.
pub fn mesh_peer(
    balancer: &crate::balance::Balancer,
    table: &crate::compiled::CompiledTable,
    backend: config_model::ServiceId,
    failed: &[SocketAddr],
    client: Option<std::net::IpAddr>,
    tls: &UpstreamTls,
    pool: Option<&Arc<crate::tunnel::client::Pool>>,
) -> pingora_error::Result<MeshPeer> {
    use crate::tunnel::hop::{self, Way};
    use crate::tunnel::Protocol;
    use pingora_error::{Error, ErrorSource, ErrorType};
    let plan = &table.runtime(backend).endpoints;
    let svc = &table[backend];
    let mut avoid = failed.to_vec();
    let mut refused = None;
    for _ in 0..svc.endpoints.len().max(1) {
        let Some(pick) = balancer.pick(plan, &avoid) else {
            break;
        };
        if refused.is_some() && avoid.contains(&pick.addr) {
            // Every endpoint left is forbidden or failed.
            break;
        }
        let addr = pick.addr;
        let mut peer = peer(addr, svc, tls);
        match hop::way(table, backend, addr, pool, Protocol::Tcp) {
            Way::Direct | Way::Cleartext => {
                return Ok(MeshPeer {
                    pick,
                    peer,
                    ticket: None,
                })
            }
            Way::Tunnel(node) => {
                let pool = pool.expect("a tunnel way has a pool").clone();
                let claim = hop::claim(table, backend, addr, client, Protocol::Tcp);
                let ticket = crate::tunnel::connector::tunnel_peer(&mut peer, pool, node, claim)?;
                return Ok(MeshPeer { pick, peer, ticket });
            }
            Way::Refused => {
                refused = Some((addr, table.endpoint_node(backend, addr).cloned()));
                avoid.push(addr);
            }
        }
    }
    let reason = match refused {
        Some((addr, node)) => format!(
            "mtls strict: endpoint {addr} of service {} runs on node {}, which has no mesh proxy",
            svc.key,
            node.as_deref().unwrap_or("?")
        ),
        None => format!("service {} has no endpoints", svc.key),
    };
    let mut e = Error::explain(ErrorType::HTTPStatus(503), reason);
    e.esource = ErrorSource::Upstream;
    Err(e)
}

/// For the access log: the node whose proxy carried the request through the tunnel (empty
/// when direct), and the client's identity as stated to it.
pub fn mesh_log_fields(
    table: &crate::compiled::CompiledTable,
    backend: config_model::ServiceId,
    endpoint: Option<SocketAddr>,
    client: Option<std::net::IpAddr>,
) -> (String, String) {
    let Some(endpoint) = endpoint else {
        return Default::default();
    };
    match table.hop(backend, endpoint) {
        crate::compiled::mesh::Hop::Tunnel { node, .. } => (
            node.to_string(),
            client
                .and_then(|ip| table.local_identity(ip))
                .map(|i| i.to_string())
                .unwrap_or_default(),
        ),
        _ => Default::default(),
    }
}
