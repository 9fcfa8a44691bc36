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
