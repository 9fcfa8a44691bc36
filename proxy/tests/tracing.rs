//! Tracing end to end: a real proxy exporting to a real OTLP receiver written here (HTTP/1.1
//! protobuf and gRPC on one port, decoded with the official OpenTelemetry protobuf types), real
//! backends that echo the trace headers they received, and the real binary for the `OTEL_*`
//! environment variables.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use config_model::testing::{http, service, table};
use config_model::TrafficType;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use maille_proxy::config::{Config, OtlpProtocol};
use maille_proxy::tcp::testing::{connect, echo};
use maille_proxy::testing::{
    client, free_tcp_ports, wait_listening, HttpBackend, TcpBackend, TestProxy, TestProxyOptions,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// Upper bound on any wait, so that a bug fails the test instead of hanging it: twice the
/// suite's usual patience, since a span reaches the collector only after the exporter's batch
/// delay and, in the binary tests, the proxy's start.
const PATIENCE: Duration = maille_proxy::testing::PATIENCE.saturating_mul(2);

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Got {
    service_name: String,
    /// The instrumentation scope's name.
    scope: String,
    span: Span,
    /// `http/protobuf` or `grpc`.
    via: &'static str,
}

impl Got {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP receiver on 127.0.0.1: `POST /v1/traces` (protobuf) and the gRPC
/// `TraceService/Export` (h2c), both answering success.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(body: &[u8], via: &'static str, out: &Mutex<Vec<Got>>) -> bool {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return false;
    };
    let mut out = out.lock().unwrap();
    for rs in req.resource_spans {
        let service_name = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for span in ss.spans {
                out.push(Got {
                    service_name: service_name.clone(),
                    scope: scope.clone(),
                    span,
                    via,
                });
            }
        }
    }
    true
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn receive(
    req: hyper::Request<hyper::body::Incoming>,
    spans: Arc<Mutex<Vec<Got>>>,
) -> Result<hyper::Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_string();
    let parts_gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if grpc && path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
        // gRPC framing: 1 byte compressed flag, 4 bytes length, the message.
        let mut b = body.clone();
        let ok = b.len() >= 5 && b.get_u8() == 0 && {
            let n = b.get_u32() as usize;
            n <= b.len() && decode(&b[..n], "grpc", &spans)
        };
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", if ok { "0" } else { "3" }.parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures::stream::iter(frames));
        return Ok(hyper::Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(body))
            .unwrap());
    }
    let gzip = parts_gzip;
    let status = if path == "/v1/traces" && gzip {
        let mut plain = Vec::new();
        let ok =
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
                .is_ok();
        if ok && decode(&plain, "http/protobuf+gzip", &spans) {
            200
        } else {
            400
        }
    } else if path == "/v1/traces" && decode(&body, "http/protobuf", &spans) {
        200
    } else {
        400
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(BodyExt::boxed(Full::new(Bytes::new())))
        .unwrap())
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let shared = spans.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((io, _)) = listener.accept().await {
                let spans = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| receive(req, spans.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Collector { addr, spans, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span matches `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let start = Instant::now();
        loop {
            if let Some(g) = self.all().into_iter().find(|g| pred(g)) {
                return g;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no span {what} after {PATIENCE:?}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_trace(&self, trace: &str) -> Got {
        self.wait_for(&format!("of trace {trace}"), |g| g.trace_id() == trace)
            .await
    }
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (addr, task)
}

/// `GET path` with `Host: host` and these extra headers; status and body.
async fn send(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        PATIENCE,
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("answer in time")
    .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of `name:` in a backend `/echo` body (one `name: value` line per header).
fn echoed(body: &str, name: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_string)
}

/// The trace and parent id of a `traceparent` of version 00 with these `flags`; fails the
/// test when it is not one.
fn valid_traceparent(tp: &str, flags: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && parts[3] == flags,
        "not a valid traceparent with flags {flags}: {tp:?}"
    );
    (parts[1].to_string(), parts[2].to_string())
}

/// A proxy exporting to `collector` with a short batch delay.
fn traced_proxy(endpoint: String, edit: impl FnOnce(&mut Config)) -> TestProxy {
    TestProxy::start_with_config(TestProxyOptions::default(), move |c| {
        c.otlp_endpoint = Some(endpoint);
        c.trace_batch_delay = Some(Duration::from_millis(50));
        edit(c);
    })
}

fn web_table(proxy: &TestProxy, web: &HttpBackend) {
    let spec = table(
        1,
        vec![http("shop", "web", proxy.ports.http[0], &[&web.addr_str()])],
    );
    proxy.set_table(&spec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_is_continued_and_the_upstream_gets_the_proxy_span_as_parent() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |_| {});
    web_table(&proxy, &web);
    let host = "web.shop.maille.mesh";
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, body) = send(
        proxy.http[0],
        host,
        "/echo/a",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=1"),
            ("user-agent", "t/1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = collector.wait_trace(TRACE).await;
    assert_eq!(got.parent_id(), CLIENT_SPAN, "parent is the client's span");
    assert_eq!(
        got.span.trace_state, "vendor=1",
        "the client's tracestate is the span's"
    );
    assert_eq!(got.span.kind, 2, "SERVER");
    assert_eq!(got.service_name, "maille-proxy");
    assert_eq!(got.scope, "maille-proxy");
    assert_eq!(got.span.name, "GET shop/web:80");
    // OTLP span flags: sampled (0x01), whether the parent is remote known (0x100) and true (0x200).
    assert_eq!(got.span.flags, 0x301, "{:#x}", got.span.flags);
    assert!(got.span.end_time_unix_nano >= got.span.start_time_unix_nano);
    assert!(got.span.start_time_unix_nano > 0);
    // The upstream saw the proxy's span as parent, the trace and its state kept.
    let seen = echoed(&body, "traceparent").expect("upstream got a traceparent");
    assert_eq!(seen, format!("00-{TRACE}-{}-01", got.span_id()));
    assert_ne!(got.span_id(), CLIENT_SPAN);
    assert_eq!(echoed(&body, "tracestate").as_deref(), Some("vendor=1"));
    for (key, want) in [
        ("http.request.method", "GET".to_string()),
        ("url.path", "/echo/a".into()),
        ("http.response.status_code", "200".into()),
        ("server.address", host.into()),
        ("server.port", proxy.ports.http[0].to_string()),
        ("client.address", "127.0.0.1".into()),
        ("user_agent.original", "t/1".into()),
        ("network.protocol.version", "1.1".into()),
        ("maille.service", "shop/web:80".into()),
        ("maille.endpoint", web.addr_str()),
        ("maille.retries", "0".into()),
    ] {
        assert_eq!(got.attr(key).as_deref(), Some(want.as_str()), "{key}");
    }
    assert_eq!(got.attr("maille.local_reason"), None);
    assert_eq!(got.via, "http/protobuf");

    // No incoming context: the proxy starts the trace and is the upstream's parent.
    let (_, body) = send(proxy.http[0], host, "/echo/b", &[]).await;
    let seen = echoed(&body, "traceparent").expect("upstream got a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{seen}");
    let root = collector.wait_trace(parts[1]).await;
    assert_eq!(root.span_id(), parts[2]);
    assert!(root.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(root.span.flags, 0x101, "a root: parent not remote");
    assert_eq!(root.span.trace_state, "", "no state without a parent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_and_multi_headers_are_continued_in_their_own_encoding() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |_| {});
    web_table(&proxy, &web);
    let host = "web.shop.maille.mesh";

    let single = "1111111111111111aaaaaaaaaaaaaaaa";
    let b3 = format!("{single}-{CLIENT_SPAN}-1");
    let (_, body) = send(proxy.http[0], host, "/echo", &[("b3", &b3)]).await;
    let got = collector.wait_trace(single).await;
    assert_eq!(got.parent_id(), CLIENT_SPAN);
    assert_eq!(
        echoed(&body, "b3"),
        Some(format!("{single}-{}-1", got.span_id())),
        "{body}"
    );
    assert_eq!(
        echoed(&body, "traceparent"),
        Some(format!("00-{single}-{}-01", got.span_id()))
    );

    let multi = "2222222222222222bbbbbbbbbbbbbbbb";
    let (_, body) = send(
        proxy.http[0],
        host,
        "/echo",
        &[
            ("X-B3-TraceId", multi),
            ("X-B3-SpanId", CLIENT_SPAN),
            ("X-B3-ParentSpanId", "3333333333333333"),
            ("X-B3-Sampled", "1"),
        ],
    )
    .await;
    let got = collector.wait_trace(multi).await;
    assert_eq!(got.parent_id(), CLIENT_SPAN);
    assert_eq!(echoed(&body, "x-b3-traceid").as_deref(), Some(multi));
    assert_eq!(echoed(&body, "x-b3-spanid"), Some(got.span_id()));
    assert_eq!(echoed(&body, "x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(
        echoed(&body, "x-b3-parentspanid"),
        None,
        "stale parent removed"
    );
}

/// An endpoint that reads each request's head, keeps it, and closes without answering (an
/// upstream reset, retried on the other endpoint).
async fn resetting_endpoint() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
            });
        }
    });
    (addr, heads)
}

/// The values of every `traceparent` line of a request head or `/echo` body, whatever the case.
fn traceparents(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_carries_one_traceparent_and_the_other_headers_unchanged() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |_| {});
    let host = "web.shop.maille.mesh";
    // Host alone, more headers, and a client's own traceparent (replaced): each attempt is a
    // new copy of the client's request with the proxy's traceparent written in.
    let client_tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let shapes: [&[(&str, &str)]; 3] = [
        &[],
        &[
            ("user-agent", "t/1"),
            ("accept", "*/*"),
            ("accept-encoding", "gzip"),
            ("X-Custom", "v"),
        ],
        &[("traceparent", &client_tp)],
    ];
    for (shape, extra) in shapes.iter().enumerate() {
        // A fresh resetting endpoint each time: the last one may have been ejected.
        let (reset, heads) = resetting_endpoint().await;
        let mut svc = http(
            "shop",
            "web",
            proxy.ports.http[0],
            &[&reset.to_string(), &web.addr_str()],
        );
        svc.options.retry_attempts = Some(2);
        proxy.set_table(&table(shape as u64 + 1, vec![svc]));
        let mut retried = 0;
        for i in 0..12 {
            let before = heads.lock().unwrap().len();
            let (status, body) = send(proxy.http[0], host, "/echo", extra).await;
            assert_eq!(status, 200, "shape {shape}, request {i}: {body}");
            let seen = traceparents(&body);
            assert_eq!(
                seen.len(),
                1,
                "shape {shape}, request {i}: one traceparent: {body}"
            );
            let (trace, span) = valid_traceparent(&seen[0], "01");
            if shape == 2 {
                assert_eq!(trace, TRACE, "the client's trace goes on");
                assert_ne!(span, CLIENT_SPAN, "the proxy's span is the parent");
            }
            let got = collector
                .wait_for("the request's span", |g| g.span_id() == span)
                .await;
            assert_eq!(
                got.trace_id(),
                trace,
                "shape {shape}: the exported span is the parent"
            );
            // The attempt that was reset, if this request's first one was: the same single
            // parent as the attempt that answered.
            let reset_heads: Vec<String> = heads.lock().unwrap()[before..].to_vec();
            for head in &reset_heads {
                assert_eq!(
                    traceparents(head),
                    seen,
                    "shape {shape}, request {i}: {head}"
                );
                // On the wire, names in lower case but for a few common ones (the client sent
                // `host`), values as sent.
                assert!(
                    head.contains("\r\nHost: web.shop.maille.mesh\r\n"),
                    "{head}"
                );
                for (k, v) in extra.iter().filter(|(k, _)| *k != "traceparent") {
                    let line = format!("\r\n{}: {v}\r\n", k.to_ascii_lowercase());
                    assert!(head.contains(&line), "{line:?} in {head}");
                }
                assert!(head.contains("\r\ntraceparent: "), "{head}");
                retried += 1;
            }
        }
        assert!(
            retried > 0,
            "shape {shape}: some first attempts went to the resetting endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_parent_based_with_a_ratio_for_new_traces() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |c| c.trace_sampling_ratio = Some(0.0));
    web_table(&proxy, &web);
    let host = "web.shop.maille.mesh";
    // New traces at ratio 0: not sampled, yet the upstream still gets a valid context, a new
    // trace each time.
    let mut unsampled = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, body) = send(proxy.http[0], host, "/echo", &[]).await;
        assert_eq!(status, 200);
        let tp = echoed(&body, "traceparent").expect("context sent on");
        let (trace, span) = valid_traceparent(&tp, "00");
        assert!(unsampled.insert(trace), "a new trace id per request: {tp}");
        assert_ne!(span, "0000000000000000");
    }
    // A parent that did not sample: followed, and the upstream's parent is the proxy's own
    // (unrecorded) span, a new id in the same trace (W3C: a forwarding participant sends its
    // own parent id), the client's tracestate kept as it came.
    let off = "5555555555555555cccccccccccccccc";
    let mut seen_spans = std::collections::HashSet::new();
    for _ in 0..3 {
        let (_, body) = send(
            proxy.http[0],
            host,
            "/echo",
            &[
                ("traceparent", &format!("00-{off}-{CLIENT_SPAN}-00")),
                ("tracestate", "vendor=1,other=x"),
            ],
        )
        .await;
        let tp = echoed(&body, "traceparent").unwrap();
        let (trace, span) = valid_traceparent(&tp, "00");
        assert_eq!(trace, off, "{tp}");
        assert_ne!(
            span, CLIENT_SPAN,
            "the proxy's span id, not the client's: {tp}"
        );
        assert!(seen_spans.insert(span), "a new span id per request: {tp}");
        assert_eq!(
            echoed(&body, "tracestate").as_deref(),
            Some("vendor=1,other=x")
        );
    }
    // An invalid tracestate does not go on; B3 clients get B3 back, sampling 0.
    let (_, body) = send(
        proxy.http[0],
        host,
        "/echo",
        &[
            ("traceparent", &format!("00-{off}-{CLIENT_SPAN}-00")),
            ("tracestate", "Not A List"),
        ],
    )
    .await;
    assert_eq!(echoed(&body, "tracestate"), None, "{body}");
    let b3_trace = "6666666666666666dddddddddddddddd";
    let (_, body) = send(
        proxy.http[0],
        host,
        "/echo",
        &[("b3", &format!("{b3_trace}-{CLIENT_SPAN}-0"))],
    )
    .await;
    let tp = echoed(&body, "traceparent").unwrap();
    let (trace, span) = valid_traceparent(&tp, "00");
    assert_eq!(trace, b3_trace);
    assert_eq!(echoed(&body, "b3"), Some(format!("{b3_trace}-{span}-0")));
    // A parent that sampled: followed, even at ratio 0.
    let (_, _) = send(
        proxy.http[0],
        host,
        "/echo",
        &[("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01"))],
    )
    .await;
    collector.wait_trace(TRACE).await;
    // Spans are queued in the order requests end: the earlier ones would have come first.
    let all = collector.all();
    assert_eq!(all.len(), 1, "only the sampled parent's trace: {all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_carry_their_reason() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |_| {});
    let spec = table(
        1,
        vec![
            http("shop", "web", proxy.ports.http[0], &[&web.addr_str()]),
            http("shop", "empty", proxy.ports.http[0], &[]),
        ],
    );
    proxy.set_table(&spec);
    let cases = [
        (
            "nowhere.shop.maille.mesh",
            404,
            "no_route",
            "6666666666666666dddddddddddddddd",
        ),
        (
            "empty.shop.maille.mesh",
            503,
            "no_endpoint",
            "7777777777777777eeeeeeeeeeeeeeee",
        ),
        // An encoded slash in the path: refused before routing.
        (
            "web.shop.maille.mesh",
            400,
            "bad_request",
            "8888888888888888ffffffffffffffff",
        ),
    ];
    for (host, status, reason, trace) in cases {
        let tp = format!("00-{trace}-{CLIENT_SPAN}-01");
        let path = if status == 400 { "/a%2Fb" } else { "/" };
        let (got_status, _) = send(proxy.http[0], host, path, &[("traceparent", &tp)]).await;
        assert_eq!(got_status, status, "{host}");
        let got = collector.wait_trace(trace).await;
        assert_eq!(
            got.attr("maille.local_reason").as_deref(),
            Some(reason),
            "{host}"
        );
        assert_eq!(
            got.attr("http.response.status_code"),
            Some(status.to_string())
        );
    }
    let got = collector.wait_trace(cases[1].3).await;
    assert_eq!(
        got.span.status.as_ref().map(|s| s.code),
        Some(2),
        "5xx is an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_entries_are_named_in_the_span() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let proxy = traced_proxy(collector.url(), |_| {});
    let mut svc = http("shop", "web", proxy.ports.http[0], &[&web.addr_str()]);
    let entry = |rule, path: &str, unresolved| config_model::RouteSpec {
        route: "shop/web-route".into(),
        rule,
        matches: config_model::route::RouteMatchSpec {
            path: Some(config_model::route::PathMatchSpec {
                kind: config_model::route::PathMatchType::PathPrefix,
                value: path.into(),
            }),
            ..Default::default()
        },
        unresolved_weight: unresolved,
        ..Default::default()
    };
    svc.routes = vec![entry(0, "/gone", 1), entry(3, "/", 0)];
    proxy.set_table(&table(1, vec![svc]));
    for (path, status, rule, reason, trace) in [
        ("/x", 200, "3", None, "99999999999999991111111111111111"),
        (
            "/gone",
            500,
            "0",
            Some("backend_not_found"),
            "aaaaaaaaaaaaaaaa2222222222222222",
        ),
    ] {
        let tp = format!("00-{trace}-{CLIENT_SPAN}-01");
        let (got_status, _) = send(
            proxy.http[0],
            "web.shop.maille.mesh",
            path,
            &[("traceparent", &tp)],
        )
        .await;
        assert_eq!(got_status, status, "{path}");
        let got = collector.wait_trace(trace).await;
        assert_eq!(got.attr("maille.route").as_deref(), Some("shop/web-route"));
        assert_eq!(got.attr("maille.route.rule").as_deref(), Some(rule));
        assert_eq!(got.attr("maille.local_reason").as_deref(), reason, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_and_tcp_connection_spans() {
    let collector = Collector::start().await;
    let db = TcpBackend::start("db-1").await;
    let proxy = traced_proxy(collector.url(), |c| {
        c.otlp_protocol = Some(OtlpProtocol::Grpc)
    });
    let spec = table(
        1,
        vec![service(
            "shop",
            "db",
            5432,
            proxy.ports.tcp[0],
            TrafficType::Tcp,
            &[&db.addr_str()],
        )],
    );
    proxy.set_table(&spec);
    let (mut conn, name) = connect(proxy.tcp[0]).await;
    assert_eq!(name, "db-1");
    assert_eq!(echo(&mut conn, b"ping").await, b"ping");
    conn.shutdown().await.unwrap();
    drop(conn);
    let got = collector
        .wait_for("of the TCP connection", |g| {
            g.attr("maille.service").as_deref() == Some("shop/db:5432")
        })
        .await;
    assert_eq!(got.via, "grpc");
    assert_eq!(got.span.name, "tcp shop/db:5432");
    assert_eq!(got.attr("maille.endpoint"), Some(db.addr_str()));
    assert_eq!(got.attr("network.transport").as_deref(), Some("tcp"));
    assert_eq!(got.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.attr("maille.end_reason").as_deref(), Some("finished"));
}

/// The sum of `maille_proxy_trace_spans_dropped_total` over its reasons.
async fn dropped(proxy: &TestProxy) -> u64 {
    let r = client::get_url(&proxy.admin_url("/metrics")).await.unwrap();
    r.body
        .lines()
        .filter(|l| l.starts_with("maille_proxy_trace_spans_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_or_refuses_slows_no_request() {
    let web = HttpBackend::start("web").await;
    let (hang, _hang_task) = hanging_collector().await;
    let refused = format!("127.0.0.1:{}", free_tcp_ports(1)[0]);
    for collector in [hang.to_string(), refused] {
        let proxy = traced_proxy(format!("http://{collector}"), |c| {
            c.trace_queue_size = Some(8);
        });
        web_table(&proxy, &web);
        let before = dropped(&proxy).await;
        let c = client::HttpClient::http1();
        let n = 300;
        let mut ok = 0;
        for _ in 0..n {
            let r = c
                .get(proxy.http[0], "web.shop.maille.mesh", "/")
                .await
                .unwrap();
            ok += u32::from(r.status == 200);
        }
        assert_eq!(ok, n, "every request answered, collector {collector}");
        // At most a queue and a batch in flight wait for the collector; the rest is dropped
        // and counted.
        let after = dropped(&proxy).await;
        assert!(
            after - before >= u64::from(n) - 16,
            "dropped {} of {n}, collector {collector}",
            after - before
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_without_endpoint_trace_headers_pass_untouched() {
    let web = HttpBackend::start("web").await;
    let proxy = TestProxy::start_with(TestProxyOptions::default());
    web_table(&proxy, &web);
    let host = "web.shop.maille.mesh";
    let (_, body) = send(proxy.http[0], host, "/echo", &[]).await;
    assert_eq!(echoed(&body, "traceparent"), None, "{body}");
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (_, body) = send(
        proxy.http[0],
        host,
        "/echo",
        &[("traceparent", &tp), ("b3", "x")],
    )
    .await;
    assert_eq!(echoed(&body, "traceparent"), Some(tp));
    assert_eq!(echoed(&body, "b3").as_deref(), Some("x"));
    let metrics = client::get_url(&proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .body;
    assert!(metrics.contains("maille_proxy_http_requests_total"));
}

/// The real binary, configured only by the standard environment variables; its last spans
/// are exported when it stops, though the batch delay is a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_honours_otel_environment_and_flushes_on_stop() {
    let collector = Collector::start().await;
    let web = HttpBackend::start("web").await;
    let ports = free_tcp_ports(2);
    let (http_port, admin_port) = (ports[0], ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let table_path = dir.path().join("table.json");
    let spec = table(1, vec![http("shop", "web", http_port, &[&web.addr_str()])]);
    std::fs::write(&table_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let env: HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url()),
        ("OTEL_SERVICE_NAME", "edge-proxy".to_string()),
        (
            "OTEL_TRACES_SAMPLER",
            "parentbased_traceidratio".to_string(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG", "0".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_string()),
    ]
    .into_iter()
    .collect();
    let mut child = ProxyChild(
        Command::new(env!("CARGO_BIN_EXE_maille-proxy"))
            .args([
                "--config",
                table_path.to_str().unwrap(),
                "--listen-ip",
                "127.0.0.1",
            ])
            .args([
                "--http-ports",
                &http_port.to_string(),
                "--tcp-ports",
                "none",
            ])
            .args(["--udp-ports", "none", "--threads", "1", "--log", "warn"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .envs(&env)
            .env_remove("MAILLE_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .spawn()
            .expect("start maille-proxy"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_listening(addr, PATIENCE);
    let host = "web.shop.maille.mesh";
    let start = Instant::now();
    loop {
        let (status, _) = send(addr, host, "/", &[]).await;
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "table never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ratio 0 for new traces; a sampled parent is followed.
    for _ in 0..5 {
        send(addr, host, "/", &[]).await;
    }
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _) = send(addr, host, "/", &[("traceparent", &tp)]).await;
    assert_eq!(status, 200);
    assert!(
        collector.all().is_empty(),
        "nothing sent before the batch delay"
    );
    // SIGINT: fast shutdown, then the queued span goes out.
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let got = collector.wait_trace(TRACE).await;
    assert_eq!(got.service_name, "edge-proxy");
    assert_eq!(got.via, "http/protobuf+gzip");
    assert_eq!(got.parent_id(), CLIENT_SPAN);
    assert_eq!(collector.all().len(), 1, "ratio 0: no new trace sampled");
    let start = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < PATIENCE, "proxy did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Killed when dropped.
struct ProxyChild(Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
