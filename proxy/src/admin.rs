//! The admin endpoints, on their own port: `/ready` (200 once a first valid table is held),
//! `/live`, and `/metrics` (Prometheus text format, the `prometheus` default registry).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;
use prometheus::{Encoder, TextEncoder};

use crate::store::TableStore;

/// Answers the admin paths.
pub struct AdminApp {
    store: Arc<TableStore>,
    identity: Option<Arc<crate::identity::Identity>>,
}

impl AdminApp {
    /// Admin endpoints reporting on `store`.
    pub fn new(store: Arc<TableStore>) -> Self {
        AdminApp {
            store,
            identity: None,
        }
    }

    /// `/ready` also shows the mesh certificate held (and warns before it expires).
    pub fn with_identity(mut self, identity: Option<Arc<crate::identity::Identity>>) -> Self {
        self.identity = identity;
        self
    }

    fn identity_detail(&self) -> String {
        self.identity
            .as_ref()
            .map(|i| i.ready_detail())
            .unwrap_or_default()
    }

    /// The response to `GET path`.
    pub fn respond(&self, path: &str) -> Response<Vec<u8>> {
        match path {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" if self.store.is_ready() => text(
                StatusCode::OK,
                format!(
                    "ready: table version {}\n{}",
                    self.store.load().version,
                    self.identity_detail()
                ),
            ),
            "/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: no valid routing table yet\n{}",
                    self.identity_detail()
                ),
            ),
            "/metrics" => {
                let encoder = TextEncoder::new();
                let mut body = Vec::new();
                match encoder.encode(&prometheus::gather(), &mut body) {
                    Ok(()) => Response::builder()
                        .status(StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, encoder.format_type())
                        .header(http::header::CONTENT_LENGTH, body.len())
                        .body(body)
                        .expect("valid response"),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("metrics encoding failed: {e}\n"),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /ready, /live or /metrics\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("valid response")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        self.respond(&path)
    }
}

/// The admin listening service on `addr`.
pub fn service(store: Arc<TableStore>, addr: SocketAddr) -> Service<AdminApp> {
    service_with(AdminApp::new(store), addr)
}

/// The admin listening service on `addr`, answering with `app`.
pub fn service_with(app: AdminApp, addr: SocketAddr) -> Service<AdminApp> {
    let mut svc = Service::new("maille admin".to_string(), app);
    svc.add_tcp(&addr.to_string());
    svc.threads = Some(1);
    svc
}

#[cfg(test)]
mod tests {
    use config_model::testing::table;
    use config_model::Table;

    use super::*;

    #[test]
    fn ready_only_after_a_first_table() {
        let store = TableStore::new();
        let app = AdminApp::new(store.clone());
        assert_eq!(app.respond("/ready").status(), 503);
        assert_eq!(app.respond("/live").status(), 200);
        store.store(Table::try_from(table(7, vec![])).unwrap());
        let r = app.respond("/ready");
        assert_eq!(r.status(), 200);
        assert_eq!(
            String::from_utf8_lossy(r.body()),
            "ready: table version 7\n"
        );
        assert_eq!(app.respond("/nope").status(), 404);
    }

    #[test]
    fn metrics_lists_the_table_metrics() {
        crate::metrics::register();
        let store = TableStore::new();
        let app = AdminApp::new(store);
        let r = app.respond("/metrics");
        assert_eq!(r.status(), 200);
        let body = String::from_utf8_lossy(r.body());
        assert!(body.contains("maille_proxy_table_refusals_total"), "{body}");
        assert!(
            body.contains("maille_proxy_http_connections_open"),
            "{body}"
        );
    }
}
