//! A table from the controller: `GET {url}/api/configuration?wait=30s` with
//! `If-None-Match: <etag>`. The controller answers 200 with a new table (and its `ETag`) as soon
//! as one exists, or 304 after the wait; the proxy asks again at once. On errors, refused or
//! oversized tables and answers without an `ETag` it keeps the last good table and asks again
//! after a growing, jittered, capped delay; a failure that repeats is logged once per
//! [`FAILURE_LOG_INTERVAL`]. The body is read frame by frame and refused past
//! `--controller-max-table-bytes`, so a hostile answer cannot make the proxy buffer it whole.
//!
//! Several URLs (controller replicas) may be given: a connection failure or an error status
//! moves to the next one at once, and the backoff starts only when all of them failed in a
//! row. Table versions compare across replicas (they follow the cluster's resourceVersions),
//! so an answer older than the table held (a replica that lags behind) is not taken: the proxy
//! asks again shortly, on the next URL. A source that keeps answering older tables for
//! [`OLDER_GRACE`] is believed (a restored cluster, an upgrade that renumbered versions).
//!
//! The proxy says it takes deltas (`Accept: application/vnd.maille.delta+json`) and gzip, and
//! names the controller process its table came from (`maille-table-origin`): a controller that
//! served the version the proxy holds answers with the service ports that changed since, which
//! the proxy applies to its table ([`super::swap_delta`]); a delta that does not fit the table
//! held makes the next poll ask for the full table. A gzip body is bounded once inflated too.
//! [`ControllerSource::deltas`] and [`ControllerSource::gzip`] turn either off
//! (`--controller-deltas=false`; the fleet bench's full-table baselines).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rand::Rng;

use crate::store::TableStore;

/// Response header naming the controller process that served a table; sent back with
/// `If-None-Match` (deltas are made only from a version the same process served).
pub const ORIGIN_HEADER: &str = "maille-table-origin";
/// How long the controller may hold a request open before answering 304.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// First retry delay after an error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Default bound on a table answer's body (`--controller-max-table-bytes`): far above a real
/// table (10,000 services with endpoints take a few MiB), far below what would hurt a node.
pub const DEFAULT_MAX_TABLE_BYTES: u64 = 64 << 20;
/// How soon to ask again after an answer older than the table held.
pub const OLDER_RETRY: Duration = Duration::from_millis(500);
/// How long answers older than the table held are refused before they are believed.
pub const OLDER_GRACE: Duration = Duration::from_secs(30);
/// A failure that repeats (same message) is logged at most once per this interval.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL does not make a valid request URI.
    #[error("controller URL {url:?} is not a valid http:// URL: {reason}")]
    Url {
        /// The `--controller-url` value.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Connection or protocol failure.
    #[error("GET {uri}: {reason}")]
    Transport {
        /// The request URI.
        uri: String,
        /// What went wrong.
        reason: String,
    },
    /// The controller answered with an unexpected status.
    #[error("GET {uri}: unexpected status {status}")]
    Status {
        /// The request URI.
        uri: String,
        /// The status received.
        status: StatusCode,
    },
    /// The answer's body is larger than `--controller-max-table-bytes`; it was not read further.
    #[error("GET {uri}: table answer larger than the limit of {limit} bytes (--controller-max-table-bytes){}", declared.map(|n| format!("; Content-Length {n}")).unwrap_or_default())]
    TooLarge {
        /// The request URI.
        uri: String,
        /// The bound in bytes.
        limit: u64,
        /// The `Content-Length` the controller declared, if any.
        declared: Option<u64>,
    },
    /// The table was received but refused.
    #[error("GET {uri}: table refused: {reason}")]
    Refused {
        /// The request URI.
        uri: String,
        /// Why.
        reason: String,
    },
}

/// What one poll brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// A new table, swapped in; its version.
    Swapped(u64),
    /// The controller has nothing newer.
    Unchanged,
    /// The controller answered with a table older than the one held (its version); not taken.
    Older(u64),
    /// A delta, applied to the table held; the version it led to.
    Delta(u64),
    /// A delta that does not fit the table held: the next poll asks for the full table.
    Resync,
}

/// Long-polls the controller and swaps in each new valid table.
pub struct ControllerSource {
    uris: Vec<Uri>,
    /// Index in `uris` of the URL asked now.
    current: AtomicUsize,
    /// Since when answers have been older than the table held.
    older_since: Mutex<Option<Instant>>,
    store: Arc<TableStore>,
    client: Client<HttpConnector, Empty<Bytes>>,
    wait: Duration,
    max_table_bytes: u64,
    /// The controller process the table held came from (its `maille-table-origin`), sent back
    /// so that it makes a delta only from a version it served itself.
    origin: Mutex<Option<http::HeaderValue>>,
    /// Whether to ask for deltas (`--controller-deltas`); without, every change brings the
    /// whole table.
    deltas: bool,
    /// Whether to take gzip bodies.
    gzip: bool,
}

