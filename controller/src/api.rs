//! The controller's HTTP API: `/api/configuration` (the table, with an ETag and a bounded
//! long-poll on `If-None-Match`; a delta from the version the client holds when it accepts
//! one; gzip for large bodies), `/api/services`, `/ready`, `/live` and `/metrics`.
//! Long-polls are bounded per client address and in total; beyond either bound a client gets
//! 429 at once, so no pod can pin the controller's memory with waiting requests.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use config_model::{ServiceKey, TableSpec};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::translate::{ObjectStatus, ServiceStatus, SharedTable, StatusRows, Translation};

/// Names the controller process that served a table: a delta is only computed for a client
/// that names this process, whose history its version belongs to (another replica, or an
/// earlier run, may have given the same version number to another table).
pub const ORIGIN_HEADER: &str = "maille-table-origin";

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

/// How many table changes the controller remembers for deltas; a proxy further behind gets
/// the full table.
pub const DELTA_HISTORY: usize = 256;

/// Bodies larger than this are gzip-compressed for a client that accepts it.
pub const COMPRESS_ABOVE: usize = 8 * 1024;

/// What changed from one version to the next: service ports, workloads (by IP), whether the
/// node proxies did.
#[derive(Debug)]
struct Change {
    from: u64,
    keys: Arc<[ServiceKey]>,
    workloads: Arc<[String]>,
    nodes: bool,
}

impl Change {
    /// Items a delta carrying this change names.
    fn len(&self) -> usize {
        self.keys.len() + self.workloads.len() + usize::from(self.nodes)
    }
}

/// A response body in both encodings, each made once, when first asked for.
#[derive(Debug, Default)]
struct Encoded {
    plain: OnceLock<Bytes>,
    gzip: OnceLock<Bytes>,
}

impl Encoded {
    fn get(&self, gzip: bool, make: impl FnOnce() -> Bytes) -> (Bytes, bool) {
        let plain = self.plain.get_or_init(make);
        if !gzip || plain.len() <= COMPRESS_ABOVE {
            return (plain.clone(), false);
        }
        let packed = self.gzip.get_or_init(|| {
            let mut enc = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
            enc.write_all(plain).expect("writing to a Vec cannot fail");
            Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
        });
        (packed.clone(), true)
    }
}

/// One published table. Its JSON, compressed JSON and deltas towards it are each made once,
/// the first time a client asks, and shared by every client after.
#[derive(Debug)]
pub struct Published {
    /// Table version.
    pub version: u64,
    /// `"<version>"`.
    pub etag: String,
    /// The table (shared with the translation it came from).
    table: SharedTable,
    /// The changes that led here, oldest first; the last one ends at this version.
    history: Vec<Arc<Change>>,
    full: Encoded,
    /// Deltas by base version (at most one per entry of `history`).
    deltas: Mutex<HashMap<u64, Arc<Encoded>>>,
}

impl Published {
    /// The whole table as JSON.
    pub fn table_json(&self) -> Bytes {
        self.full(false).0
    }

    fn full(&self, gzip: bool) -> (Bytes, bool) {
        self.full.get(gzip, || {
            Bytes::from(serde_json::to_vec(&self.table).expect("table serialises"))
        })
    }

    /// The delta from `base` to this version as JSON, if `base` is recent enough.
    fn delta(&self, base: u64, gzip: bool) -> Option<(Bytes, bool)> {
        let start = self.history.iter().position(|c| c.from == base)?;
        let encoded = self
            .deltas
            .lock()
            .expect("delta cache lock")
            .entry(base)
            .or_default()
            .clone();
        Some(encoded.get(gzip, || {
            let changes = &self.history[start..];
            let keys: BTreeSet<&ServiceKey> = changes.iter().flat_map(|c| c.keys.iter()).collect();
            let workloads: BTreeSet<&str> = changes
                .iter()
                .flat_map(|c| c.workloads.iter().map(String::as_str))
                .collect();
            let nodes = changes.iter().any(|c| c.nodes);
            let delta = self.table.delta_with(base, keys, workloads, nodes);
            Bytes::from(serde_json::to_vec(&delta).expect("delta serialises"))
        }))
    }
}

/// The `/api/services` rows of the last translation published, serialised when first asked
/// for.
#[derive(Debug, Default)]
struct Rows {
    rows: StatusRows,
    objects: Vec<ObjectStatus>,
    json: OnceLock<Bytes>,
}

