//! `maille-controller prepare` and `cleanup`, the real binary, against the fake API server over
//! loopback HTTP (a kubeconfig pointing at it).

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use maille_controller::dns::{COREFILE_KEY, RESTART_ANNOTATION};
use maille_controller::naming;
use maille_controller::testing::dns::{configmap, coredns, corefile, meta, testdata};
use maille_controller::testing::FakeApi;

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
    api.insert(&coredns(
        "registry.k8s.io/coredns/coredns:v1.10.1",
        "coredns",
    ));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
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
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, server) = api.serve_kubeconfig(dir.path()).await.unwrap();
    let kc = kubeconfig.to_str().unwrap();

    let out = run(&["prepare", "--kubeconfig", kc, "--namespace", "mesh"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let prepared = corefile(&api, "coredns");
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
    assert_eq!(corefile(&api, "coredns"), original);
    assert!(api.get::<Service>("mesh", &shadow).is_none());
    server.abort();
}

#[tokio::test]
async fn prepare_fails_with_a_message_naming_the_object() {
    let api = FakeApi::new();
    api.insert(&coredns(
        "registry.local/coredns@sha256:0123abcd",
        "coredns",
    ));
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, server) = api.serve_kubeconfig(dir.path()).await.unwrap();

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
