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
    let svc = t.http_route(5000, "web.a.maille.mesh").unwrap();
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
