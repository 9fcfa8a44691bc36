//! A small real HTTP backend for tests: HTTP/1.1 and h2c on one port, answering with its own
//! name, and more on request:
//! - `/echo...`: the method, path, version and headers it received, one per line;
//! - `/sleep/<ms>`: answers after that delay;
//! - `/status/<code>`: answers with that status;
//! - `/peer`: the address its client connection comes from (which connection carried it);
//! - `/ws` with `Upgrade: websocket`: a websocket that echoes each message as `<name>:<msg>`;
//! - anything else: its name.
//!
//! Every response carries `x-backend: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A running backend; stops (with its connections) when dropped.
pub struct HttpBackend {
    /// Its name, the body of its default answer.
    pub name: String,
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Starts a backend on `127.0.0.1:0`. Call within a tokio runtime.
    pub async fn start(name: &str) -> HttpBackend {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// Same, delaying every answer by `delay`.
    pub async fn start_with_delay(name: &str, delay: Duration) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let hits = Arc::new(AtomicU64::new(0));
        let state = Arc::new(State {
            name: name.to_string(),
            hits: hits.clone(),
            delay,
        });
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req, remote).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        HttpBackend {
            name: name.to_string(),
            addr,
            hits,
            task,
        }
    }

    /// `ip:port`, as a table endpoint.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    name: String,
    hits: Arc<AtomicU64>,
    delay: Duration,
}

impl State {
    async fn answer(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let path = req.uri().path().to_string();
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header("x-backend", &self.name)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        };
        if path == "/ws" && is_websocket(&req) {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
                return reply(StatusCode::BAD_REQUEST, "missing sec-websocket-key".into());
            };
            let name = self.name.clone();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let out = match msg {
                        Message::Text(t) => Message::text(format!("{name}:{t}")),
                        Message::Binary(b) => Message::binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(out).await.is_err() {
                        break;
                    }
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    derive_accept_key(key.as_bytes()),
                )
                .header("x-backend", &self.name)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        if path.starts_with("/echo") {
            let mut body = format!(
                "backend={}\nmethod={}\npath={}\nversion={:?}\n",
                self.name,
                req.method(),
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
                req.version()
            );
            for (k, v) in req.headers() {
                body.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            return reply(StatusCode::OK, body);
        }
        if path == "/peer" {
            return reply(StatusCode::OK, remote.to_string());
        }
        if let Some(ms) = path.strip_prefix("/sleep/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return reply(StatusCode::OK, self.name.clone());
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return reply(status, self.name.clone());
        }
        reply(StatusCode::OK, self.name.clone())
    }
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}
