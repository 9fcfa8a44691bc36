//! Hostile and malformed HTTP requests through the real proxy (issue 13): path tricks against
//! ACL rules, malformed heads, pipelining, and client connections that never finish.
//! Requests are raw bytes over a TcpStream; the backend records the request-target it got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_model::testing::{http, table};
use config_model::{AccessRuleSpec, HttpMatchSpec, TableSpec};
use maille_proxy::testing::client::HttpClient;
use maille_proxy::testing::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const ALLOWED: [u8; 4] = [127, 0, 0, 2];
const PATIENCE: Duration = Duration::from_secs(10);
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
