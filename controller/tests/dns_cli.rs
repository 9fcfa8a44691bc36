//! `maille-controller prepare` and `cleanup`, the real binary, against the fake API server over
//! loopback HTTP (a kubeconfig pointing at it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, KeyToPath, PodSpec, PodTemplateSpec, Service,
    Volume,
};
use kube::api::ObjectMeta;
use maille_controller::dns::{COREFILE_KEY, RESTART_ANNOTATION};
use maille_controller::naming;
use maille_controller::testing::fake_api::FakeApi;

fn testdata(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/dns/testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn coredns(image: &str) -> Deployment {
    Deployment {
        metadata: meta("kube-system", "coredns", &[("k8s-app", "kube-dns")]),
        spec: Some(DeploymentSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "coredns".into(),
                        image: Some(image.into()),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "config-volume".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "coredns".into(),
                            items: Some(vec![KeyToPath {
                                key: COREFILE_KEY.into(),
                                path: COREFILE_KEY.into(),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn corefile(api: &FakeApi) -> String {
    let cm: ConfigMap = api.get("kube-system", "coredns").unwrap();
    cm.data.unwrap()[COREFILE_KEY].clone()
}

/// Runs the binary with only the given arguments and no ambient Kubernetes or Maille settings.
async fn run(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_maille-controller"));
    cmd.args(args).kill_on_drop(true).env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("MAILLE_") || key == "KUBECONFIG" {
            cmd.env_remove(key);
        }
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("maille-controller finished within 60 s")
        .expect("maille-controller runs")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn prepare_then_cleanup_through_the_binary() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.7.in.Corefile");
    api.insert(&coredns("registry.k8s.io/coredns/coredns:v1.10.1"));
    api.insert(&ConfigMap {
        metadata: meta("kube-system", "coredns", &[]),
        data: Some(BTreeMap::from([(COREFILE_KEY.into(), original.clone())])),
        ..Default::default()
    });
    let shadow = naming::shadow_name("shop", "web").unwrap();
    api.insert(&Service {
        metadata: meta(
            "mesh",
            &shadow,
            &[
                (naming::MANAGED_BY_LABEL, naming::MANAGED_BY_VALUE),
                (naming::SOURCE_NAMESPACE_LABEL, "shop"),
                (naming::SOURCE_NAME_LABEL, "web"),
            ],
        ),
        ..Default::default()
    });
    let (addr, server) = api.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeApi::kubeconfig(addr)).unwrap();
    let kc = kubeconfig.to_str().unwrap();

    let out = run(&["prepare", "--kubeconfig", kc, "--namespace", "mesh"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let prepared = corefile(&api);
    assert!(
        prepared.contains("{1}-6d61696c6c65-{2}.mesh.svc.cluster.local\n"),
        "{prepared}"
    );
    assert!(prepared.starts_with(&original));
    let d: Deployment = api.get("kube-system", "coredns").unwrap();
    let annotations = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert!(annotations.contains_key(RESTART_ANNOTATION));

    api.clear_writes();
    let out = run(&["prepare", "--kubeconfig", kc, "--namespace", "mesh"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(api.writes(), Vec::<String>::new(), "second prepare wrote");

    let out = run(&["cleanup", "--kubeconfig", kc, "--namespace", "mesh"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(corefile(&api), original);
    assert!(api.get::<Service>("mesh", &shadow).is_none());
    server.abort();
}

#[tokio::test]
async fn prepare_fails_with_a_message_naming_the_object() {
    let api = FakeApi::new();
    api.insert(&coredns("registry.local/coredns@sha256:0123abcd"));
    let (addr, server) = api.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeApi::kubeconfig(addr)).unwrap();

    let out = run(&["prepare", "--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deployment kube-system/coredns") && stderr.contains("--coredns-version"),
        "{}",
        describe(&out)
    );
    assert_eq!(api.writes(), Vec::<String>::new());
    server.abort();
}
