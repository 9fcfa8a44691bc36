//! The API over a real socket: ETag, conditional requests, long-poll, readiness, services.

use std::sync::Arc;
use std::time::Duration;

use config_model::testing;
use reqwest::StatusCode;

use super::*;

async fn start() -> (Arc<ApiState>, String, CancellationToken) {
    let shutdown = CancellationToken::new();
    let state = ApiState::new(1000, shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state.clone()));
    (state, base, shutdown)
}

fn table(endpoint: &str) -> TableSpec {
    testing::table(0, vec![testing::http("shop", "web", 5000, &[endpoint])])
}

fn status_row() -> ServiceStatus {
    ServiceStatus {
        namespace: "shop".into(),
        name: "web".into(),
        port: 80,
        port_name: None,
        traffic_type: Some(config_model::TrafficType::Http),
        mesh_port: Some(5000),
        endpoints: 1,
        errors: vec![],
    }
}

#[test]
fn wait_parameter() {
    assert_eq!(parse_wait(None), Ok(Duration::ZERO));
    assert_eq!(parse_wait(Some("30s")), Ok(Duration::from_secs(30)));
    assert_eq!(parse_wait(Some("250ms")), Ok(Duration::from_millis(250)));
    assert_eq!(parse_wait(Some("5")), Ok(Duration::from_secs(5)));
    assert_eq!(parse_wait(Some("10m")), Ok(MAX_WAIT));
    assert!(parse_wait(Some("soon")).unwrap_err().contains("\"soon\""));
}

