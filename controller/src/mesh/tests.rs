use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
use kube::api::ObjectMeta;

use super::*;

fn pod(ns: &str, name: &str, node: &str, ip: &str, sa: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(sa.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            phase: Some("Running".into()),
            ..PodStatus::default()
        }),
    }
}

fn labelled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    p.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    p
}

fn strict() -> MeshSettings {
    MeshSettings {
        mtls: MtlsMode::Strict,
        ..MeshSettings::default()
    }
}

/// The chart's proxies: the --proxy-selector labels, in the mesh namespace only.
fn cluster() -> MeshSettings {
    MeshSettings {
        mtls: MtlsMode::Permissive,
        proxy_labels: BTreeMap::from([
            ("app.kubernetes.io/name".into(), "maille".into()),
            ("app.kubernetes.io/component".into(), "proxy".into()),
        ]),
        proxy_namespace: Some("maille".into()),
        tunnel_port: 15008,
    }
}

fn part(pods: Vec<Pod>, s: &MeshSettings) -> MeshPart {
    let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
    mesh_part(&pods, s)
}

fn nodes(p: &MeshPart) -> Vec<String> {
    p.nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.tunnel))
        .collect()
}

#[test]
fn only_pods_of_the_mesh_namespace_with_every_proxy_label_are_node_proxies() {
    let chart = [
        ("app.kubernetes.io/name", "maille"),
        ("app.kubernetes.io/component", "proxy"),
    ];
    let p = part(
        vec![
            labelled(
                pod("maille", "proxy-1", "n1", "10.1.0.5", "maille-proxy"),
                &chart,
            ),
            // Same labels, another namespace: somebody else's pod claiming to be a proxy.
            labelled(pod("shop", "fake", "n2", "10.2.0.5", "default"), &chart),
            // One label only.
            labelled(
                pod("maille", "half", "n3", "10.3.0.5", "default"),
                &chart[..1],
            ),
            // A host-network proxy: its address is the node's, which is where it listens.
            {
                let mut p = labelled(pod("maille", "proxy-4", "n4", "fd00::4", "x"), &chart);
                p.spec.as_mut().unwrap().host_network = Some(true);
                p
            },
        ],
        &cluster(),
    );
    assert_eq!(nodes(&p), ["n1 10.1.0.5:15008", "n4 [fd00::4]:15008"]);
    // The others are workloads like any pod.
    let ips: Vec<_> = p.workloads.iter().map(|w| w.ip.as_str()).collect();
    assert_eq!(ips, ["10.2.0.5", "10.3.0.5"]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
}

#[test]
fn workloads_leave_out_host_network_finished_and_unscheduled_pods() {
    let mut host = pod("shop", "host", "n1", "192.168.0.1", "a");
    host.spec.as_mut().unwrap().host_network = Some(true);
    let mut done = pod("shop", "done", "n1", "10.0.0.2", "a");
    done.status.as_mut().unwrap().phase = Some("Failed".into());
    let mut pending = pod("shop", "pending", "n1", "10.0.0.3", "a");
    pending.spec.as_mut().unwrap().node_name = None;
    let mut no_sa = pod("shop", "no-sa", "n1", "10.0.0.4", "");
    no_sa.spec.as_mut().unwrap().service_account_name = None;
    let p = part(
        vec![
            host,
            done,
            pending,
            no_sa,
            pod("shop", "ok", "n2", "10.0.0.5", "b"),
        ],
        &strict(),
    );
    let w: Vec<_> = p
        .workloads
        .iter()
        .map(|w| format!("{} {} {}/{}", w.ip, w.node, w.namespace, w.service_account))
        .collect();
    assert_eq!(w, ["10.0.0.4 n1 shop/default", "10.0.0.5 n2 shop/b"]);
}

#[test]
fn one_address_two_pods_keeps_the_first_by_name_and_says_so() {
    let p = part(
        vec![
            pod("shop", "b", "n2", "10.0.0.1", "sb"),
            pod("shop", "a", "n1", "10.0.0.1", "sa"),
        ],
        &strict(),
    );
    assert_eq!(p.workloads.len(), 1);
    assert_eq!(p.workloads[0].service_account, "sa");
    assert!(
        p.problems[0].to_string().contains("shop/b"),
        "{:?}",
        p.problems
    );
    assert!(
        p.problems[0].to_string().contains("shop/a"),
        "{:?}",
        p.problems
    );
}

#[test]
fn hostile_pods_are_left_out_and_named_with_cut_values() {
    let proxy = [("app.kubernetes.io/name", "maille-proxy")];
    let annotated = |v: &str| {
        let mut p = labelled(pod("maille", "px", "n9", "10.9.0.1", "p"), &proxy);
        p.metadata.annotations = Some([(TUNNEL_PORT_ANNOTATION.to_string(), v.to_string())].into());
        p
    };
    for bad in ["0", "65536", "-1", "http", &"9".repeat(100_000)] {
        let p = part(vec![annotated(bad)], &strict());
        assert!(p.nodes.is_empty(), "{bad:.20}");
        let msg = p.problems[0].to_string();
        assert!(msg.contains("maille.io/tunnel-port"), "{msg:.300}");
        assert!(msg.len() < 400, "not cut: {} bytes", msg.len());
    }
    let ok = part(vec![annotated(" 16008 ")], &strict());
    assert_eq!(nodes(&ok), ["n9 10.9.0.1:16008"]);

    let long_node = "n".repeat(300);
    let p = part(
        vec![
            pod("shop", "a", &long_node, "10.0.0.1", "x"),
            pod("shop", "b", "n1", "not-an-ip", "x"),
            pod("shop", "c", "n1", "0.0.0.0", "x"),
            pod("shop", "d", "n1", "10.0.0.4", "Not_An_Account"),
        ],
        &strict(),
    );
    assert!(p.workloads.is_empty(), "{:?}", p.workloads);
    let all: Vec<String> = p.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        all[0].contains("spec.nodeName") && all[0].contains("300 bytes"),
        "{all:?}"
    );
    assert!(
        all[1].contains("status.podIP") && all[1].contains("not-an-ip"),
        "{all:?}"
    );
    assert!(all[2].contains("0.0.0.0"), "{all:?}");
    assert!(all[3].contains("Not_An_Account"), "{all:?}");
}

