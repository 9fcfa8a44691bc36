//! The load bench's backend: a fixed-response HTTP/1.1 server and a small TCP server, both as
//! cheap per request as can be, so that what the load bench measures is the proxy in between.
//!
//! HTTP: every request head (and its `Content-Length` body, if any) gets the same 200 response,
//! keep-alive, pipelining allowed. TCP: a connection whose first bytes are `PING` gets `PONG`
//! and is closed by the backend (closing first keeps TIME_WAIT on the server side, so a
//! connection-rate run does not exhaust the client's ephemeral ports); one starting with `S`
//! gets an endless stream of bytes until the client closes; anything else is echoed.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Length of the HTTP response body.
pub const BODY_LEN: usize = 100;
/// The body starts with this, so a load bench can tell the backend's answer from a proxy's
/// error page.
pub const BODY_PREFIX: &str = "maille-bench-backend";
/// What a `PING` connection gets back.
pub const PONG: &[u8; 4] = b"PONG";

const MAX_BUFFER: usize = 1 << 20;
const STREAM_CHUNK: usize = 64 * 1024;

/// The fixed HTTP body: [`BODY_PREFIX`] padded to [`BODY_LEN`] bytes.
pub fn body() -> Vec<u8> {
    let mut b = BODY_PREFIX.as_bytes().to_vec();
    b.resize(BODY_LEN - 1, b'.');
    b.push(b'\n');
    b
}

fn response() -> Arc<[u8]> {
    let body = body();
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r.into()
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole request of this many bytes (head and body); `close` when the client asked for it.
    Request { len: usize, close: bool },
    /// Not all of it yet.
    Partial,
    /// Not a request this server understands (chunked body, bad length).
    Bad,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(head_len) = find_head_end(buf) else {
        return if buf.len() > MAX_BUFFER / 2 {
            Parsed::Bad
        } else {
            Parsed::Partial
        };
    };
    let head = &buf[..head_len];
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    let mut close = request_line.trim_ascii_end().ends_with(b"HTTP/1.0");
    let mut body_len = 0usize;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) if n <= MAX_BUFFER / 2 => body_len = n,
                _ => return Parsed::Bad,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parsed::Bad;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let v = value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
    }
    if buf.len() < head_len + body_len {
        return Parsed::Partial;
    }
    Parsed::Request {
        len: head_len + body_len,
        close,
    }
}

async fn http_connection(mut stream: TcpStream, response: Arc<[u8]>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(response.len() * 4);
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_BUFFER {
                return Err(io::Error::other("request too large"));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        let mut close = false;
        while start < filled {
            match parse(&buf[start..filled]) {
                Parsed::Request { len, close: c } => {
                    out.extend_from_slice(&response);
                    start += len;
                    if c {
                        close = true;
                        break;
                    }
                }
                Parsed::Partial => break,
                Parsed::Bad => {
                    out.extend_from_slice(BAD_REQUEST);
                    close = true;
                    break;
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

/// Answers HTTP requests on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener) {
    let response = response();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(http_connection(stream, response.clone()));
            }
            // Out of file descriptors or a connection reset before accept: keep serving.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn tcp_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut first = [0u8; 4];
    let mut got = 0;
    while got == 0 || (first[0] == b'P' && got < 4) {
        let n = stream.read(&mut first[got..]).await?;
        if n == 0 {
            return Ok(());
        }
        got += n;
    }
    if &first[..got] == b"PING" {
        stream.write_all(PONG).await?;
        stream.shutdown().await?;
        return Ok(());
    }
    if first[0] == b'S' {
        let chunk = vec![b's'; STREAM_CHUNK];
        loop {
            // Ends with an error once the client has gone.
            stream.write_all(&chunk).await?;
        }
    }
    stream.write_all(&first[..got]).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Serves the TCP protocol described in the module doc on `listener`.
pub async fn serve_tcp(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_connection(stream));
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn http_server() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_http(l));
        addr
    }

    async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let want = response().len() * n;
        let mut got = vec![0u8; want];
        s.read_exact(&mut got).await.unwrap();
        got
    }

    #[test]
    fn parse_counts_the_body_and_sees_close() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"),
            Parsed::Request {
                len: 27,
                close: false
            }
        );
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nabc";
        assert_eq!(
            parse(post),
            Parsed::Request {
                len: post.len(),
                close: true
            }
        );
        assert_eq!(parse(&post[..post.len() - 1]), Parsed::Partial);
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\n\r\n"),
            Parsed::Request {
                len: 18,
                close: true
            }
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Bad
        );
    }

    #[tokio::test]
    async fn answers_keep_alive_and_pipelined_requests() {
        let addr = http_server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let one = read_responses(&mut s, 1).await;
        assert!(one.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(one.ends_with(&body()));
        // Three pipelined requests, one with a body, in one write.
        s.write_all(
            b"GET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /d HTTP/1.1\r\n\r\n",
        )
        .await
        .unwrap();
        let three = read_responses(&mut s, 3).await;
        assert_eq!(three, response().repeat(3));
        // Connection: close is answered, then the server closes.
        s.write_all(b"GET /e HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, response().to_vec());
    }

    #[tokio::test]
    async fn tcp_ping_gets_pong_then_close_and_stream_streams() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_tcp(l));

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PI").await.unwrap();
        s.write_all(b"NG").await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, PONG);

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"S").await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        s.read_exact(&mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == b's'));

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }
}
