//! The controller's HTTP API: `/api/configuration` (the table, with an ETag and a bounded
//! long-poll on `If-None-Match`), `/api/services`, `/ready`, `/live` and `/metrics`.
//! Long-polls are bounded per client address and in total; beyond either bound a client gets
//! 429 at once, so no pod can pin the controller's memory with waiting requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use config_model::TableSpec;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::translate::{ObjectStatus, ServiceStatus};

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Default bound on the long-polls one client address may hold at once (a node's proxy holds
/// one; two during an upgrade).
pub const DEFAULT_LONG_POLLS_PER_CLIENT: usize = 8;
/// Default bound on all long-polls held at once (one per node's proxy, plus upgrades).
pub const DEFAULT_LONG_POLLS_TOTAL: usize = 4096;

/// Bounds on concurrent long-polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPollLimits {
    /// Per client address.
    pub per_client: usize,
    /// In total.
    pub total: usize,
}

impl Default for LongPollLimits {
    fn default() -> Self {
        LongPollLimits {
            per_client: DEFAULT_LONG_POLLS_PER_CLIENT,
            total: DEFAULT_LONG_POLLS_TOTAL,
        }
    }
}

/// Long-polls held now: per client address, and their sum.
#[derive(Debug, Default)]
struct Held {
    by_client: HashMap<IpAddr, usize>,
    total: usize,
}

/// One published table, serialised once for every client.
#[derive(Debug)]
pub struct Published {
    /// Table version.
    pub version: u64,
    /// `"<version>"`.
    pub etag: String,
    /// The table as JSON.
    pub table: Bytes,
}

/// What the API serves; the rebuild loop publishes into it.
#[derive(Debug)]
pub struct ApiState {
    current: watch::Sender<Option<Arc<Published>>>,
    /// The last table published, with version 0, to tell a real change from a rebuild that
    /// changed nothing.
    last: Mutex<(Option<TableSpec>, u64)>,
    services: Mutex<Bytes>,
    ready: AtomicBool,
    /// Lines appended to `/ready`: watch health and leadership.
    detail: Mutex<String>,
    shutdown: CancellationToken,
    limits: LongPollLimits,
    held: Mutex<Held>,
}

impl ApiState {
    /// A state serving nothing yet. Versions start above `first_version`, which should grow
    /// across restarts (the start time in milliseconds does) so that a proxy never mistakes a
    /// new table for the one it holds.
    pub fn new(first_version: u64, shutdown: CancellationToken) -> Arc<Self> {
        Self::with_limits(first_version, shutdown, LongPollLimits::default())
    }

    /// [`ApiState::new`] with these long-poll bounds.
    pub fn with_limits(
        first_version: u64,
        shutdown: CancellationToken,
        limits: LongPollLimits,
    ) -> Arc<Self> {
        Arc::new(ApiState {
            current: watch::Sender::new(None),
            last: Mutex::new((None, first_version)),
            services: Mutex::new(Bytes::from_static(b"[]")),
            ready: AtomicBool::new(false),
            detail: Mutex::new(String::new()),
            shutdown,
            limits,
            held: Mutex::new(Held::default()),
        })
    }

    /// Takes a long-poll slot for `client`, or says which bound refuses it.
    fn hold(self: &Arc<Self>, client: IpAddr) -> Result<Waiting, &'static str> {
        let mut held = self.held.lock().expect("long-poll lock");
        if held.total >= self.limits.total {
            return Err("total");
        }
        if held.by_client.get(&client).copied().unwrap_or(0) >= self.limits.per_client {
            return Err("client");
        }
        *held.by_client.entry(client).or_insert(0) += 1;
        held.total += 1;
        metrics::register().longpoll_waiting.inc();
        Ok(Waiting {
            state: self.clone(),
            client,
        })
    }

    /// Serves this table, and in `/api/services` the service ports followed by the other
    /// objects that have problems. The version grows only when the table differs from the one
    /// served; returns the version now served.
    pub fn publish(
        &self,
        table: TableSpec,
        services: &[ServiceStatus],
        objects: &[ObjectStatus],
    ) -> u64 {
        self.publish_at(table, services, objects, 0)
    }

    /// [`ApiState::publish`], with a version of at least `revision` when the table changed:
    /// the cluster's resourceVersion the objects were read at, so that controller replicas
    /// that saw the same cluster state number their tables alike.
    pub fn publish_at(
        &self,
        mut table: TableSpec,
        services: &[ServiceStatus],
        objects: &[ObjectStatus],
        revision: u64,
    ) -> u64 {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Row<'a> {
            Port(&'a ServiceStatus),
            Object(&'a ObjectStatus),
        }
        let rows: Vec<Row<'_>> = services
            .iter()
            .map(Row::Port)
            .chain(objects.iter().map(Row::Object))
            .collect();
        let services = serde_json::to_vec(&rows).expect("service statuses serialise");
        *self.services.lock().expect("services lock") = Bytes::from(services);
        table.version = 0;
        let mut last = self.last.lock().expect("table lock");
        if last.0.as_ref() == Some(&table) {
            return last.1;
        }
        let version = (last.1 + 1).max(revision);
        let mut served = table.clone();
        served.version = version;
        let json = serde_json::to_vec(&served).expect("table serialises");
        *last = (Some(table), version);
        self.current.send_replace(Some(Arc::new(Published {
            version,
            etag: format!("\"{version}\""),
            table: Bytes::from(json),
        })));
        metrics::register().table_version.set(version as i64);
        version
    }

    /// Marks the controller ready (first full sync done and a table published).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Sets the lines `/ready` shows after its first line (watch health, leadership).
    pub fn set_detail(&self, detail: String) {
        *self.detail.lock().expect("detail lock") = detail;
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.current.borrow().is_some()
    }

    /// The table currently served.
    pub fn current(&self) -> Option<Arc<Published>> {
        self.current.borrow().clone()
    }
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/configuration", get(configuration))
        .route("/api/services", get(services))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .route("/metrics", get(prometheus_metrics))
        .with_state(state)
}