#[test]
fn nothing_is_listed_when_mtls_is_disabled() {
    let p = part(
        vec![labelled(
            pod("maille", "proxy", "n1", "10.0.0.1", "p"),
            &[("app.kubernetes.io/name", "maille-proxy")],
        )],
        &MeshSettings::default(),
    );
    assert_eq!(p, MeshPart::default());
}

#[test]
fn a_hundred_thousand_workloads_fit_and_the_proxy_takes_them() {
    let pods: Vec<Pod> = (0..100_000u32)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            pod(
                "shop",
                &format!("p{i}"),
                &format!("n{}", i % 500),
                &ip,
                "sa",
            )
        })
        .collect();
    let p = part(pods, &strict());
    assert_eq!(p.workloads.len(), 100_000);
    let mut table = config_model::testing::table(1, vec![]);
    table.mtls = MtlsMode::Strict;
    table.workloads = p.workloads;
    let t = config_model::Table::try_from(&table).unwrap();
    assert_eq!(t.workloads().len(), 100_000);
}

/// A pod change through the rebuild loop: one workload differs, no service; a pod update that
/// changes nothing the mesh reads makes no new version; the delta a proxy gets is that one
/// workload.
#[tokio::test]
async fn a_pod_change_changes_one_workload_and_a_readiness_flip_none() {
    let mut pods: Vec<Arc<Pod>> = (0..2_000u32)
        .map(|i| {
            let ip = format!("10.0.{}.{}", i >> 8, i & 255);
            Arc::new(pod("shop", &format!("p{i}"), "n1", &ip, "sa"))
        })
        .collect();
    let settings = crate::settings::Settings {
        mesh: strict(),
        ..crate::settings::Settings::default()
    };
    let api = crate::api::ApiState::new(0, tokio_util::sync::CancellationToken::new());
    let (out, _keep) = tokio::sync::watch::channel(None);
    let mut rebuilder = crate::rebuild::Rebuilder::new(settings, api.clone(), out);
    let snap = |pods: &[Arc<Pod>]| crate::snapshot::Snapshot {
        pods: pods.to_vec(),
        ..crate::snapshot::Snapshot::default()
    };
    let first = rebuilder.rebuild(&snap(&pods));
    assert_eq!(first.table.workloads.len(), 2_000);
    let v1 = api.current().unwrap().version;

    // Ready now: nothing the mesh reads.
    let mut flipped = (*pods[7]).clone();
    flipped.status.as_mut().unwrap().conditions = Some(vec![Default::default()]);
    pods[7] = Arc::new(flipped);
    rebuilder.rebuild(&snap(&pods));
    assert_eq!(api.current().unwrap().version, v1);
    assert!(!rebuilder.work().mesh);

    // Moved to another node.
    let mut moved = (*pods[7]).clone();
    moved.spec.as_mut().unwrap().node_name = Some("n2".into());
    pods[7] = Arc::new(moved);
    let second = rebuilder.rebuild(&snap(&pods));
    assert!(rebuilder.work().mesh);
    let (a, b) = (&first.table, &second.table);
    let c = a.changes(b);
    assert_eq!(
        second.lineage.as_ref().map(|l| &l.changes),
        Some(&c),
        "the translation says what changed, as a walk of both tables finds"
    );
    assert_eq!(c.workloads, ["10.0.0.7"]);
    assert!(c.services.is_empty() && !c.nodes);
    let v2 = api.current().unwrap().version;
    assert!(v2 > v1);
    let d = b.delta_with(
        v1,
        &c.services,
        c.workloads.iter().map(String::as_str),
        c.nodes,
    );
    assert_eq!(d.workloads_changed.len(), 1);
    assert_eq!(d.workloads_changed[0].node, "n2");
    assert!(serde_json::to_vec(&d).unwrap().len() < 300);
}

