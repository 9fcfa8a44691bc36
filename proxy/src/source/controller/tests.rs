//! Tests against a fake controller that follows the API contract: `ETag` on 200, 304 when
//! `If-None-Match` still matches after the wait, JSON body = `TableSpec`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use config_model::testing::{http, table};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{watch, Notify};

use super::*;

struct Fake {
    /// (etag, body)
    current: Mutex<(String, Vec<u8>)>,
    changed: Notify,
    requests: AtomicU64,
    wait: Duration,
}

impl Fake {
    fn set(&self, etag: &str, body: Vec<u8>) {
        *self.current.lock().unwrap() = (etag.to_string(), body);
        self.changed.notify_waiters();
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        assert_eq!(req.uri().path(), "/api/configuration");
        assert!(req.uri().query().unwrap_or("").contains("wait="));
        let tag = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .map(|v| v.to_str().unwrap().to_string());
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.changed.notified();
            let (etag, body) = self.current.lock().unwrap().clone();
            if tag.as_deref() != Some(etag.as_str()) {
                return Response::builder()
                    .status(200)
                    .header(header::ETAG, etag)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
        }
    }
}

async fn serve(fake: Arc<Fake>, listener: tokio::net::TcpListener) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let fake = fake.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fake = fake.clone();
                async move { Ok::<_, Infallible>(fake.answer(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn spec_json(version: u64, endpoint: &str) -> Vec<u8> {
    serde_json::to_vec(&table(version, vec![http("a", "web", 5000, &[endpoint])])).unwrap()
}

async fn start_fake(wait: Duration) -> (Arc<Fake>, SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        current: Mutex::new(("\"v1\"".into(), spec_json(1, "10.0.0.1:80"))),
        changed: Notify::new(),
        requests: AtomicU64::new(0),
        wait,
    });
    let task = tokio::spawn(serve(fake.clone(), listener));
    (fake, addr, task)
}

async fn wait_version(store: &TableStore, version: u64, limit: Duration) {
    tokio::time::timeout(limit, async {
        while store.load().version != version {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "table version {version} not reached, still {}",
            store.load().version
        )
    });
}

#[tokio::test]
async fn a_change_arrives_through_the_long_poll_before_the_wait_ends() {
    // The fake holds requests for 30 s: only a long-poll answer can deliver the change in time.
    let (fake, addr, _task) = start_fake(Duration::from_secs(30)).await;
    let store = TableStore::new();
    let src = Arc::new(ControllerSource::new(&format!("http://{addr}/"), store.clone()).unwrap());
    assert_eq!(src.uri().path(), "/api/configuration");
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn({
        let src = src.clone();
        async move { src.run(stop_rx).await }
    });
    wait_version(&store, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    fake.set("\"v2\"", spec_json(2, "10.0.0.2:80"));
    wait_version(&store, 2, Duration::from_secs(5)).await;
    let t = store.load();
    let svc = &t[t.http_route(5000, "web.a.maille.mesh").unwrap()];
    assert_eq!(svc.endpoints[0].addr.to_string(), "10.0.0.2:80");
    stop.send(true).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn poll_once_follows_the_etag_contract() {
    let (fake, addr, _task) = start_fake(Duration::from_millis(100)).await;
    let store = TableStore::new();
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        store.clone(),
        Duration::from_secs(1),
    )
    .unwrap();
    let mut etag = None;
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(1));
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Unchanged);

    // A bad table is refused, the good one stays, and its tag is remembered.
    fake.set("\"v2\"", spec_json(2, "not-an-address"));
    let e = src.poll_once(&mut etag).await.unwrap_err().to_string();
    assert!(e.contains("endpoints[0].address"), "{e}");
    assert_eq!(etag.as_deref(), Some("\"v2\""));
    assert_eq!(store.load().version, 1);
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Unchanged);

    fake.set("\"v3\"", spec_json(3, "10.0.0.3:80"));
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(3));
}