impl Rows {
    /// The service ports' rows followed by the other objects' rows, as one JSON list.
    fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                #[derive(Serialize)]
                #[serde(untagged)]
                enum Row<'a> {
                    Port(&'a ServiceStatus),
                    Object(&'a ObjectStatus),
                }
                let mut out = vec![b'['];
                let rows =
                    (self.rows.iter().map(Row::Port)).chain(self.objects.iter().map(Row::Object));
                for (i, row) in rows.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &row).expect("service statuses serialise");
                }
                out.push(b']');
                Bytes::from(out)
            })
            .clone()
    }
}

/// The last table published and the changes before it.
#[derive(Debug)]
struct Last {
    table: Option<SharedTable>,
    /// The translator and number of the last translation published, when it had them.
    lineage: Option<(u64, u64)>,
    version: u64,
    history: VecDeque<Arc<Change>>,
    /// Keys in `history`, summed: the history is cut when it outgrows the table.
    history_keys: usize,
}

/// A line of `/ready`'s detail, made when asked for.
struct ReadyNote(Box<dyn Fn() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for ReadyNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyNote")
    }
}

/// What the API serves; the rebuild loop publishes into it.
#[derive(Debug)]
pub struct ApiState {
    current: watch::Sender<Option<Arc<Published>>>,
    last: Mutex<Last>,
    services: Mutex<Arc<Rows>>,
    ready: AtomicBool,
    /// Lines appended to `/ready`: watch health and leadership.
    detail: Mutex<String>,
    /// More lines for `/ready`, each made when it is asked for (warnings that do not make
    /// the controller unready, such as a refused CA change).
    notes: Mutex<Vec<ReadyNote>>,
    /// This process's [`ORIGIN_HEADER`] value.
    origin: HeaderValue,
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
            last: Mutex::new(Last {
                table: None,
                lineage: None,
                version: first_version,
                history: VecDeque::new(),
                history_keys: 0,
            }),
            services: Mutex::new(Arc::default()),
            ready: AtomicBool::new(false),
            detail: Mutex::new(String::new()),
            notes: Mutex::new(Vec::new()),
            origin: origin_id(),
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
    /// served; returns the version now served. Costs a walk of both tables: the rebuild loop
    /// publishes translations ([`ApiState::publish_translation`]), which say what changed.
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
        table: TableSpec,
        services: &[ServiceStatus],
        objects: &[ObjectStatus],
        revision: u64,
    ) -> u64 {
        let t = Translation {
            table: SharedTable::from_spec(table),
            services: StatusRows::from_rows(services),
            objects: objects.to_vec(),
            ..Translation::default()
        };
        self.publish_translation(&t, revision)
    }

    /// Serves the table and rows of this translation, with a version of at least `revision`
    /// when the table changed (see [`ApiState::publish_at`]). A translation that follows the
    /// last one published from the same translator says what changed; the cost is then in
    /// proportion to that: the table and rows are shared, not copied, and their JSON is made
    /// when a client first asks for it.
    pub fn publish_translation(&self, t: &Translation, revision: u64) -> u64 {
        *self.services.lock().expect("services lock") = Arc::new(Rows {
            rows: t.services.clone(),
            objects: t.objects.clone(),
            json: OnceLock::new(),
        });
        let mut table = t.table.clone();
        let mut last = self.last.lock().expect("table lock");
        let follows = match (&t.lineage, last.lineage) {
            (Some(l), Some((id, seq))) => l.translator == id && l.seq == seq + 1,
            _ => false,
        };
        last.lineage = t.lineage.as_ref().map(|l| (l.translator, l.seq));
        let changes = match &last.table {
            Some(prev) => {
                let changes = match &t.lineage {
                    Some(l) if follows => l.changes.clone(),
                    _ => prev.changes(&table),
                };
                if changes.is_empty()
                    && prev.acl == table.acl
                    && prev.mtls == table.mtls
                    && prev.schema_version == table.schema_version
                {
                    return last.version;
                }
                Some(changes)
            }
            None => None,
        };
        let version = (last.version + 1).max(revision);
        table.version = version;
        if let Some(changes) = changes {
            let change = Change {
                from: last.version,
                keys: changes.services.into(),
                workloads: changes.workloads.into(),
                nodes: changes.nodes,
            };
            last.history_keys += change.len();
            last.history.push_back(Arc::new(change));
        }
        let bound = (table.services.len() + table.workloads.len()).max(1024);
        while last.history.len() > DELTA_HISTORY
            || (last.history_keys > bound && last.history.len() > 1)
        {
            if let Some(c) = last.history.pop_front() {
                last.history_keys -= c.len();
            }
        }
        last.table = Some(table.clone());
        last.version = version;
        let history = last.history.iter().cloned().collect();
        // Set before the long-polls wake: an answer with this version is never seen before
        // the gauge says it is served.
        metrics::register().table_version.set(version as i64);
        self.current.send_replace(Some(Arc::new(Published {
            version,
            etag: format!("\"{version}\""),
            table,
            history,
            full: Encoded::default(),
            deltas: Mutex::new(HashMap::new()),
        })));
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

    /// Adds a line maker to `/ready`'s detail: called at each request, its line (if any)
    /// shown after the watch health. Does not change the status.
    pub fn add_ready_note(&self, note: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.notes
            .lock()
            .expect("notes lock")
            .push(ReadyNote(Box::new(note)));
    }

    /// `/ready`'s lines after the first.
    fn ready_detail(&self) -> String {
        let mut detail = self.detail.lock().expect("detail lock").clone();
        for note in self.notes.lock().expect("notes lock").iter() {
            if let Some(line) = (note.0)() {
                detail.push_str(line.trim_end());
                detail.push('\n');
            }
        }
        detail
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

/// An identity for this process: its start time in nanoseconds and process id (two replicas
/// never start in the same nanosecond; a restart changes it).
fn origin_id() -> HeaderValue {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    HeaderValue::from_str(&format!("{nanos:x}-{:x}", std::process::id()))
        .expect("hex digits are a header value")
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
    serve_with(listener, state, None).await
}

/// [`serve`], with more routes (the identity API, `crate::identity::router`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    extra: Option<Router>,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let mut app = router(state);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
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
    if_none_match(headers).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn if_none_match(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
}

/// The table version a client holds, from its `If-None-Match` (`"<version>"`).
fn held_version(headers: &HeaderMap) -> Option<u64> {
    if_none_match(headers).find_map(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
    })
}

/// What a client said it can take: deltas (`Accept`) from the controller process it names
/// ([`ORIGIN_HEADER`]), and gzip (`Accept-Encoding`).
#[derive(Clone, Debug, Default)]
struct Accepts {
    delta: bool,
    gzip: bool,
    origin: Option<HeaderValue>,
}

impl Accepts {
    fn of(headers: &HeaderMap) -> Accepts {
        let listed = |name: header::HeaderName, want: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|item| {
                    let mut parts = item.split(';').map(str::trim);
                    let token = parts.next().unwrap_or("");
                    // `q=0` means "not this one".
                    token.eq_ignore_ascii_case(want)
                        && !parts.any(|p| {
                            p.strip_prefix("q=")
                                .is_some_and(|q| q.parse::<f32>() == Ok(0.0))
                        })
                })
        };
        Accepts {
            delta: listed(header::ACCEPT, config_model::DELTA_MEDIA_TYPE),
            gzip: listed(header::ACCEPT_ENCODING, "gzip"),
            origin: headers.get(ORIGIN_HEADER).cloned(),
        }
    }
}