/// Issue 14 gap 4: the mesh part is kept per Pod event. Among 10,000 Pods, one Pod moving to
/// another node touches its own address only, and the index says what `mesh_part` over all the
/// Pods says.
#[test]
fn one_pod_change_among_ten_thousand_touches_one_workload() {
    let settings = strict();
    let mut pods: Vec<Arc<Pod>> = (0..10_000u32)
        .map(|i| {
            let ip = format!("10.1.{}.{}", i >> 8, i & 255);
            Arc::new(pod(
                "shop",
                &format!("p{i}"),
                &format!("n{}", i % 50),
                &ip,
                "sa",
            ))
        })
        .collect();
    // Two node proxies, one of them contested, and two Pods sharing an address.
    let proxy = |name: &str, node: &str, ip: &str| {
        labelled(
            pod("maille", name, node, ip, "proxy"),
            &[("app.kubernetes.io/name", "maille-proxy")],
        )
    };
    pods.push(Arc::new(proxy("proxy-a", "n1", "10.9.0.1")));
    pods.push(Arc::new(proxy("proxy-b", "n1", "10.9.0.2")));
    pods.push(Arc::new(pod("shop", "twin", "n3", "10.1.0.5", "sa")));
    let mut index = MeshIndex::default();
    let touched = index.update(&[], &pods, &settings);
    assert_eq!(touched.len(), 10_000);
    let same = |index: &MeshIndex, pods: &[Arc<Pod>]| {
        let whole = mesh_part(pods, &settings);
        assert!(!index.whole());
        assert_eq!(index.node_specs(), whole.nodes);
        assert_eq!(index.workloads(), whole.workloads);
        let (mut a, mut b) = (index.problems(), whole.problems);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    };
    same(&index, &pods);
    assert_eq!(index.problems().len(), 2, "{:?}", index.problems());

    let old = pods[4321].clone();
    let mut moved = (*old).clone();
    moved.spec.as_mut().unwrap().node_name = Some("n-other".into());
    pods[4321] = Arc::new(moved);
    let touched = index.update(&[old], &[pods[4321].clone()], &settings);
    assert_eq!(touched.into_iter().collect::<Vec<_>>(), ["10.1.16.225"]);
    assert_eq!(index.workload("10.1.16.225").unwrap().node, "n-other");
    same(&index, &pods);

    // The first proxy of n1 goes: the other one is n1's now.
    let gone = pods.remove(10_000);
    index.update(&[gone], &[], &settings);
    assert_eq!(index.node_specs()[0].tunnel, "10.9.0.2:15008");
    same(&index, &pods);
}