#[tokio::test]
async fn an_unreachable_controller_is_retried_and_the_table_kept() {
    // Reserve a port, then release it: nothing listens there at first.
    let port = crate::testing::free_tcp_ports(1)[0];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let store = TableStore::new();
    crate::source::apply_json(&store, &spec_json(7, "10.0.0.7:80"), "seed").unwrap();
    let src = Arc::new(ControllerSource::new(&format!("http://{addr}"), store.clone()).unwrap());
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn({
        let src = src.clone();
        async move { src.run(stop_rx).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.load().version,
        7,
        "last good table kept while unreachable"
    );

    // The controller comes up on that port: the proxy gets its table on a later retry.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = Arc::new(Fake {
        current: Mutex::new(("\"v8\"".into(), spec_json(8, "10.0.0.8:80"))),
        changed: Notify::new(),
        requests: AtomicU64::new(0),
        wait: Duration::from_secs(30),
    });
    let _task = tokio::spawn(serve(fake.clone(), listener));
    wait_version(&store, 8, Duration::from_secs(15)).await;
    stop.send(true).unwrap();
    run.await.unwrap();
}

#[test]
fn bad_urls_are_refused_with_the_reason() {
    let store = TableStore::new();
    let e = ControllerSource::new("maille-controller:9000", store.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("maille-controller:9000"), "{e}");
    let e = ControllerSource::new("https://c:9000", store)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("https"), "{e}");
}

/// A hostile controller on raw sockets: accepts connections and lets `answer` write whatever
/// it likes on each. Returns its address and the number of connections accepted.
async fn start_raw<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(answer(stream));
        }
    });
    (addr, accepted)
}

/// Reads a request head (up to the blank line), so the answer follows a whole request.
async fn read_head(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
}

#[tokio::test]
async fn an_endless_answer_is_refused_once_past_the_bound_without_buffering_it() {
    use tokio::io::AsyncWriteExt;
    let written = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _) = start_raw({
        let written = written.clone();
        move |mut stream| {
            let (written, done_tx) = (written.clone(), done_tx.clone());
            async move {
                read_head(&mut stream).await;
                let head = "HTTP/1.1 200 OK\r\nETag: \"big\"\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                // Chunks of 64 KiB for as long as the proxy reads (at most 1 GiB).
                let chunk = [b'['; 64 << 10];
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                for _ in 0..(1 << 14) {
                    if stream.write_all(&frame).await.is_err() {
                        break;
                    }
                    written.fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
                let _ = done_tx.send(());
            }
        }
    })
    .await;
    let store = TableStore::new();
    crate::source::apply_json(&store, &spec_json(5, "10.0.0.5:80"), "seed").unwrap();
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        store.clone(),
        Duration::from_secs(1),
    )
    .unwrap()
    .max_table_bytes(1 << 20);
    let mut etag = None;
    let e = src.poll_once(&mut etag).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit: 1048576, .. }), "{e}");
    assert!(
        e.to_string().contains("--controller-max-table-bytes"),
        "{e}"
    );
    // The proxy dropped the connection: the controller's writes fail soon after the bound,
    // long before its 1 GiB are out.
    tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .expect("the proxy kept reading past the bound");
    let sent = written.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "{sent} bytes were read before refusing");
    assert_eq!(store.load().version, 5, "the last good table stays");
}

