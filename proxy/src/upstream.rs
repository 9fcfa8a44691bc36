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