#[tokio::test]
async fn etag_conditional_requests_and_long_poll() {
    let (state, base, shutdown) = start().await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/configuration");

    // Nothing built yet: not ready, no table.
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.get(format!("{base}/live"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let v1 = state.publish(table("10.0.0.1:80"), &[status_row()], &[]);
    assert_eq!(v1, 1001);
    state.set_ready();
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, "\"1001\"");
    let body: TableSpec = r.json().await.unwrap();
    assert_eq!(body.version, 1001);
    assert_eq!(body.services[0].endpoints[0].address, "10.0.0.1:80");

    // Same ETag, no wait: 304 at once. Another ETag: the table.
    let r = http
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = http
        .get(&url)
        .header("If-None-Match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Publishing an identical table changes nothing, so a waiting client times out with 304.
    assert_eq!(
        state.publish(table("10.0.0.1:80"), &[status_row()], &[]),
        1001
    );
    let r = http
        .get(format!("{url}?wait=300ms"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // A change while a client waits answers it with the new table (the wait is far longer).
    let waiting = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}?wait=30s");
        let etag = etag.clone();
        async move {
            http.get(&url)
                .header("If-None-Match", &etag)
                .send()
                .await
                .unwrap()
        }
    });
    // Let the client reach the wait (the gauge counts it) before changing the table.
    for _ in 0..200 {
        if metrics::register().longpoll_waiting.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metrics::register().longpoll_waiting.get() > 0);
    let v2 = state.publish(table("10.0.0.2:80"), &[status_row()], &[]);
    assert_eq!(v2, 1002);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"1002\"");
    let body: TableSpec = r.json().await.unwrap();
    assert_eq!(body.services[0].endpoints[0].address, "10.0.0.2:80");

    // Bad wait value.
    let r = http.get(format!("{url}?wait=soon")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("soon"));

    // Services and metrics.
    let rows: serde_json::Value = http
        .get(format!("{base}/api/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows[0]["meshPort"], 5000);
    assert_eq!(rows[0]["trafficType"], "http");
    assert_eq!(rows[0]["errors"], serde_json::json!([]));
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("maille_controller_table_version"), "{text}");
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_ends_long_polls() {
    let (state, base, shutdown) = start().await;
    state.publish(table("10.0.0.1:80"), &[], &[]);
    let etag = state.current().unwrap().etag.clone();
    let http = reqwest::Client::new();
    let waiting = tokio::spawn(async move {
        http.get(format!("{base}/api/configuration?wait=60s"))
            .header("If-None-Match", etag)
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_per_client_address_and_in_total() {
    let shutdown = CancellationToken::new();
    let limits = LongPollLimits {
        per_client: 2,
        total: 3,
    };
    let state = ApiState::with_limits(1000, shutdown.clone(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/configuration?wait=30s",
        listener.local_addr().unwrap()
    );
    tokio::spawn(serve(listener, state.clone()));
    let v = state.publish(table("10.0.0.1:80"), &[], &[]);
    let etag = format!("\"{v}\"");
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let poll = |client: reqwest::Client| {
        let (url, etag) = (url.clone(), etag.clone());
        tokio::spawn(async move {
            let r = client
                .get(&url)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    let refused = |bound: &str| {
        metrics::register()
            .longpoll_refusals
            .with_label_values(&[bound])
            .get()
    };
    let (client_before, total_before) = (refused("client"), refused("total"));
    let waiting = || {
        let held = state.held.lock().unwrap();
        (held.total, held.by_client.len())
    };
    // Two from 127.0.0.1 wait; the third from the same address is refused at once.
    let a = [poll(from("127.0.0.1")), poll(from("127.0.0.1"))];
    for _ in 0..200 {
        if waiting().0 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting(), (2, 1));
    let (status, body) = poll(from("127.0.0.1")).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("from this address (at most 2)"), "{body}");
    // Another address still gets a slot, until the total is reached.
    let b = poll(from("127.0.0.2"));
    for _ in 0..200 {
        if waiting().0 == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting(), (3, 2));
    let (status, body) = poll(from("127.0.0.3")).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("in all (at most 3)"), "{body}");
    assert_eq!(refused("client"), client_before + 1);
    assert_eq!(refused("total"), total_before + 1);
    // A new table answers the waiting polls, and their slots come back.
    state.publish(table("10.0.0.2:80"), &[], &[]);
    for h in a.into_iter().chain([b]) {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
    for _ in 0..200 {
        if waiting() == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting(), (0, 0));
    // A client that hangs up frees its slot too.
    let etag = format!("\"{}\"", state.current().unwrap().version);
    let c = from("127.0.0.1");
    let gone = {
        let url = url.clone();
        tokio::spawn(async move { c.get(&url).header("If-None-Match", etag).send().await })
    };
    for _ in 0..200 {
        if waiting().0 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting().0, 1);
    gone.abort();
    for _ in 0..200 {
        if waiting().0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting(), (0, 0));
    shutdown.cancel();
}

fn two_services(web: &str) -> TableSpec {
    testing::table(
        0,
        vec![
            testing::http("shop", "web", 5000, &[web]),
            testing::http("shop", "cart", 5000, &["10.0.0.9:80"]),
        ],
    )
}

#[tokio::test]
async fn a_client_taking_deltas_gets_only_what_changed_since_its_version() {
    let (state, base, shutdown) = start().await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/configuration");
    let v1 = state.publish(two_services("10.0.0.1:80"), &[], &[]);
    // Deltas are only made for a client naming this controller process, whose versions it holds.
    let origin = http.get(&url).send().await.unwrap().headers()[ORIGIN_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    let get_from = |etag: &str, accept: &str, origin: &str| {
        http.get(&url)
            .header("If-None-Match", etag)
            .header("Accept", accept)
            .header(ORIGIN_HEADER, origin)
            .send()
    };
    let get = |etag: &str, accept: &str| get_from(etag, accept, &origin);
    let v2 = state.publish(two_services("10.0.0.2:80"), &[], &[]);
    let mut removed = two_services("10.0.0.2:80");
    removed.services.remove(1);
    let v3 = state.publish(removed, &[], &[]);
    assert_eq!((v1, v2, v3), (1001, 1002, 1003));

    // From 1002: the cart service went away, nothing else is sent.
    let r = get("\"1002\"", config_model::DELTA_MEDIA_TYPE)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], config_model::DELTA_MEDIA_TYPE);
    assert_eq!(r.headers()["etag"], "\"1003\"");
    let d: config_model::TableDelta = r.json().await.unwrap();
    assert_eq!((d.base_version, d.version), (1002, 1003));
    assert!(d.changed.is_empty(), "{d:?}");
    assert_eq!(d.removed.len(), 1);
    assert_eq!(d.removed[0].to_string(), "shop/cart:80");

    // From 1001: the web endpoint changed too, and is sent whole.
    let d: config_model::TableDelta = get("\"1001\"", config_model::DELTA_MEDIA_TYPE)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].endpoints[0].address, "10.0.0.2:80");
    assert_eq!(d.removed.len(), 1);

    // A version the controller never served, or a client that does not take deltas: the
    // whole table.
    for (etag, accept) in [
        ("\"77\"", config_model::DELTA_MEDIA_TYPE),
        ("\"1002\"", "application/json"),
        ("\"1002\"", "application/vnd.maille.delta+json;q=0"),
    ] {
        let r = get(etag, accept).await.unwrap();
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{etag} {accept}"
        );
        assert_eq!(r.headers()[ORIGIN_HEADER], origin.as_str());
        let t: TableSpec = r.json().await.unwrap();
        assert_eq!(t.version, 1003);
        assert_eq!(t.services.len(), 1);
    }
    // A version this process served, named by a client that got it elsewhere (another replica,
    // an earlier run): the whole table.
    for other in ["", "17-1"] {
        let r = get_from("\"1002\"", config_model::DELTA_MEDIA_TYPE, other)
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "application/json", "{other:?}");
    }

    // A long-poll from the current version is answered with the delta of the next change.
    let waiting = tokio::spawn({
        let http = http.clone();
        let url = format!("{url}?wait=30s");
        let origin = origin.clone();
        async move {
            http.get(&url)
                .header("If-None-Match", "\"1003\"")
                .header("Accept", config_model::DELTA_MEDIA_TYPE)
                .header(ORIGIN_HEADER, origin)
                .send()
                .await
                .unwrap()
        }
    });
    for _ in 0..200 {
        if metrics::register().longpoll_waiting.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.publish(two_services("10.0.0.3:80"), &[], &[]);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.headers()["content-type"], config_model::DELTA_MEDIA_TYPE);
    let d: config_model::TableDelta = r.json().await.unwrap();
    assert_eq!((d.base_version, d.version), (1003, 1004));
    let names: Vec<_> = d.changed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cart", "web"]);
    shutdown.cancel();
}

#[tokio::test]
async fn a_large_table_is_gzipped_for_a_client_that_accepts_it() {
    let (state, base, shutdown) = start().await;
    let services = (0..200)
        .map(|i| testing::http("shop", &format!("web-{i}"), 5000, &["10.0.0.1:80"]))
        .collect();
    state.publish(testing::table(0, services), &[], &[]);
    // reqwest is built without its gzip feature: it neither asks for nor decodes gzip.
    let raw = reqwest::Client::new();
    let url = format!("{base}/api/configuration");
    let plain = raw.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > COMPRESS_ABOVE, "{}", plain.len());
    let packed = raw
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(packed.headers()["content-encoding"], "gzip");
    let packed = packed.bytes().await.unwrap();
    assert!(
        packed.len() * 5 < plain.len(),
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&packed[..]),
        &mut unpacked,
    )
    .unwrap();
    assert_eq!(unpacked, plain);
    shutdown.cancel();
}

/// Workloads travel in deltas as they changed (issue 14): a pod change sends that workload, a
/// node proxy change the node proxies, a mode change the mode; never the other workloads.
#[tokio::test]
async fn deltas_carry_changed_workloads_nodes_and_the_mode_only() {
    use config_model::{MtlsMode, NodeSpec, WorkloadSpec};
    let (state, base, shutdown) = start().await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/configuration");
    let mesh = |sa_of_7: &str, mode: MtlsMode, tunnel: &str| {
        let mut t = table("10.0.0.1:80");
        t.mtls = mode;
        t.nodes = vec![NodeSpec {
            name: "n1".into(),
            tunnel: tunnel.into(),
        }];
        t.workloads = (0..5_000u32)
            .map(|i| WorkloadSpec {
                ip: format!("10.1.{}.{}", i >> 8, i & 255),
                node: "n1".into(),
                namespace: "shop".into(),
                service_account: if i == 7 { sa_of_7.into() } else { "sa".into() },
            })
            .collect();
        t
    };
    let v1 = state.publish(mesh("sa", MtlsMode::Strict, "10.9.0.1:15008"), &[], &[]);
    let origin = http.get(&url).send().await.unwrap().headers()[ORIGIN_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    let delta_from = |v: u64| {
        http.get(&url)
            .header("If-None-Match", format!("\"{v}\""))
            .header("Accept", config_model::DELTA_MEDIA_TYPE)
            .header(ORIGIN_HEADER, origin.as_str())
            .send()
    };
    let v2 = state.publish(mesh("other", MtlsMode::Strict, "10.9.0.1:15008"), &[], &[]);
    let r = delta_from(v1).await.unwrap();
    assert_eq!(r.headers()["content-type"], config_model::DELTA_MEDIA_TYPE);
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.len() < 400, "{} bytes for one workload", bytes.len());
    let d: config_model::TableDelta = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(d.base_version, v1);
    assert_eq!(d.workloads_changed.len(), 1);
    assert_eq!(d.workloads_changed[0].ip, "10.1.0.7");
    assert_eq!(d.workloads_changed[0].service_account, "other");
    assert!(d.changed.is_empty() && d.nodes.is_none() && d.workloads_removed.is_empty());
    assert_eq!(d.mtls, MtlsMode::Strict);

    // The mode alone is a new version, and its delta says so.
    let v3 = state.publish(
        mesh("other", MtlsMode::Permissive, "10.9.0.1:15008"),
        &[],
        &[],
    );
    assert!(v3 > v2);
    let d: config_model::TableDelta = delta_from(v2).await.unwrap().json().await.unwrap();
    assert_eq!(d.mtls, MtlsMode::Permissive);
    assert!(d.workloads_changed.is_empty() && d.nodes.is_none());

    // A node proxy moved and a pod went away, from v1: both changes since, merged.
    let mut gone = mesh("other", MtlsMode::Permissive, "10.9.0.2:15008");
    gone.workloads.remove(9);
    state.publish(gone, &[], &[]);
    let d: config_model::TableDelta = delta_from(v1).await.unwrap().json().await.unwrap();
    assert_eq!(d.nodes.as_ref().unwrap()[0].tunnel, "10.9.0.2:15008");
    assert_eq!(d.workloads_removed, ["10.1.0.9"]);
    assert_eq!(d.workloads_changed.len(), 1);
    // What a proxy holding v1 makes of it is the table served now.
    let mut held = mesh("sa", MtlsMode::Strict, "10.9.0.1:15008");
    held.version = v1;
    held.sort_services();
    config_model::delta::apply_to_spec(&mut held, &d).unwrap();
    let now: TableSpec = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(held, now);
    shutdown.cancel();
}