#[tokio::test]
async fn a_declared_length_over_the_bound_is_refused_before_the_body() {
    use tokio::io::AsyncWriteExt;
    let (addr, _) = start_raw(|mut stream| async move {
        read_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\nETag: \"huge\"\r\nContent-Length: 536870912\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        // No body at all: only the declared length can refuse it in time.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        TableStore::new(),
        Duration::from_secs(1),
    )
    .unwrap()
    .max_table_bytes(1 << 20);
    let e = tokio::time::timeout(Duration::from_secs(5), src.poll_once(&mut None))
        .await
        .expect("waited for a body the bound already refuses")
        .unwrap_err()
        .to_string();
    assert!(e.contains("Content-Length 536870912"), "{e}");
}

/// Runs `src` for `period` and returns how many connections/requests the controller saw.
async fn requests_during(src: ControllerSource, period: Duration, seen: &AtomicU64) -> u64 {
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn(async move { src.run(stop_rx).await });
    tokio::time::sleep(period).await;
    stop.send(true).unwrap();
    run.await.unwrap();
    seen.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_controller_that_ignores_etags_is_asked_with_growing_delays() {
    use tokio::io::AsyncWriteExt;
    let body = spec_json(4, "10.0.0.4:80");
    let requests = Arc::new(AtomicU64::new(0));
    let (addr, _) = start_raw({
        let requests = requests.clone();
        move |mut stream| {
            let (body, requests) = (body.clone(), requests.clone());
            async move {
                // Keep-alive: every request on the connection gets the same table, no ETag.
                loop {
                    read_head(&mut stream).await;
                    requests.fetch_add(1, Ordering::Relaxed);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let store = TableStore::new();
    let src = ControllerSource::new(&format!("http://{addr}"), store.clone()).unwrap();
    // Delays of about 0.1, 0.2, 0.4, 0.8 s: about 5 requests in 2 s (hundreds without them).
    let n = requests_during(src, Duration::from_secs(2), &requests).await;
    assert!((2..=10).contains(&n), "{n} requests in 2 s");
    assert_eq!(store.load().version, 4, "the answer's table is still used");
}

#[tokio::test]
async fn repeated_refusals_are_asked_again_with_growing_delays() {
    use tokio::io::AsyncWriteExt;
    let body = spec_json(9, "not-an-address");
    let requests = Arc::new(AtomicU64::new(0));
    let (addr, _) = start_raw({
        let requests = requests.clone();
        move |mut stream| {
            let (body, requests) = (body.clone(), requests.clone());
            async move {
                loop {
                    read_head(&mut stream).await;
                    // A new ETag every time, and every table is invalid.
                    let n = requests.fetch_add(1, Ordering::Relaxed);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nETag: \"bad-{n}\"\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let store = TableStore::new();
    crate::source::apply_json(&store, &spec_json(3, "10.0.0.3:80"), "seed").unwrap();
    let src = ControllerSource::new(&format!("http://{addr}"), store.clone()).unwrap();
    let n = requests_during(src, Duration::from_secs(2), &requests).await;
    assert!((2..=10).contains(&n), "{n} requests in 2 s");
    assert_eq!(store.load().version, 3, "the last good table stays");
}

#[test]
fn identical_failures_are_logged_once_per_interval() {
    let mut log = FailureLog::new(Duration::from_secs(60));
    let t0 = Instant::now();
    assert_eq!(log.failed("refused: x", t0), Some(0));
    for i in 1..=100 {
        assert_eq!(
            log.failed("refused: x", t0 + Duration::from_millis(i * 100)),
            None
        );
    }
    // Another failure is news: logged at once.
    assert_eq!(
        log.failed("connection refused", t0 + Duration::from_secs(11)),
        Some(100)
    );
    assert_eq!(
        log.failed("connection refused", t0 + Duration::from_secs(12)),
        None
    );
    // The same one, an interval later: logged again, with how often it repeated meanwhile.
    assert_eq!(
        log.failed("connection refused", t0 + Duration::from_secs(72)),
        Some(1)
    );
    assert!(log.recovered());
    assert!(!log.recovered(), "nothing to report twice");
    assert_eq!(
        log.failed("connection refused", t0 + Duration::from_secs(73)),
        Some(0)
    );
}

#[test]
fn backoff_grows_with_jitter_up_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut nominal = Duration::from_millis(100);
    for _ in 0..12 {
        let d = b.next_delay();
        assert!(
            d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2).min(Duration::from_secs(10)),
            "{d:?} vs {nominal:?}"
        );
        nominal = (nominal * 2).min(Duration::from_secs(10));
    }
    assert!(b.next_delay() <= Duration::from_secs(10));
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(120));
}

async fn fake_at(etag: &str, version: u64, endpoint: &str) -> (Arc<Fake>, SocketAddr) {
    let (fake, addr, _task) = start_fake(Duration::from_secs(30)).await;
    fake.set(etag, spec_json(version, endpoint));
    (fake, addr)
}

#[tokio::test]
async fn several_urls_fail_over_to_a_replica_that_answers() {
    // The first replica is down (nothing listens on its port), the second serves.
    let dead = crate::testing::free_tcp_ports(1)[0];
    let (_fake, addr) = fake_at("\"5\"", 5, "10.0.0.5:80").await;
    let store = TableStore::new();
    let src = Arc::new(
        ControllerSource::new(
            &format!("http://127.0.0.1:{dead}, http://{addr}/"),
            store.clone(),
        )
        .unwrap(),
    );
    assert_eq!(src.uris().len(), 2);
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn({
        let src = src.clone();
        async move { src.run(stop_rx).await }
    });
    wait_version(&store, 5, Duration::from_secs(5)).await;
    assert_eq!(src.uri().port_u16(), Some(addr.port()));
    stop.send(true).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn a_replica_that_lags_behind_does_not_take_the_table_back() {
    let (fake, addr) = fake_at("\"3\"", 3, "10.0.0.3:80").await;
    let store = TableStore::new();
    crate::source::apply_json(&store, &spec_json(5, "10.0.0.5:80"), "another replica").unwrap();
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        store.clone(),
        Duration::from_secs(1),
    )
    .unwrap();
    let mut etag = Some("\"5\"".to_string());
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Older(3));
    assert_eq!(store.load().version, 5, "swung back to an older table");
    assert_eq!(etag.as_deref(), Some("\"5\""));
    // Once it has caught up and gone past, its table is taken.
    fake.set("\"6\"", spec_json(6, "10.0.0.6:80"));
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(6));
}

#[test]
fn a_bad_url_in_a_list_is_named() {
    let e = ControllerSource::new("http://a:9000,b:9000", TableStore::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"b:9000\""), "{e}");
    assert!(ControllerSource::new(" , ", TableStore::new()).is_err());
}

/// One scripted answer of [`start_scripted`]: etag, content type, gzip or not, body.
type Scripted = (&'static str, &'static str, bool, Vec<u8>);

/// A controller answering each request with the next scripted answer (etag, content type,
/// gzip, body), recording each request's `If-None-Match`, `Accept` and `Accept-Encoding`.
async fn start_scripted(
    script: Vec<Scripted>,
) -> (SocketAddr, Arc<Mutex<Vec<[Option<String>; 4]>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (log, script) = (log.clone(), script.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let h = |n: header::HeaderName| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    log.lock().unwrap().push([
                        h(header::IF_NONE_MATCH),
                        h(header::ACCEPT),
                        h(header::ACCEPT_ENCODING),
                        h(header::HeaderName::from_static(ORIGIN_HEADER)),
                    ]);
                    let (etag, content_type, gzip, body) =
                        script.lock().unwrap().pop_front().expect("script ended");
                    let mut resp = Response::builder()
                        .header(ORIGIN_HEADER, "c1")
                        .header(header::ETAG, etag)
                        .header(header::CONTENT_TYPE, content_type);
                    if gzip {
                        resp = resp.header(header::CONTENT_ENCODING, "gzip");
                    }
                    let resp = resp.body(Full::new(Bytes::from(body))).unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn delta_json(base: u64, version: u64, changed: Vec<config_model::ServiceSpec>) -> Vec<u8> {
    serde_json::to_vec(&config_model::TableDelta {
        schema_version: config_model::SCHEMA_VERSION,
        base_version: base,
        version,
        changed,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn gzip_tables_and_deltas_are_applied_and_a_delta_that_does_not_fit_asks_for_the_table() {
    const DELTA: &str = config_model::DELTA_MEDIA_TYPE;
    let json = "application/json";
    let (addr, seen) = start_scripted(vec![
        ("\"1\"", json, true, gzip(&spec_json(1, "10.0.0.1:80"))),
        (
            "\"2\"",
            DELTA,
            false,
            delta_json(
                1,
                2,
                vec![
                    http("a", "web", 5000, &["10.0.0.2:80"]),
                    http("a", "cart", 5000, &["10.0.0.3:80"]),
                ],
            ),
        ),
        // From a version the proxy does not hold.
        ("\"9\"", DELTA, false, delta_json(8, 9, vec![])),
        // A gzip bomb: small on the wire, past the bound once inflated.
        ("\"10\"", json, true, gzip(&vec![b' '; 1 << 20])),
        // A delta to a table that is refused.
        (
            "\"11\"",
            DELTA,
            true,
            gzip(&delta_json(
                2,
                11,
                vec![http("a", "web", 5000, &["10.0.0.9"])],
            )),
        ),
    ])
    .await;
    let store = TableStore::new();
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        store.clone(),
        Duration::from_secs(1),
    )
    .unwrap()
    .max_table_bytes(64 << 10);
    let mut etag = None;
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(1));
    // The table came gzip: an upgrade still hands over its JSON, as it was.
    assert_eq!(
        store.json().as_deref(),
        Some(&spec_json(1, "10.0.0.1:80")[..])
    );
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Delta(2));
    {
        let t = store.load();
        assert_eq!(t.version, 2);
        let web = &t[t.http_route(5000, "web.a.maille.mesh").unwrap()];
        assert_eq!(web.endpoints[0].addr.to_string(), "10.0.0.2:80");
        let cart = &t[t.http_route(5000, "cart.a.maille.mesh").unwrap()];
        assert_eq!(cart.endpoints[0].addr.to_string(), "10.0.0.3:80");
    }
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Resync);
    assert_eq!(etag, None);
    let e = src.poll_once(&mut etag).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit: 65536, .. }), "{e}");
    etag = Some("\"2\"".into());
    let e = src.poll_once(&mut etag).await.unwrap_err().to_string();
    assert!(e.contains("a/web:80") && e.contains("10.0.0.9"), "{e}");
    assert_eq!(store.load().version, 2);
    assert!(store
        .load()
        .http_route(5000, "cart.a.maille.mesh")
        .is_some());

    let seen = seen.lock().unwrap().clone();
    let tags: Vec<_> = seen.iter().map(|s| s[0].as_deref()).collect();
    assert_eq!(
        tags,
        [None, Some("\"1\""), Some("\"2\""), None, Some("\"2\"")]
    );
    for [tag, accept, encoding, origin] in &seen {
        assert!(accept.as_deref().unwrap().contains(DELTA), "{accept:?}");
        assert_eq!(encoding.as_deref(), Some("gzip"));
        // The controller process is named back with every version held.
        assert_eq!(origin.is_some(), tag.is_some());
        assert!(origin.as_deref().is_none_or(|o| o == "c1"));
    }
}

#[tokio::test]
async fn without_deltas_and_gzip_only_whole_plain_tables_are_asked_for() {
    let json = "application/json";
    let (addr, seen) = start_scripted(vec![
        ("\"1\"", json, false, spec_json(1, "10.0.0.1:80")),
        ("\"2\"", json, false, spec_json(2, "10.0.0.2:80")),
    ])
    .await;
    let store = TableStore::new();
    let src = ControllerSource::with_wait(
        &format!("http://{addr}"),
        store.clone(),
        Duration::from_secs(1),
    )
    .unwrap()
    .deltas(false)
    .gzip(false);
    let mut etag = None;
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(1));
    assert_eq!(src.poll_once(&mut etag).await.unwrap(), Poll::Swapped(2));
    assert_eq!(
        store.json().as_deref(),
        Some(&spec_json(2, "10.0.0.2:80")[..])
    );
    let t = store.load();
    let web = &t[t.http_route(5000, "web.a.maille.mesh").unwrap()];
    assert_eq!(web.endpoints[0].addr.to_string(), "10.0.0.2:80");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for [_, accept, encoding, _] in &seen {
        assert_eq!(accept.as_deref(), Some(json));
        assert_eq!(encoding.as_deref(), None);
    }
    assert_eq!(seen[1][0].as_deref(), Some("\"1\""));
}