/// Serves the API on `listener` until the state's shutdown token is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Parses `?wait=`: `30s`, `500ms`, `1m` or a bare number of seconds, capped at [`MAX_WAIT`].
pub fn parse_wait(value: Option<&str>) -> Result<Duration, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Duration::ZERO);
    };
    let ms = match v.parse::<u64>() {
        Ok(secs) => secs.saturating_mul(1000),
        Err(_) => config_model::duration::parse_millis(v)
            .map_err(|e| format!("query parameter wait: invalid value {v:?}: {e}"))?,
    };
    Ok(Duration::from_millis(ms).min(MAX_WAIT))
}

/// Whether an `If-None-Match` header names this ETag (a list, weak tags and `*` included).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn table_response(p: &Published) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ETAG,
                HeaderValue::from_str(&p.etag).expect("etag is ascii"),
            ),
        ],
        p.table.clone(),
    )
        .into_response()
}

fn not_modified(etag: &str) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(
            header::ETAG,
            HeaderValue::from_str(etag).expect("etag is ascii"),
        )],
    )
        .into_response()
}

/// A long-poll slot: counts the client in `maille_controller_longpoll_waiting` and against the
/// bounds while it waits, and gives the slot back even when the client goes away and the
/// handler is dropped.
struct Waiting {
    state: Arc<ApiState>,
    client: IpAddr,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::register().longpoll_waiting.dec();
        let mut held = self.state.held.lock().expect("long-poll lock");
        held.total -= 1;
        if let Some(n) = held.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

fn too_many(bound: &'static str, limits: LongPollLimits) -> Response {
    metrics::register()
        .longpoll_refusals
        .with_label_values(&[bound])
        .inc();
    let msg = match bound {
        "client" => format!(
            "too many long-polls from this address (at most {}); retry later\n",
            limits.per_client
        ),
        _ => format!(
            "too many long-polls in all (at most {}); retry later\n",
            limits.total
        ),
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        msg,
    )
        .into_response()
}

async fn configuration(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let wait = match parse_wait(query.get("wait").map(String::as_str)) {
        Ok(w) => w,
        Err(msg) => return (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response(),
    };
    let mut rx = state.current.subscribe();
    let current = rx.borrow_and_update().clone();
    // The version the client holds, if it holds the current one.
    let held = match &current {
        Some(p) if etag_matches(&headers, &p.etag) => Some(p.version),
        Some(p) => return table_response(p),
        None if wait.is_zero() => {
            return (StatusCode::SERVICE_UNAVAILABLE, "no table built yet\n").into_response()
        }
        None => None,
    };
    if wait.is_zero() {
        return not_modified(&current.expect("held implies a table").etag);
    }
    let _waiting = match state.hold(peer.ip()) {
        Ok(w) => w,
        Err(bound) => return too_many(bound, state.limits),
    };
    let change = async {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let p = rx.borrow_and_update().clone();
            if let Some(p) = p {
                if Some(p.version) != held {
                    return Some(p);
                }
            }
        }
    };
    let outcome = tokio::select! {
        p = tokio::time::timeout(wait, change) => p.ok().flatten(),
        _ = state.shutdown.cancelled() => None,
    };
    match (outcome, current) {
        (Some(p), _) => table_response(&p),
        (None, Some(p)) => not_modified(&p.etag),
        (None, None) => (StatusCode::SERVICE_UNAVAILABLE, "no table built yet\n").into_response(),
    }
}

async fn services(State(state): State<Arc<ApiState>>) -> Response {
    let body = state.services.lock().expect("services lock").clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let detail = state.detail.lock().expect("detail lock").clone();
    if state.is_ready() {
        (StatusCode::OK, format!("ready\n{detail}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: first sync not done\n{detail}"),
        )
            .into_response()
    }
}

async fn prometheus_metrics() -> Response {
    metrics::register();
    let mut buf = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&prometheus::gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests;
