//! The routing steps of an HTTP request, each its own function so that later features extend
//! one step: route lookup → split resolution → access check → (endpoint pick, in
//! [`crate::balance`]; upstream peer, in [`crate::upstream`]).

use std::net::IpAddr;

use config_model::ServiceId;
use pingora_proxy::Session;

use crate::acl;
use crate::compiled::CompiledTable;
use crate::refusal::Refused;
use crate::split::{self, RequestView, Selection};

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

/// Step 1: the service port answering `host` on listener port `mesh_port`.
pub fn lookup(table: &CompiledTable, mesh_port: u16, host: &str) -> Option<ServiceId> {
    table.http_route(mesh_port, host)
}

/// The method, path (without query) and headers that split and access matches look at.
fn request_view(session: &Session) -> RequestView<'_> {
    let req = session.req_header();
    RequestView {
        method: req.method.as_str(),
        path: req.uri.path(),
        headers: &req.headers,
    }
}

/// Step 2: the service port whose endpoints serve the request: the routed one, or the backend
/// its traffic splits pick (nested splits followed). A split that applies with only zero
/// weights sends the request nowhere: 503.
pub fn resolve_split(
    table: &CompiledTable,
    service: ServiceId,
    session: &Session,
) -> Result<ServiceId, Refused> {
    if table[service].splits.is_empty() {
        return Ok(service);
    }
    match split::select(
        table,
        service,
        Some(&request_view(session)),
        &mut rand::rng(),
    ) {
        Selection::Service(i) => Ok(i),
        Selection::NoTraffic { split, .. } => Err(Refused::no_traffic(&split)),
    }
}

/// Step 3: in ACL mode, whether the client may send this request to the service port that
/// serves it (whose pods it reaches): 403 when no access rule (TrafficTarget) admits it.
pub fn check_access(
    table: &CompiledTable,
    service: ServiceId,
    session: &Session,
) -> Result<(), Refused> {
    if !table.acl {
        return Ok(());
    }
    let rt = table.runtime(service);
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        // Without a client address no rule can admit the request.
        .unwrap_or(IpAddr::from([0u8; 4]));
    if acl::admits_request(table.acl, rt, client, &request_view(session)) {
        return Ok(());
    }
    acl::count_denied(rt, client);
    Err(Refused::access_denied(&rt.service().key, client))
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, table};

    use super::*;

    #[test]
    fn lookup_returns_the_id_of_the_matching_service() {
        let mut b = http("shop", "cart", 5001, &["10.0.0.2:80"]);
        b.cluster_ip = Some("10.96.0.7".into());
        let store = crate::store::TableStore::new();
        store.store(
            config_model::Table::try_from(table(
                1,
                vec![http("shop", "web", 5000, &["10.0.0.1:80"]), b],
            ))
            .unwrap(),
        );
        let t = store.current();
        let name = |id: Option<ServiceId>| id.map(|id| t[id].key.name.as_str());
        assert_eq!(name(lookup(&t, 5000, "web.shop.maille.mesh")), Some("web"));
        assert_eq!(
            name(lookup(&t, 5001, "cart.shop.maille.mesh:5001")),
            Some("cart")
        );
        assert_eq!(name(lookup(&t, 5001, "10.96.0.7")), Some("cart"));
        assert_eq!(lookup(&t, 5000, "cart.shop.maille.mesh"), None);
        assert_eq!(lookup(&t, 5000, "nope.shop.maille.mesh"), None);
    }
}
