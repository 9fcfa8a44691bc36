//! The writer against a mock API server (tower-test behind `kube::Client`), answering the way
//! the real one does.

use std::time::Duration;

use config_model::{ServiceKey, TrafficType};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;
use crate::alloc::PortAllocator;
use crate::problem::ObjectRef;
use crate::settings::Settings;
use crate::translate::ShadowPort;

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn writer() -> (Writer, MockHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let labels = BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "proxy".to_string(),
    )]);
    (Writer::new(client, "maille".into(), labels), handle)
}

fn spec(name: &str, port: u16, mesh_port: u16, tt: TrafficType) -> ShadowSpec {
    ShadowSpec {
        namespace: "shop".into(),
        name: name.into(),
        ports: vec![ShadowPort {
            name: format!("{tt}-{port}"),
            port,
            mesh_port,
            protocol: if tt == TrafficType::Udp { "UDP" } else { "TCP" }.into(),
            traffic_type: tt,
        }],
    }
}

fn shadow_name(name: &str) -> String {
    crate::naming::shadow_name("shop", name).unwrap()
}

fn translation(specs: Vec<ShadowSpec>, problems: Vec<Problem>) -> Translation {
    Translation {
        shadows: specs
            .into_iter()
            .map(|s| (shadow_name(&s.name), s))
            .collect(),
        problems,
        ..Translation::default()
    }
}

fn observed(services: Vec<Service>) -> Shadows {
    services
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), Arc::new(s)))
        .collect()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "proxy".to_string(),
    )])
}

/// Answers the next request: checks method and path, returns the request body and answers
/// with `status` (echoing the body as the API server does for a successful write).
async fn answer(handle: &mut MockHandle, method: &str, path: &str, status: StatusCode) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("client gone");
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    if method == "PATCH" {
        let q = req.uri().query().unwrap_or("");
        assert!(
            q.contains("fieldManager=maille-controller") && q.contains("force=true"),
            "{q}"
        );
    }
    let body = req.into_body().collect_bytes().await.unwrap();
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    let reply = if status.is_success() {
        if value.is_null() {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
        } else {
            value.clone()
        }
    } else {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "reason": "InternalError", "code": status.as_u16()})
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    value
}