impl ControllerSource {
    /// A source polling `{base_url}/api/configuration` into `store`; `base_url` may list
    /// several URLs separated by commas (controller replicas), asked in turn on failure.
    pub fn new(base_url: &str, store: Arc<TableStore>) -> Result<Self, Error> {
        Self::with_wait(base_url, store, LONG_POLL_WAIT)
    }

    /// Same, with another long-poll wait (tests).
    pub fn with_wait(
        base_url: &str,
        store: Arc<TableStore>,
        wait: Duration,
    ) -> Result<Self, Error> {
        let wait_s = wait.as_secs().max(1);
        let mut uris = Vec::new();
        for one in base_url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            uris.push(parse_base(one, wait_s)?);
        }
        if uris.is_empty() {
            return Err(Error::Url {
                url: base_url.to_string(),
                reason: "no URL given".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(ControllerSource {
            uris,
            current: AtomicUsize::new(0),
            older_since: Mutex::new(None),
            store,
            client,
            wait: Duration::from_secs(wait_s),
            max_table_bytes: DEFAULT_MAX_TABLE_BYTES,
            origin: Mutex::new(None),
            deltas: true,
            gzip: true,
        })
    }

    /// Whether to ask for deltas (default yes; `--controller-deltas=false` turns them off):
    /// without, the controller answers every change with the whole table.
    pub fn deltas(mut self, on: bool) -> Self {
        self.deltas = on;
        self
    }

    /// Whether to accept gzip bodies (default yes). Off, the controller sends plain JSON, as
    /// before it compressed (the fleet bench's baseline).
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// The controller process the table held came from (its `maille-table-origin`), if known.
    pub fn origin(&self) -> Option<http::HeaderValue> {
        self.origin.lock().expect("origin lock").clone()
    }

    /// Starts as if the table held had come from the controller process `origin`: for a store
    /// seeded from another source's ([`TableStore::seeded_from`]), whose ETag is then given to
    /// [`Self::poll_once`], so that the first poll asks for what changed since (the fleet
    /// bench's simulated proxies).
    pub fn with_origin(self, origin: Option<http::HeaderValue>) -> Self {
        *self.origin.lock().expect("origin lock") = origin;
        self
    }

    /// Refuses table answers larger than `bytes` (`--controller-max-table-bytes`).
    pub fn max_table_bytes(mut self, bytes: u64) -> Self {
        self.max_table_bytes = bytes;
        self
    }

    /// The URI polled now.
    pub fn uri(&self) -> &Uri {
        &self.uris[self.current.load(Ordering::Relaxed) % self.uris.len()]
    }

    /// Every URI, in the order they are tried.
    pub fn uris(&self) -> &[Uri] {
        &self.uris
    }

    /// Moves to the next URL; returns whether a round of all of them is complete.
    fn next_uri(&self) -> bool {
        let n = self.uris.len();
        let i = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        i.is_multiple_of(n)
    }

    /// One conditional GET. `etag` is the tag of the last table received; it is updated on a
    /// 200 (even when the table is refused, so the same bad table is not fetched again).
    pub async fn poll_once(&self, etag: &mut Option<String>) -> Result<Poll, Error> {
        let target = self.uri().clone();
        let uri = target.to_string();
        let mut req = Request::get(target);
        if let Some(tag) = etag.as_deref() {
            req = req.header(header::IF_NONE_MATCH, tag);
            if let Some(origin) = self.origin.lock().expect("origin lock").clone() {
                req = req.header(ORIGIN_HEADER, origin);
            }
        }
        let accept = if self.deltas {
            format!("{}, application/json", config_model::DELTA_MEDIA_TYPE)
        } else {
            "application/json".to_string()
        };
        req = req.header(header::ACCEPT, accept);
        if self.gzip {
            req = req.header(header::ACCEPT_ENCODING, "gzip");
        }
        let req = req.body(Empty::new()).map_err(|e| Error::Transport {
            uri: uri.clone(),
            reason: e.to_string(),
        })?;
        let deadline = self.wait + Duration::from_secs(15);
        let resp = tokio::time::timeout(deadline, self.client.request(req))
            .await
            .map_err(|_| Error::Transport {
                uri: uri.clone(),
                reason: format!("no answer within {deadline:?}"),
            })?
            .map_err(|e| Error::Transport {
                uri: uri.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        match status {
            StatusCode::NOT_MODIFIED => Ok(Poll::Unchanged),
            StatusCode::OK => {
                let new_tag = resp
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if let Some(older) = self.older_than_held(new_tag.as_deref()) {
                    return Ok(Poll::Older(older));
                }
                let headers = resp.headers();
                let origin = headers
                    .get(ORIGIN_HEADER)
                    .filter(|v| v.len() <= 128)
                    .cloned();
                let is_delta = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(config_model::DELTA_MEDIA_TYPE));
                let gzipped = match headers.get(header::CONTENT_ENCODING) {
                    None => false,
                    Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
                    Some(v) => {
                        return Err(Error::Transport {
                            uri,
                            reason: format!(
                                "Content-Encoding {:?} is not supported (expected gzip or none)",
                                String::from_utf8_lossy(&v.as_bytes()[..v.len().min(64)])
                            ),
                        })
                    }
                };
                let declared = resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let body = tokio::time::timeout(
                    deadline,
                    read_bounded(resp.into_body(), declared, self.max_table_bytes, &uri),
                )
                .await
                .map_err(|_| Error::Transport {
                    uri: uri.clone(),
                    reason: "body not received in time".into(),
                })??;
                // A whole table that came gzip keeps its gzip form (for an upgrade) and drops
                // the JSON once read.
                let (body, gzip) = if gzipped {
                    let json = gunzip_bounded(&body, self.max_table_bytes, &uri)?;
                    (json, Some(body))
                } else {
                    (body, None)
                };
                *etag = new_tag;
                *self.origin.lock().expect("origin lock") = origin;
                if !is_delta {
                    return super::swap_json_body(&self.store, body, gzip, &uri)
                        .map(Poll::Swapped)
                        .map_err(|e| Error::Refused {
                            uri,
                            reason: e.to_string(),
                        });
                }
                match super::swap_delta(&self.store, &body, &uri) {
                    Ok(version) => Ok(Poll::Delta(version)),
                    Err(e @ super::DeltaFailure::Resync(_)) => {
                        tracing::info!(uri, reason = %e, "Table delta does not fit the table held");
                        *etag = None;
                        Ok(Poll::Resync)
                    }
                    Err(e) => Err(Error::Refused {
                        uri,
                        reason: e.to_string(),
                    }),
                }
            }
            status => Err(Error::Status { uri, status }),
        }
    }

    /// The version of an answer's ETag when it is older than the table held and such answers
    /// have not lasted [`OLDER_GRACE`] yet.
    fn older_than_held(&self, tag: Option<&str>) -> Option<u64> {
        let version: u64 = tag?
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .ok()?;
        let mut since = self.older_since.lock().expect("older_since lock");
        if version >= self.store.load().version {
            *since = None;
            return None;
        }
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() >= OLDER_GRACE {
            tracing::warn!(
                version,
                held = self.store.load().version,
                "The controller has served only older tables for a while; taking its table"
            );
            *since = None;
            return None;
        }
        Some(version)
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut etag = None;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut failures = FailureLog::new(FAILURE_LOG_INTERVAL);
        loop {
            let polled = tokio::select! {
                r = self.poll_once(&mut etag) => r,
                _ = shutdown.changed() => return,
            };
            let delay = match polled {
                Ok(Poll::Swapped(_)) if etag.is_none() => {
                    // Without an ETag the next long-poll would be answered at once with the
                    // same table: a busy loop against a controller that ignores the contract.
                    let delay = backoff.next_delay();
                    if let Some(repeats) = failures.failed("answer without ETag", Instant::now()) {
                        tracing::warn!(uri = %self.uri(), ?delay, repeats, "Controller answered without an ETag; backing off before asking again");
                    }
                    Some(delay)
                }
                Ok(Poll::Older(version)) => {
                    // A replica that lags behind: ask another (or this one again) shortly.
                    tracing::debug!(uri = %self.uri(), version, held = self.store.load().version, "Controller answered an older table; not taken");
                    self.next_uri();
                    Some(OLDER_RETRY)
                }
                Ok(_) => {
                    if failures.recovered() {
                        tracing::info!(uri = %self.uri(), "Controller answers again");
                    }
                    backoff.reset();
                    None
                }
                Err(e)
                    if self.uris.len() > 1
                        && !self.next_uri()
                        && !matches!(e, Error::Refused { .. } | Error::TooLarge { .. }) =>
                {
                    // Another replica may answer: ask it at once.
                    tracing::debug!(error = %e, next = %self.uri(), "Controller failed; trying the next URL");
                    None
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let message = e.to_string();
                    match failures.failed(&message, Instant::now()) {
                        Some(repeats)
                            if matches!(e, Error::Refused { .. } | Error::TooLarge { .. }) =>
                        {
                            tracing::error!(error = %message, kept_version = self.store.load().version, ?delay, repeats, "Routing table refused; keeping the last good one");
                        }
                        Some(repeats) => {
                            tracing::warn!(error = %message, ?delay, repeats, "Cannot get the routing table from the controller; keeping the last good one and retrying");
                        }
                        None => {
                            tracing::debug!(error = %message, ?delay, "Controller failure repeats");
                        }
                    }
                    Some(delay)
                }
            };
            if let Some(d) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Reads a table answer's body frame by frame, refusing it as soon as it passes `limit` bytes
/// (or at once when its declared length does), so a hostile answer is never held whole.
async fn read_bounded(
    mut body: Incoming,
    declared: Option<u64>,
    limit: u64,
    uri: &str,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge {
        uri: uri.to_string(),
        limit,
        declared,
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // A declared length is a hint, not a promise: reserve no more than 1 MiB up front.
    let reserve = declared.unwrap_or(0).min(limit).min(1 << 20);
    let mut buf = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Transport {
            uri: uri.to_string(),
            reason: error_chain(&e),
        })?;
        if let Ok(data) = frame.into_data() {
            let len = u64::try_from(buf.len() + data.len()).unwrap_or(u64::MAX);
            if len > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Inflates a gzip body, refusing it as soon as the output passes `limit` bytes (a small
/// compressed answer can inflate to gigabytes).
fn gunzip_bounded(body: &[u8], limit: u64, uri: &str) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(16 << 20));
    flate2::read::GzDecoder::new(body)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::Transport {
            uri: uri.to_string(),
            reason: format!("gzip body does not inflate: {e}"),
        })?;
    if u64::try_from(out.len()).unwrap_or(u64::MAX) > limit {
        return Err(Error::TooLarge {
            uri: uri.to_string(),
            limit,
            declared: None,
        });
    }
    Ok(out)
}

/// Retry delays: doubling from `min` up to `max`, each drawn within ±20 % so that the proxies
/// of a cluster do not all ask again in the same instant.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay before the next attempt; the one after grows.
    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.8..1.2);
        let delay = self.current.mul_f64(jitter).min(self.max);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Decides which failures are logged: a new failure at once, the same one again only after
/// `interval` (with how often it repeated meanwhile), so a controller failing on every poll
/// gives one line a minute, not one per fetch.
#[derive(Debug)]
pub struct FailureLog {
    interval: Duration,
    last: Option<(String, Instant)>,
    repeats: u64,
}

impl FailureLog {
    /// Identical failures logged at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        FailureLog {
            interval,
            last: None,
            repeats: 0,
        }
    }

    /// A failure with this message happened at `now`: `Some(times it repeated unlogged since
    /// the last line)` when it should be logged, `None` when it should not.
    pub fn failed(&mut self, message: &str, now: Instant) -> Option<u64> {
        match &mut self.last {
            Some((last, at)) if last == message && now.duration_since(*at) < self.interval => {
                self.repeats += 1;
                None
            }
            _ => {
                let repeats = std::mem::take(&mut self.repeats);
                self.last = Some((message.to_string(), now));
                Some(repeats)
            }
        }
    }

    /// A success: whether failures had been reported (so that the recovery is worth a line).
    pub fn recovered(&mut self) -> bool {
        self.repeats = 0;
        self.last.take().is_some()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[async_trait]
impl BackgroundService for ControllerSource {
    async fn start(&self, shutdown: ShutdownWatch) {
        tracing::info!(uri = %self.uri(), "Pulling the routing table from the controller");
        self.run(shutdown).await
    }
}

#[cfg(test)]
mod tests;

/// `{base}/api/configuration?wait=...` for one `--controller-url` entry.
fn parse_base(base_url: &str, wait_s: u64) -> Result<Uri, Error> {
    let bad = |reason: String| Error::Url {
        url: base_url.to_string(),
        reason,
    };
    let base = base_url.trim_end_matches('/');
    let uri: Uri = format!("{base}/api/configuration?wait={wait_s}s")
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(bad(format!("scheme {other} is not supported, use http"))),
        None => {
            return Err(bad(
                "missing scheme, e.g. http://maille-controller:9000".into()
            ))
        }
    }
    if uri.host().is_none() {
        return Err(bad("missing host".into()));
    }
    Ok(uri)
}
