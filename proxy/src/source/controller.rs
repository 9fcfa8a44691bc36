//! A table from the controller: `GET {url}/api/configuration?wait=30s` with
//! `If-None-Match: <etag>`. The controller answers 200 with a new table (and its `ETag`) as soon
//! as one exists, or 304 after the wait; the proxy asks again at once. On errors it keeps the
//! last good table and retries with capped exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rand::Rng;

use crate::store::TableStore;

/// How long the controller may hold a request open before answering 304.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// First retry delay after an error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

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
}

/// Long-polls the controller and swaps in each new valid table.
pub struct ControllerSource {
    uri: Uri,
    store: Arc<TableStore>,
    client: Client<HttpConnector, Empty<Bytes>>,
    wait: Duration,
}

impl ControllerSource {
    /// A source polling `{base_url}/api/configuration` into `store`.
    pub fn new(base_url: &str, store: Arc<TableStore>) -> Result<Self, Error> {
        Self::with_wait(base_url, store, LONG_POLL_WAIT)
    }

    /// Same, with another long-poll wait (tests).
    pub fn with_wait(
        base_url: &str,
        store: Arc<TableStore>,
        wait: Duration,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::Url {
            url: base_url.to_string(),
            reason,
        };
        let base = base_url.trim_end_matches('/');
        let wait_s = wait.as_secs().max(1);
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(ControllerSource {
            uri,
            store,
            client,
            wait: Duration::from_secs(wait_s),
        })
    }

    /// The URI polled.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// One conditional GET. `etag` is the tag of the last table received; it is updated on a
    /// 200 (even when the table is refused, so the same bad table is not fetched again).
    pub async fn poll_once(&self, etag: &mut Option<String>) -> Result<Poll, Error> {
        let uri = self.uri.to_string();
        let mut req = Request::get(self.uri.clone());
        if let Some(tag) = etag.as_deref() {
            req = req.header(header::IF_NONE_MATCH, tag);
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
                let body = tokio::time::timeout(deadline, resp.into_body().collect())
                    .await
                    .map_err(|_| Error::Transport {
                        uri: uri.clone(),
                        reason: "body not received in time".into(),
                    })?
                    .map_err(|e| Error::Transport {
                        uri: uri.clone(),
                        reason: e.to_string(),
                    })?
                    .to_bytes();
                *etag = new_tag;
                super::apply_json(&self.store, &body, &uri)
                    .map(Poll::Swapped)
                    .map_err(|e| Error::Refused {
                        uri,
                        reason: e.to_string(),
                    })
            }
            status => Err(Error::Status { uri, status }),
        }
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut etag = None;
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        loop {
            let delay = tokio::select! {
                r = self.poll_once(&mut etag) => match r {
                    Ok(_) | Err(Error::Refused { .. }) => {
                        if failing {
                            tracing::info!(uri = %self.uri, "Controller reachable again");
                        }
                        failing = false;
                        backoff = BACKOFF_MIN;
                        None
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "Cannot get the routing table from the controller; keeping the last good one and retrying");
                        } else {
                            tracing::debug!(error = %e, ?backoff, "Controller still unreachable");
                        }
                        failing = true;
                        let jitter = rand::rng().random_range(0.8..1.2);
                        let d = backoff.mul_f64(jitter);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        Some(d)
                    }
                },
                _ = shutdown.changed() => return,
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
        tracing::info!(uri = %self.uri, "Pulling the routing table from the controller");
        self.run(shutdown).await
    }
}

#[cfg(test)]
mod tests;