#[tokio::test]
async fn creates_updates_deletes_shadows_and_reports_problems() {
    let (mut w, mut handle) = writer();
    let t = translation(
        vec![spec("db", 5432, 10000, TrafficType::Tcp), spec("web", 80, 5000, TrafficType::Http)],
        vec![
            Problem::new(ObjectRef::service("shop", "bad"), "shop/bad: annotation maille.io/traffic-type: invalid value \"sctp\": expected http, tcp or udp"),
            Problem::new(ObjectRef::new("File", "", "x.yaml"), "not an object"),
        ],
    );
    // db's shadow is out of date (another mesh port); an orphan from a deleted service remains.
    let old_db = shadow_service(
        &shadow_name("db"),
        &spec("db", 5432, 10007, TrafficType::Tcp),
        "maille",
        &labels(),
    );
    let orphan = shadow_service(
        &shadow_name("gone"),
        &spec("gone", 80, 5000, TrafficType::Http),
        "maille",
        &labels(),
    );
    let seen = observed(vec![old_db, orphan]);

    let verifier = tokio::spawn(async move {
        let db = answer(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/maille/services/db-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
        assert_eq!(db["spec"]["ports"][0]["targetPort"], 10000);
        assert_eq!(db["spec"]["ports"][0]["port"], 5432);
        assert_eq!(db["spec"]["internalTrafficPolicy"], "Local");
        assert_eq!(
            db["spec"]["selector"]["app.kubernetes.io/component"],
            "proxy"
        );
        assert_eq!(db["metadata"]["labels"]["maille.io/service-name"], "db");
        assert_eq!(
            db["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "maille"
        );
        assert_eq!(db["kind"], "Service");
        let web = answer(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/maille/services/web-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
        assert_eq!(web["spec"]["ports"][0]["targetPort"], 5000);
        answer(
            &mut handle,
            "DELETE",
            "/api/v1/namespaces/maille/services/gone-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
        let ev = answer(
            &mut handle,
            "POST",
            "/api/v1/namespaces/shop/events",
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(ev["involvedObject"]["name"], "bad");
        assert_eq!(ev["involvedObject"]["kind"], "Service");
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], EVENT_REASON);
        assert!(ev["message"]
            .as_str()
            .unwrap()
            .contains("maille.io/traffic-type"));
        handle
    });
    assert_eq!(w.pass(&t, &seen).await, None);
    let mut handle = verifier.await.unwrap();

    // The store has caught up: nothing more to write, and the problem is not reported again.
    let caught_up = observed(
        t.shadows
            .iter()
            .map(|(n, s)| shadow_service(n, s, "maille", &labels()))
            .collect(),
    );
    let quiet = tokio::time::timeout(Duration::from_secs(2), w.pass(&t, &caught_up)).await;
    assert_eq!(
        quiet.expect("a pass with nothing to do makes no request"),
        None
    );

    // The user's service goes away: its shadow is deleted.
    let t2 = translation(vec![spec("web", 80, 5000, TrafficType::Http)], vec![]);
    let verifier = tokio::spawn(async move {
        answer(
            &mut handle,
            "DELETE",
            "/api/v1/namespaces/maille/services/db-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
    });
    assert_eq!(w.pass(&t2, &caught_up).await, None);
    verifier.await.unwrap();
}

#[tokio::test]
async fn a_failed_write_is_retried_with_backoff_and_does_not_hold_up_others() {
    let (mut w, mut handle) = writer();
    let t = translation(
        vec![
            spec("a", 80, 5000, TrafficType::Http),
            spec("b", 81, 5000, TrafficType::Http),
        ],
        vec![],
    );
    let errors_before = metrics::register()
        .api_writes
        .with_label_values(&["Service", "error"])
        .get();
    let verifier = tokio::spawn(async move {
        answer(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/maille/services/a-6d61696c6c65-shop",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .await;
        // b is written even though a failed.
        answer(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/maille/services/b-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
        handle
    });
    let retry_at = w
        .pass(&t, &Shadows::new())
        .await
        .expect("a retry is scheduled");
    let mut handle = verifier.await.unwrap();
    assert!(
        metrics::register()
            .api_writes
            .with_label_values(&["Service", "error"])
            .get()
            > errors_before
    );

    // Before the backoff ends, a has nothing to do: no request.
    let b_written = observed(vec![shadow_service(
        &shadow_name("b"),
        &t.shadows[&shadow_name("b")],
        "maille",
        &labels(),
    )]);
    let early = tokio::time::timeout(Duration::from_secs(2), w.pass(&t, &b_written)).await;
    assert!(early.expect("no request during backoff").is_some());

    // After it, a is written again.
    tokio::time::sleep_until(retry_at).await;
    let verifier = tokio::spawn(async move {
        answer(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/maille/services/a-6d61696c6c65-shop",
            StatusCode::OK,
        )
        .await;
    });
    assert_eq!(w.pass(&t, &b_written).await, None);
    verifier.await.unwrap();
}

#[tokio::test]
async fn run_waits_for_the_first_table_before_deleting_anything() {
    let (w, mut handle) = writer();
    let orphan = shadow_service(
        &shadow_name("gone"),
        &spec("gone", 80, 5000, TrafficType::Http),
        "maille",
        &labels(),
    );
    let (t_tx, t_rx) = watch::channel(None);
    let (_s_tx, s_rx) = watch::channel(observed(vec![orphan]));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(w.run(t_rx, s_rx, shutdown.clone()));
    // No table yet: no request.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), handle.next_request())
            .await
            .is_err()
    );
    // The first table (without the orphan): the orphan goes.
    t_tx.send_replace(Some(Arc::new(translation(vec![], vec![]))));
    answer(
        &mut handle,
        "DELETE",
        "/api/v1/namespaces/maille/services/gone-6d61696c6c65-shop",
        StatusCode::NOT_FOUND,
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn ports_are_recovered_from_shadow_services() {
    let settings = Settings::default();
    let shadows = [
        shadow_service(
            &shadow_name("db"),
            &spec("db", 5432, 10003, TrafficType::Tcp),
            "maille",
            &labels(),
        ),
        shadow_service(
            &shadow_name("dns"),
            &spec("dns", 53, 15002, TrafficType::Udp),
            "maille",
            &labels(),
        ),
        shadow_service(
            &shadow_name("web"),
            &spec("web", 80, 5000, TrafficType::Http),
            "maille",
            &labels(),
        ),
    ];
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    assert_eq!(
        crate::kubernetes::seed_from_shadows(shadows.iter(), &mut alloc, &settings),
        2
    );
    let key = |name: &str, port| ServiceKey {
        namespace: "shop".into(),
        name: name.into(),
        port,
    };
    let tcp = alloc.assign(TrafficType::Tcp, &[key("a", 1), key("db", 5432)]);
    assert_eq!(tcp[&key("db", 5432)], Some(10003));
    assert_eq!(tcp[&key("a", 1)], Some(10000));
    let udp = alloc.assign(TrafficType::Udp, &[key("dns", 53)]);
    assert_eq!(udp[&key("dns", 53)], Some(15002));
}
