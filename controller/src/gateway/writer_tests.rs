//! Route statuses written against the in-memory API server: Maille's entries under its
//! controller name with the generation they were computed from, other controllers' entries
//! untouched, no write when the status already says it, a 409 on a route changed in between,
//! and the entries removed when the route no longer names a Service.

use serde_json::json;

use super::crd::{ParentReference, RouteStatus};
use super::status::{reason, write, ParentOutcome, RouteKey, RouteKind, RouteOutcome, Verdict};
use super::{HTTPRoute, CONTROLLER_NAME};
use crate::testing::fake_api::FakeApi;
use crate::translate::Translation;
use crate::writer::Writer;

fn route(generation: i64) -> HTTPRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": generation},
        "spec": {"parentRefs": [
            {"group": "", "kind": "Service", "name": "web", "port": 80},
            {"name": "public"},
        ]},
        "status": {"parents": [{
            "parentRef": {"name": "public"},
            "controllerName": "example.com/gateway",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1}],
        }]},
    }))
    .unwrap()
}

fn parent() -> ParentReference {
    ParentReference {
        group: Some(String::new()),
        kind: Some("Service".into()),
        name: "web".into(),
        port: Some(80),
        ..ParentReference::default()
    }
}

fn outcome(generation: i64, accepted: bool) -> RouteOutcome {
    RouteOutcome {
        key: RouteKey {
            kind: RouteKind::Http,
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u-1".into(),
        },
        generation: Some(generation),
        parents: vec![ParentOutcome {
            parent_ref: parent(),
            accepted: if accepted {
                Verdict::yes(reason::ACCEPTED, "Attached to Service shop/web port 80")
            } else {
                Verdict::no(
                    reason::UNSUPPORTED_VALUE,
                    "spec.rules[0].filters[0].type: \"CORS\": not supported",
                )
            },
            resolved: Verdict::yes(reason::RESOLVED_REFS, "Every backendRef resolved"),
            ports: Vec::new(),
        }],
    }
}

fn status(api: &FakeApi) -> RouteStatus {
    api.get::<HTTPRoute>("shop", "web").unwrap().status.unwrap()
}

fn status_writes(api: &FakeApi) -> usize {
    api.writes()
        .iter()
        .filter(|w| w.starts_with("PATCH httproutes shop/web"))
        .count()
}

#[tokio::test]
async fn ours_are_written_beside_other_controllers_entries_and_only_when_they_change() {
    let api = FakeApi::new();
    api.insert(&route(2));
    let client = api.client();

    write(&client, &outcome(2, true)).await.unwrap();
    let st = status(&api);
    assert_eq!(st.parents.len(), 2, "{st:?}");
    assert_eq!(
        st.parents[0].controller_name, "example.com/gateway",
        "kept first, as it was"
    );
    assert_eq!(st.parents[0], route(2).status.unwrap().parents[0]);
    let ours = &st.parents[1];
    assert_eq!(ours.controller_name, CONTROLLER_NAME);
    assert_eq!(ours.parent_ref, parent());
    let kinds: Vec<(&str, &str, &str, Option<i64>)> = ours
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_str(),
                c.observed_generation,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("Accepted", "True", "Accepted", Some(2)),
            ("ResolvedRefs", "True", "ResolvedRefs", Some(2))
        ]
    );
    assert!(ours.conditions[0].last_transition_time.ends_with('Z'));
    assert_eq!(status_writes(&api), 1);

    // The same outcome again: read, found right, not written.
    write(&client, &outcome(2, true)).await.unwrap();
    assert_eq!(status_writes(&api), 1);

    // Refused now: replaced in place.
    write(&client, &outcome(2, false)).await.unwrap();
    let st = status(&api);
    assert_eq!(st.parents.len(), 2);
    assert_eq!(st.parents[1].conditions[0].status, "False");
    assert_eq!(st.parents[1].conditions[0].reason, "UnsupportedValue");
    assert!(st.parents[1].conditions[0].message.contains("CORS"));
    // The spec was not touched by a status write.
    assert_eq!(
        api.get::<HTTPRoute>("shop", "web").unwrap().spec,
        route(2).spec
    );
}

#[tokio::test]
async fn a_route_changed_in_between_is_a_conflict_and_the_retry_keeps_the_change() {
    let api = FakeApi::new();
    api.insert(&route(2));
    let client = api.client();
    api.race_next_write::<HTTPRoute>("shop", "web", |obj| {
        obj["status"]["parents"][0]["conditions"][0]["message"] =
            json!("changed by the other controller");
    });
    let err = write(&client, &outcome(2, true)).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err}"
    );
    write(&client, &outcome(2, true)).await.unwrap();
    let st = status(&api);
    assert_eq!(st.parents.len(), 2);
    assert_eq!(
        st.parents[0].conditions[0].message,
        "changed by the other controller"
    );
    assert_eq!(st.parents[1].controller_name, CONTROLLER_NAME);
}

#[tokio::test]
async fn the_writer_plans_statuses_removes_ours_when_the_parent_goes_and_skips_gone_routes() {
    let api = FakeApi::new();
    api.insert(&route(3));
    let mut writer = Writer::new(api.client(), "maille".into(), Default::default());
    let shadows = Default::default();
    let with = Translation {
        route_statuses: vec![outcome(3, true)],
        ..Translation::default()
    };
    assert!(
        writer.pass(&with, &shadows).await.is_none(),
        "no write waits for a retry"
    );
    assert_eq!(status(&api).parents.len(), 2);
    // Nothing changed: nothing planned, not even a read.
    let before = api.requests().len();
    writer.pass(&with, &shadows).await;
    assert_eq!(api.requests().len(), before, "{:?}", api.requests());

    // The route no longer names a Service: Maille's entry goes, the other stays.
    writer.pass(&Translation::default(), &shadows).await;
    let st = status(&api);
    assert_eq!(st.parents.len(), 1, "{st:?}");
    assert_eq!(st.parents[0].controller_name, "example.com/gateway");

    // A route deleted before its status is written: nothing to do, no retry.
    api.remove::<HTTPRoute>("shop", "web");
    assert!(writer.pass(&with, &shadows).await.is_none());
}
