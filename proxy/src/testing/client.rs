//! Small HTTP clients for tests: HTTP/1.1 (pooled, keep-alive), h2c (prior knowledge) and a
//! websocket round trip, each sending to a given address with a given Host.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderMap, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
    /// HTTP version of the response.
    pub version: Version,
}

impl Reply {
    /// The `x-backend` header (which test backend answered), if any.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 keep-alive client, or an h2c one when built with [`HttpClient::h2c`].
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
    h2c: bool,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::http1()
    }
}

impl HttpClient {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(c),
            h2c: false,
        }
    }

    /// HTTP/2 in clear text, prior knowledge (what gRPC clients do). The service name goes
    /// in `:authority` (HTTP/2 has no Host header); one connection per request.
    pub fn h2c() -> Self {
        HttpClient {
            h2c: true,
            ..Self::http1()
        }
    }

    /// `GET path` sent to `addr` with `Host: host`.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
        self.request("GET", addr, host, path).await
    }

    /// `method path` sent to `addr` with `Host: host` (or `:authority` on h2c).
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Reply> {
        if self.h2c {
            return h2c_request(method, addr, host, path).await;
        }
        // The URI names the proxy address to connect to; the Host header names the service.
        let uri = format!("http://{addr}{path}");
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, host)
            .body(Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(20), self.inner.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("no response from {addr} within 20 s"))??;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version,
        })
    }
}

async fn h2c_request(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .map_err(|_| anyhow::anyhow!("no h2c response from {addr} within 20 s"))??;
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(send);
    driver.abort();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version,
    })
}

/// One `GET` on a fresh HTTP/1.1 client.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    HttpClient::http1().get(addr, host, path).await
}

/// One `GET` of a full URL (admin endpoints).
pub async fn get_url(url: &str) -> anyhow::Result<Reply> {
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("no authority in {url}"))?
        .to_string();
    let addr: SocketAddr = authority.parse()?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    get(addr, &authority, path).await
}

/// Opens a websocket on `ws://host/ws` through `addr`, sends `message`, and returns the first
/// text message received back.
pub async fn websocket_round_trip(
    addr: SocketAddr,
    host: &str,
    message: &str,
) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("ws://{host}/ws").into_client_request()?;
    let (mut ws, resp) = tokio_tungstenite::client_async(request, stream).await?;
    anyhow::ensure!(resp.status() == 101, "upgrade answered {}", resp.status());
    ws.send(Message::text(message)).await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                return Ok(t.to_string());
            }
        }
        anyhow::bail!("websocket closed before a reply")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no websocket reply within 10 s"))??;
    let _ = ws.close(None).await;
    Ok(reply)
}
