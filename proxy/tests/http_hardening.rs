//! Hostile and malformed HTTP requests through the real proxy (issue 13): path tricks against
//! ACL rules, malformed heads, pipelining, and client connections that never finish.
//! Requests are raw bytes over a TcpStream; the backend records the request-target it got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_model::testing::{http, table};
use config_model::{AccessRuleSpec, HttpMatchSpec, TableSpec};
use maille_proxy::testing::client::HttpClient;
use maille_proxy::testing::{metric, TestProxy, TestProxyOptions, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const ALLOWED: [u8; 4] = [127, 0, 0, 2];
const WEB: &str = "web.shop.maille.mesh";

/// A raw HTTP/1.1 backend that records the request line of every request it gets and answers
/// `200` with the request-target as body.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_recorded(conn, log.clone()));
            }
        });
        Recorder { addr, seen, task }
    }

    /// The request lines received so far (`GET /path HTTP/1.1`).
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_recorded(mut conn: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        // One head at a time (no request here has a body); at most 64 KiB.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 65536 {
                return;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let line = head.lines().next().unwrap_or_default().to_string();
        let target = line.split(' ').nth(1).unwrap_or_default().to_string();
        log.lock().unwrap().push(line);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: recorder\r\n\r\n{target}",
            target.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Sends `raw` from `src` and reads until the proxy closes (or `PATIENCE` passes).
async fn send_raw(src: [u8; 4], to: SocketAddr, raw: &[u8]) -> String {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let mut conn = tokio::time::timeout(PATIENCE, sock.connect(to))
        .await
        .expect("connect in time")
        .expect("connect");
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Status and body of the first response in `text` (0 when there is none).
fn status_and_body(text: &str) -> (u16, String) {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text.to_string());
    };
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// `GET target` from `src` with `Host: web...` and `Connection: close`.
async fn get(src: [u8; 4], to: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let raw = format!("{method} {target} HTTP/1.1\r\nhost: {WEB}\r\nconnection: close\r\n\r\n");
    status_and_body(&send_raw(src, to, raw.as_bytes()).await)
}

/// Service `web` on the recorder; in ACL mode, 127.0.0.2 may only `GET /api(/.*)?`.
fn guarded(port: u16, backend: &Recorder) -> TableSpec {
    let mut web = http("shop", "web", port, &[&backend.addr.to_string()]);
    web.access = vec![AccessRuleSpec {
        name: "shop/api-only".into(),
        sources: vec!["127.0.0.2".into()],
        identities: vec![],
        http: Some(vec![HttpMatchSpec {
            path_regex: Some("/api(/.*)?".into()),
            methods: vec!["GET".into()],
            ..Default::default()
        }]),
    }];
    let mut t = table(1, vec![web]);
    t.acl = true;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_path_rules_see_the_normalised_path_and_the_upstream_gets_it() {
    let rec = Recorder::start().await;
    let proxy = TestProxy::start(|p| guarded(p.http[0], &rec));
    let to = proxy.http[0];

    // Allowed, and what the backend gets is the normalised path with the untouched query.
    assert_eq!(
        get(ALLOWED, to, "GET", "/api/x").await,
        (200, "/api/x".into())
    );
    assert_eq!(
        get(ALLOWED, to, "GET", "/api/./v1//x/../y?q=/../admin&p=%2e").await,
        (200, "/api/v1/y?q=/../admin&p=%2e".into())
    );
    assert_eq!(
        get(ALLOWED, to, "GET", "/%61pi/%7euser").await,
        (200, "/api/~user".into())
    );
    let allowed_seen = rec.seen().len();
    assert_eq!(allowed_seen, 3);

    // Each attack form of the issue: normalised to /admin and denied, or refused as ambiguous.
    for (target, want) in [
        ("/api/../admin", 403),
        ("/api/%2e%2e/admin", 403),
        ("/api/%2E%2E/admin", 403),
        ("/api/.%2e/admin", 403),
        ("/api//../../admin", 403),
        ("http://web.shop.maille.mesh/api/../admin", 403),
        ("/api/..%2fadmin", 400),
        ("/api/..%2Fadmin", 400),
        ("/api/..%5cadmin", 400),
        ("/api/..\\admin", 400),
        ("/api/..;/admin", 400),
        ("/api/..;jsessionid=1/admin", 400),
        ("/api/%00/../../admin", 400),
        ("/api/%zz", 400),
    ] {
        let (status, body) = get(ALLOWED, to, "GET", target).await;
        assert_eq!(status, want, "{target}: {body}");
        if want == 400 {
            assert!(
                body.starts_with("maille: bad request: "),
                "{target}: {body}"
            );
        }
    }
    // Methods match exactly: `get` is not `GET`.
    assert_eq!(get(ALLOWED, to, "get", "/api/x").await.0, 403);

    // h2c: the same normalisation.
    let h2 = HttpClient::h2c();
    let r = h2.get(to, WEB, "/api/%2e%2e/admin").await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h2.get(to, WEB, "/api/../admin").await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h2.get(to, WEB, "/api/..;/admin").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // None of the refused requests reached the backend.
    let seen = rec.seen();
    assert_eq!(
        seen,
        [
            "GET /api/x HTTP/1.1",
            "GET /api/v1/y?q=/../admin&p=%2e HTTP/1.1",
            "GET /api/~user HTTP/1.1",
        ],
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_absolute_form_forward_the_normalised_path() {
    let rec = Recorder::start().await;
    let proxy = TestProxy::start(|p| {
        table(
            1,
            vec![http("shop", "web", p.http[0], &[&rec.addr.to_string()])],
        )
    });
    let to = proxy.http[0];
    let r = HttpClient::h2c()
        .get(to, WEB, "/a/./b/%2e%2e/c?x=1")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "/a/c?x=1"));
    // Absolute form: routed by the target's authority, sent upstream in origin form.
    let raw =
        format!("GET http://{WEB}/a/../b HTTP/1.1\r\nhost: {WEB}\r\nconnection: close\r\n\r\n");
    let (status, body) = status_and_body(&send_raw([127, 0, 0, 1], to, raw.as_bytes()).await);
    assert_eq!((status, body.as_str()), (200, "/b"));
    assert_eq!(rec.seen(), ["GET /a/c?x=1 HTTP/1.1", "GET /b HTTP/1.1"]);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_and_never_reach_the_backend() {
    let rec = Recorder::start().await;
    let proxy = TestProxy::start(|p| {
        table(
            1,
            vec![http("shop", "web", p.http[0], &[&rec.addr.to_string()])],
        )
    });
    let to = proxy.http[0];
    let local = [127, 0, 0, 1];
    for (name, raw, want) in [
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n".to_string(), 400),
        ("HTTP/1.1 without Host", "GET / HTTP/1.1\r\nconnection: close\r\n\r\n".into(), 400),
        ("HTTP/0.9", "GET /\r\n".into(), 400),
        ("non-numeric port", "GET / HTTP/1.1\r\nhost: name:abc\r\n\r\n".into(), 400),
        ("port too large", format!("GET / HTTP/1.1\r\nhost: {WEB}:70000\r\n\r\n"), 400),
        ("path in Host", format!("GET / HTTP/1.1\r\nhost: {WEB}/x\r\n\r\n"), 400),
        ("userinfo in Host", format!("GET / HTTP/1.1\r\nhost: u@{WEB}\r\n\r\n"), 400),
        ("two Hosts", format!("GET / HTTP/1.1\r\nhost: {WEB}\r\nhost: {WEB}\r\n\r\n"), 400),
        (
            "differing Content-Lengths",
            format!("POST / HTTP/1.1\r\nhost: {WEB}\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
            400,
        ),
        (
            "equal Content-Lengths",
            format!("POST / HTTP/1.1\r\nhost: {WEB}\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc"),
            400,
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\nhost: {WEB}\r\ncontent-length: 3, 3\r\n\r\nabc"),
            400,
        ),
    ] {
        let text = send_raw(local, to, raw.as_bytes()).await;
        let (status, body) = status_and_body(&text);
        assert_eq!(status, want, "{name}: {text:?}");
        // Pingora refuses some heads itself (two Hosts, userinfo, differing lengths) with an
        // empty 400; the proxy's own refusals say why.
        if text.contains("Server: maille-proxy") {
            assert!(body.starts_with("maille: bad request: "), "{name}: {body}");
        }
    }
    assert_eq!(rec.seen(), Vec::<String>::new(), "nothing was forwarded");
    // Content-Length next to Transfer-Encoding: chunked wins (RFC 9112 section 6.3), the length
    // is not forwarded, and the connection is closed after the answer.
    let both = format!(
        "POST /both HTTP/1.1\r\nhost: {WEB}\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let text = send_raw(local, to, both.as_bytes()).await;
    assert_eq!(status_and_body(&text), (200, "/both".into()), "{text:?}");
    assert!(text.contains("Connection: close"), "{text:?}");
    // (The recorder reads no bodies: the chunked body shows up after the request line.)
    assert_eq!(rec.seen()[0], "POST /both HTTP/1.1");
    // A well-formed one still passes.
    let ok = format!("GET /ok HTTP/1.1\r\nhost: {WEB}:80\r\nconnection: close\r\n\r\n");
    assert_eq!(
        status_and_body(&send_raw(local, to, ok.as_bytes()).await),
        (200, "/ok".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let rec = Recorder::start().await;
    let proxy = TestProxy::start(|p| {
        table(
            1,
            vec![http("shop", "web", p.http[0], &[&rec.addr.to_string()])],
        )
    });
    let raw = format!(
        "GET /one HTTP/1.1\r\nhost: {WEB}\r\n\r\nGET /two HTTP/1.1\r\nhost: {WEB}\r\n\r\nGET /three HTTP/1.1\r\nhost: {WEB}\r\nconnection: close\r\n\r\n"
    );
    let text = send_raw([127, 0, 0, 1], proxy.http[0], raw.as_bytes()).await;
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["/one", "/two", "/three"], "{text:?}");
}

/// A proxy with small connection limits in front of the recorder.
async fn limited(configure: fn(&mut maille_proxy::Config)) -> (Recorder, TestProxy) {
    let rec = Recorder::start().await;
    let proxy = TestProxy::start_with(TestProxyOptions {
        configure,
        ..TestProxyOptions::default()
    });
    proxy.set_table(&table(
        1,
        vec![http(
            "shop",
            "web",
            proxy.ports.http[0],
            &[&rec.addr.to_string()],
        )],
    ));
    (rec, proxy)
}

/// Reads until EOF or an error; `true` when the proxy closed the connection within `PATIENCE`.
async fn closed_by_proxy(conn: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// One keep-alive request on `conn`, its response read by Content-Length; returns the body.
async fn keepalive_request(conn: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {WEB}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return body.to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_clients_are_closed_after_the_header_timeout() {
    let (_rec, proxy) = limited(|c| {
        c.http_header_timeout = Duration::from_millis(300);
    })
    .await;
    let to = proxy.http[0];
    let before = metric(
        "maille_proxy_http_client_timeouts_total",
        &[("phase", "header")],
    );

    // Silent: connects and sends nothing (Pingora alone waits forever for the h2c preface).
    let mut silent = TcpStream::connect(to).await.unwrap();
    assert!(
        closed_by_proxy(&mut silent).await,
        "silent connection still open"
    );

    // Slowloris: a header byte every 50 ms, each read well within any per-read timeout. The
    // whole header is never due, so only the header deadline can close it; 200 bytes (10 s)
    // bound the loop.
    let mut slow = TcpStream::connect(to).await.unwrap();
    slow.write_all(format!("GET / HTTP/1.1\r\nhost: {WEB}\r\nx-pad: ").as_bytes())
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // An error answer (408/400) before closing counts too.
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "slowloris connection still open after 10 s");
    let after = metric(
        "maille_proxy_http_client_timeouts_total",
        &[("phase", "header")],
    );
    assert!(after >= before + 2.0, "{before} -> {after}");

    // A prompt client on the same proxy is served.
    let mut ok = TcpStream::connect(to).await.unwrap();
    assert_eq!(keepalive_request(&mut ok, "/fine").await, "/fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_after_the_idle_timeout() {
    let (rec, proxy) = limited(|c| {
        c.http_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let before = metric(
        "maille_proxy_http_client_timeouts_total",
        &[("phase", "idle")],
    );
    let mut conn = TcpStream::connect(proxy.http[0]).await.unwrap();
    assert_eq!(keepalive_request(&mut conn, "/a").await, "/a");
    // Reused while it is not idle too long...
    assert_eq!(keepalive_request(&mut conn, "/b").await, "/b");
    // ...then left alone: closed by the proxy.
    assert!(
        closed_by_proxy(&mut conn).await,
        "idle connection still open"
    );
    let after = metric(
        "maille_proxy_http_client_timeouts_total",
        &[("phase", "idle")],
    );
    assert!(after > before, "{before} -> {after}");
    assert_eq!(rec.seen(), ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]);

    // h2c: a connection that sends the preface and then no stream is closed too.
    let mut h2 = TcpStream::connect(proxy.http[0]).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_by_proxy(&mut h2).await,
        "idle h2c connection still open"
    );
    // And an h2c client with a request is served as before.
    let r = HttpClient::h2c()
        .get(proxy.http[0], WEB, "/h2")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "/h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_are_refused_and_counted() {
    let (_rec, proxy) = limited(|c| {
        c.http_max_connections = 2;
    })
    .await;
    let to = proxy.http[0];
    let before = metric("maille_proxy_http_connections_refused_total", &[]);
    let mut first = TcpStream::connect(to).await.unwrap();
    let mut second = TcpStream::connect(to).await.unwrap();
    assert_eq!(keepalive_request(&mut first, "/1").await, "/1");
    assert_eq!(keepalive_request(&mut second, "/2").await, "/2");

    // The third, while two are open: closed without an answer.
    let mut third = TcpStream::connect(to).await.unwrap();
    let _ = third
        .write_all(format!("GET /3 HTTP/1.1\r\nhost: {WEB}\r\n\r\n").as_bytes())
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, third.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "third connection neither served nor closed");
    assert!(got.is_empty(), "third connection answered: {got:?}");
    assert_eq!(
        metric("maille_proxy_http_connections_refused_total", &[]),
        before + 1.0
    );

    // One closes: its slot is free again (released when the proxy sees the close).
    drop(first);
    let mut served = false;
    for _ in 0..100 {
        let mut again = TcpStream::connect(to).await.unwrap();
        let req = format!("GET /4 HTTP/1.1\r\nhost: {WEB}\r\nconnection: close\r\n\r\n");
        let _ = again.write_all(req.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, again.read_to_end(&mut out)).await;
        if status_and_body(&String::from_utf8_lossy(&out)).0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no slot came free after a connection closed");
    assert_eq!(keepalive_request(&mut second, "/5").await, "/5");
}

/// Fuzzing of the request head at the real proxy (issue 13, "Also"): mutated and random heads,
/// sent and half-closed, must each get an HTTP/1 answer or a close within `PATIENCE`, and the
/// proxy must serve a normal request afterwards. Seeded, so a failure names a case that can be
/// replayed; `MAILLE_FUZZ_CASES` runs more cases than CI's 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_and_random_request_heads_are_answered_or_closed() {
    use rand::{Rng, SeedableRng};

    let (_rec, proxy) = limited(|c| {
        c.http_header_timeout = Duration::from_secs(2);
        c.http_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let to = proxy.http[0];
    let seeds: [&[u8]; 4] = [
        b"GET /api/x?q=1 HTTP/1.1\r\nhost: web.shop.maille.mesh\r\n\r\n",
        b"POST /a HTTP/1.1\r\nhost: web.shop.maille.mesh\r\ncontent-length: 3\r\n\r\nabc",
        b"GET http://web.shop.maille.mesh/a/../b HTTP/1.1\r\nhost: web.shop.maille.mesh\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    let bytes: &[u8] = b"\r\n\0: %/.\\;\t\xff?#@";
    let snippets: [&[u8]; 8] = [
        b"%2e%2e",
        b"/..",
        b"\r\n",
        b"content-length: 5\r\n",
        b"content-length: 3, 4\r\n",
        b"host: x:abc\r\n",
        b"transfer-encoding: chunked\r\n",
        b"%2F%5c%00",
    ];
    let cases: u64 = std::env::var("MAILLE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (mut answered, mut served) = (0u64, 0u64);
    for case in 0..cases {
        let mut rng = rand::rngs::StdRng::seed_from_u64(case);
        let raw: Vec<u8> = if rng.random_range(0..5) == 0 {
            let len = rng.random_range(0..512);
            (0..len).map(|_| rng.random::<u8>()).collect()
        } else {
            let mut raw = seeds[rng.random_range(0..seeds.len())].to_vec();
            for _ in 0..rng.random_range(1..5) {
                let at = rng.random_range(0..=raw.len());
                match rng.random_range(0..6) {
                    0 if at < raw.len() => raw[at] = bytes[rng.random_range(0..bytes.len())],
                    1 => raw.insert(at, bytes[rng.random_range(0..bytes.len())]),
                    2 => {
                        let s = snippets[rng.random_range(0..snippets.len())];
                        raw.splice(at..at, s.iter().copied());
                    }
                    3 => {
                        let end = rng.random_range(at..=raw.len());
                        raw.drain(at..end);
                    }
                    4 => raw.truncate(at),
                    _ => {
                        raw.splice(at..at, std::iter::repeat_n(b'a', 9000));
                    }
                }
            }
            raw
        };
        let mut conn = TcpStream::connect(to).await.unwrap();
        // The proxy may close before reading everything: a failed write is an answer too.
        let _ = conn.write_all(&raw).await;
        let _ = conn.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "case {case}: neither answered nor closed within {PATIENCE:?}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        );
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1."),
            "case {case}: not an HTTP/1 answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(300)])
        );
        answered += u64::from(!out.is_empty());
        served += u64::from(out.starts_with(b"HTTP/1.1 200"));
    }
    eprintln!("{answered} answered, {served} served of {cases}");
    // The cases reach the proxy's parser and, some of them, the backend: the harness is live.
    assert!(
        answered > cases / 4 && served > 0,
        "{answered} answered, {served} served of {cases}"
    );
    // Still serving: a normal request reaches the backend. A fuzzed request may have left a
    // pooled upstream connection broken and the first answer be the proxy's own (seen once in
    // a full-suite run: an empty body); so a few fresh tries, each answer kept for the message.
    let mut answers = Vec::new();
    for _ in 0..5 {
        let mut conn = TcpStream::connect(to).await.unwrap();
        let body = keepalive_request(&mut conn, "/still-serving").await;
        if body == "/still-serving" {
            return;
        }
        answers.push(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no normal request served after the fuzz cases; answers: {answers:?}");
}
