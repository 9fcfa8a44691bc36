//! The routing steps of an HTTP request, each its own function so that later features extend
//! one step: route lookup → access check → split resolution → (endpoint pick, in
//! [`crate::balance`]) → upstream peer.

use std::net::SocketAddr;

use config_model::{Service, Table};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::Session;

/// A request the access check refused, with the answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Status code to answer with.
    pub status: u16,
    /// Plain-text body.
    pub body: String,
}

/// The local port the request arrived on (the mesh port), 0 if unknown.
pub fn listener_port(session: &Session) -> u16 {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The Host of a request: the `Host` header, or the URI authority (HTTP/2's `:authority`).
pub fn request_host(session: &Session) -> Option<&str> {
    let req = session.req_header();
    if let Some(h) = req.headers.get(http::header::HOST) {
        return h.to_str().ok();
    }
    req.uri.authority().map(|a| a.as_str())
}

/// Step 1: the service port answering `host` on listener port `mesh_port`, as an index into
/// `table.services`.
pub fn lookup(table: &Table, mesh_port: u16, host: &str) -> Option<usize> {
    let svc = table.http_route(mesh_port, host)?;
    Some(service_index(table, svc))
}

/// Step 2: whether the client may reach the service port. The table's access rules (ACL mode)
/// are enforced by the SMI access-control step; this data plane step admits every request.
pub fn check_access(_table: &Table, _service: usize, _session: &Session) -> Result<(), Denied> {
    Ok(())
}

/// Step 3: the service port whose endpoints serve the request. Without a traffic split that
/// applies, it is the routed service port itself.
pub fn resolve_split(_table: &Table, service: usize, _session: &Session) -> usize {
    service
}

/// Step 5: how to reach an endpoint of `service`: plain HTTP/1.1 with keep-alive (Pingora
/// pools upstream connections per peer).
pub fn peer_for(_service: &Service, addr: SocketAddr) -> Box<HttpPeer> {
    Box::new(HttpPeer::new(addr, false, String::new()))
}

/// Index of `svc`, which must be an element of `table.services`.
fn service_index(table: &Table, svc: &Service) -> usize {
    // Offset arithmetic on the slice instead of a hash lookup by key: `svc` borrows from
    // `table.services`, so the offset is exact.
    let base = table.services.as_ptr() as usize;
    let idx = (svc as *const Service as usize - base) / std::mem::size_of::<Service>();
    debug_assert!(std::ptr::eq(&table.services[idx], svc));
    idx
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, table};

    use super::*;

    #[test]
    fn lookup_returns_the_index_of_the_matching_service() {
        let mut b = http("shop", "cart", 5001, &["10.0.0.2:80"]);
        b.cluster_ip = Some("10.96.0.7".into());
        let t = Table::try_from(table(
            1,
            vec![http("shop", "web", 5000, &["10.0.0.1:80"]), b],
        ))
        .unwrap();
        assert_eq!(lookup(&t, 5000, "web.shop.maille.mesh"), Some(0));
        assert_eq!(lookup(&t, 5001, "cart.shop.maille.mesh:5001"), Some(1));
        assert_eq!(lookup(&t, 5001, "10.96.0.7"), Some(1));
        assert_eq!(lookup(&t, 5000, "cart.shop.maille.mesh"), None);
        assert_eq!(lookup(&t, 5000, "nope.shop.maille.mesh"), None);
    }
}
