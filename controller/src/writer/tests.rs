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

type Pending = (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
);

async fn next(handle: &mut MockHandle) -> Pending {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request comes")
        .expect("client gone")
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// Answers the next request, which must be `method path`, with `body`.
async fn answer_with(
    handle: &mut MockHandle,
    method: &str,
    path: &str,
    status: StatusCode,
    body: Value,
) {
    let (req, send) = next(handle).await;
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    reply(send, status, body);
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
        // The Event names the Service by uid: read it, then look for the problem's Event.
        answer_with(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/services/bad",
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"}}),
        )
        .await;
        let get = next(&mut handle).await;
        assert_eq!(get.0.method(), "GET");
        assert!(
            get.0
                .uri()
                .path()
                .starts_with("/api/v1/namespaces/shop/events/bad."),
            "{}",
            get.0.uri()
        );
        reply(
            get.1,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
        let ev = answer(
            &mut handle,
            "POST",
            "/api/v1/namespaces/shop/events",
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(ev["involvedObject"]["uid"], "u-1");
        assert_eq!(ev["involvedObject"]["resourceVersion"], "7");
        assert_eq!(ev["count"], 1);
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

/// Answers every request as the API server would for a successful write (echoing the body)
/// and records `METHOD path`.
fn echo_server(mut handle: MockHandle) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            log.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri().path()));
            let body = req.into_body().collect_bytes().await.unwrap();
            let value: Value = serde_json::from_slice(&body).unwrap_or(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            );
            reply(send, StatusCode::OK, value);
        }
    });
    seen
}

fn with_version(mut s: Service, rv: &str) -> Service {
    s.metadata.resource_version = Some(rv.into());
    s
}

#[tokio::test]
async fn a_burst_is_written_once_until_the_watch_shows_it() {
    let (mut w, handle) = writer();
    let seen = echo_server(handle);
    let specs: Vec<ShadowSpec> = (0..200)
        .map(|i| spec(&format!("s{i}"), 80, 5000, TrafficType::Http))
        .collect();
    let t = translation(specs, vec![]);
    let desired = |name: &str, rv: &str| {
        with_version(
            shadow_service(
                &shadow_name(name),
                &t.shadows[&shadow_name(name)],
                "maille",
                &labels(),
            ),
            rv,
        )
    };
    assert_eq!(w.pass(&t, &Shadows::new()).await, None);
    assert_eq!(seen.lock().unwrap().len(), 200);

    // Passes planned before the watch shows the writes (a new table, the first shadows seen):
    // nothing is written again.
    assert_eq!(w.pass(&t, &Shadows::new()).await, None);
    let half = observed((0..100).map(|i| desired(&format!("s{i}"), "1")).collect());
    assert_eq!(w.pass(&t, &half).await, None);
    let all = observed((0..200).map(|i| desired(&format!("s{i}"), "1")).collect());
    assert_eq!(w.pass(&t, &all).await, None);
    assert_eq!(seen.lock().unwrap().len(), 200, "200 services, 200 writes");

    // Someone changes a shadow after the watch showed ours: it is written back, once.
    let mut changed = all.clone();
    let mut edited = desired("s7", "2");
    edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(IntOrString::Int(5009));
    changed.insert(shadow_name("s7"), Arc::new(edited));
    assert_eq!(w.pass(&t, &changed).await, None);
    assert_eq!(w.pass(&t, &changed).await, None);
    let log = seen.lock().unwrap().clone();
    assert_eq!(log.len(), 201, "{:?}", &log[200..]);
    assert_eq!(
        log[200],
        "PATCH /api/v1/namespaces/maille/services/s7-6d61696c6c65-shop"
    );

    // A delete is not repeated either while the watch still shows the shadow.
    let none = translation(vec![], vec![]);
    let one = observed(vec![desired("s1", "1")]);
    assert_eq!(w.pass(&none, &one).await, None);
    assert_eq!(w.pass(&none, &one).await, None);
    let log = seen.lock().unwrap().clone();
    assert_eq!(
        log[201..],
        ["DELETE /api/v1/namespaces/maille/services/s1-6d61696c6c65-shop".to_string()]
    );
}