/// The answer for a client holding `held` (if any): the delta from it when the client takes
/// deltas and the controller still knows the way, otherwise the whole table.
fn table_response(
    p: &Published,
    held: Option<u64>,
    accepts: Accepts,
    origin: &HeaderValue,
) -> Response {
    let m = metrics::register();
    let delta = held
        .filter(|_| accepts.delta && accepts.origin.as_ref() == Some(origin))
        .and_then(|base| p.delta(base, accepts.gzip));
    let (kind, content_type, (body, gzipped)) = match delta {
        Some(d) => ("delta", config_model::DELTA_MEDIA_TYPE, d),
        None => ("full", "application/json", p.full(accepts.gzip)),
    };
    m.table_responses.with_label_values(&[kind]).inc();
    m.table_response_bytes
        .with_label_values(&[kind])
        .inc_by(body.len() as u64);
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ETAG,
                HeaderValue::from_str(&p.etag).expect("etag is ascii"),
            ),
            (
                header::VARY,
                HeaderValue::from_static("Accept, Accept-Encoding"),
            ),
        ],
        body,
    )
        .into_response();
    resp.headers_mut().insert(
        header::HeaderName::from_static(ORIGIN_HEADER),
        origin.clone(),
    );
    if gzipped {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
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
    let accepts = Accepts::of(&headers);
    let held = match &current {
        Some(p) if etag_matches(&headers, &p.etag) => Some(p.version),
        Some(p) => return table_response(p, held_version(&headers), accepts, &state.origin),
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
        (Some(p), _) => table_response(&p, held, accepts, &state.origin),
        (None, Some(p)) => not_modified(&p.etag),
        (None, None) => (StatusCode::SERVICE_UNAVAILABLE, "no table built yet\n").into_response(),
    }
}

async fn services(State(state): State<Arc<ApiState>>) -> Response {
    let rows = state.services.lock().expect("services lock").clone();
    ([(header::CONTENT_TYPE, "application/json")], rows.json()).into_response()
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let detail = state.ready_detail();
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