#[tokio::test]
async fn deletes_only_the_shadows_it_wrote() {
    use crate::testing::fake_api::FakeApi;
    let api = FakeApi::new();
    let mut w = Writer::new(api.client(), "maille".into(), labels());
    let ours = shadow_service(
        &shadow_name("gone"),
        &spec("gone", 80, 5000, TrafficType::Http),
        "maille",
        &labels(),
    );
    // Labelled as Maille's, but not written by the controller: a Service of the chart, and a
    // shadow-named Service without the source labels the writer sets.
    let mut chart = ours.clone();
    chart.metadata.name = Some("maille-controller".into());
    let mut lookalike = ours.clone();
    lookalike.metadata.name = Some(shadow_name("api"));
    lookalike.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY_LABEL.to_string(),
        MANAGED_BY_VALUE.to_string(),
    )]));
    for s in [&ours, &chart, &lookalike] {
        api.insert(s);
    }
    let seen = observed(vec![ours, chart, lookalike]);
    assert_eq!(w.pass(&translation(vec![], vec![]), &seen).await, None);
    assert_eq!(
        api.writes(),
        ["DELETE services maille/gone-6d61696c6c65-shop"]
    );
    assert!(api.get::<Service>("maille", "maille-controller").is_some());
    assert!(api.get::<Service>("maille", &shadow_name("api")).is_some());
}

fn bad_service_problem() -> Problem {
    Problem::new(
        ObjectRef::service("shop", "bad"),
        "shop/bad: annotation maille.io/timeout: invalid value \"soon\": expected a duration",
    )
}

#[tokio::test]
async fn events_carry_the_uid_and_a_repeat_bumps_the_count() {
    use crate::testing::fake_api::FakeApi;
    let api = FakeApi::new();
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("bad".into()),
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        },
        ..Service::default()
    };
    api.insert(&svc);
    let stored: Service = api.get("shop", "bad").unwrap();
    let uid = stored.metadata.uid.clone().unwrap();
    let p = bad_service_problem();
    let t = translation(vec![], vec![p.clone()]);
    let name = event_name(&p, &uid);

    let mut w = Writer::new(api.client(), "maille".into(), labels());
    assert_eq!(w.pass(&t, &Shadows::new()).await, None);
    let ev: Event = api
        .get("shop", &name)
        .expect("the Event has the problem's name");
    assert_eq!(ev.involved_object.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        ev.involved_object.resource_version,
        stored.metadata.resource_version
    );
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Service"));
    assert_eq!(ev.count, Some(1));
    // The same pass again: already reported, nothing written.
    assert_eq!(w.pass(&t, &Shadows::new()).await, None);
    assert_eq!(api.writes().len(), 1);

    // A restarted controller finds the Event and bumps its count instead of adding one.
    let mut restarted = Writer::new(api.client(), "maille".into(), labels());
    assert_eq!(restarted.pass(&t, &Shadows::new()).await, None);
    // The problem goes away and comes back: counted on the same Event.
    let fixed = translation(vec![], vec![]);
    assert_eq!(restarted.pass(&fixed, &Shadows::new()).await, None);
    assert_eq!(restarted.pass(&t, &Shadows::new()).await, None);
    let ev: Event = api.get("shop", &name).unwrap();
    assert_eq!(ev.count, Some(3));
    assert!(ev.last_timestamp.unwrap().0 >= ev.first_timestamp.unwrap().0);
    assert_eq!(
        api.writes(),
        [
            format!("POST events shop/{name}"),
            format!("PATCH events shop/{name}"),
            format!("PATCH events shop/{name}"),
        ]
    );
}

#[tokio::test]
async fn problems_on_smi_objects_become_events_on_them() {
    use crate::smi::crd::TrafficSplitSpec;
    use crate::smi::TrafficSplit;
    use crate::testing::fake_api::FakeApi;
    let api = FakeApi::new();
    let mut split = TrafficSplit::new("canary", TrafficSplitSpec::default());
    split.metadata.namespace = Some("shop".into());
    api.insert(&split);
    let uid = api
        .get::<TrafficSplit>("shop", "canary")
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let p = Problem::new(
        ObjectRef::new("TrafficSplit", "shop", "canary"),
        "shop/canary: spec.backends[0]: backend shop/web-v2 is not meshed (or no such Service); backend left out",
    );
    let file = Problem::new(ObjectRef::new("File", "", "a.yaml"), "a.yaml: not YAML");
    let mut w = Writer::new(api.client(), "maille".into(), labels());
    let t = translation(vec![], vec![p.clone(), file]);
    assert_eq!(w.pass(&t, &Shadows::new()).await, None);
    let ev: Event = api.get("shop", &event_name(&p, &uid)).unwrap();
    assert_eq!(ev.involved_object.kind.as_deref(), Some("TrafficSplit"));
    assert_eq!(
        ev.involved_object.api_version.as_deref(),
        Some("split.smi-spec.io/v1alpha4")
    );
    assert_eq!(ev.involved_object.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    // Only that Event: a file is not an object an Event can name.
    assert_eq!(api.writes().len(), 1, "{:?}", api.writes());
}
