//! The mesh part of the table end to end, local mode: the real `maille-controller` on a
//! manifests folder that says where things run (node proxy Pods, client and server Pods with
//! `spec.nodeName`, EndpointSlice endpoints with `nodeName`). With `--identity-dir` the table is
//! strict and lists node proxies, workloads, endpoint nodes and identities; a Pod change is
//! served to a proxy holding the last table as a delta of that one workload; without
//! `--identity-dir` the table is what it always was.

use maille_controller::testing::write_manifest;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use config_model::{MtlsMode, TableDelta, TableSpec, DELTA_MEDIA_TYPE};
use maille_controller::api::ORIGIN_HEADER;
use maille_controller::testing::{eventually, free_port, KillOnDrop};

fn pod(name: &str, ns: &str, node: &str, ip: &str, sa: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
    )
}

const PROXY: &str = "{app.kubernetes.io/name: maille-proxy}";

fn write_folder(dir: &Path, client_sa: &str) {
    let pods = [
        pod(
            "proxy-a",
            "maille",
            "node-a",
            "127.0.0.2",
            "maille-proxy",
            PROXY,
        ),
        pod(
            "proxy-b",
            "maille",
            "node-b",
            "127.0.0.3",
            "maille-proxy",
            PROXY,
        ),
        pod("client", "shop", "node-a", "127.0.0.11", client_sa, "{}"),
        pod("web-1", "shop", "node-b", "127.0.0.20", "web", "{}"),
    ]
    .join("---\n");
    write_manifest(dir, "pods.yaml", &pods);
    write_manifest(
        dir,
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [\"127.0.0.20\"], nodeName: node-b}]\nports: [{name: http, port: 8080}]\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {name: any, namespace: shop}\nspec: {}\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: client-to-web, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: web}\n  rules: [{kind: TCPRoute, name: any}]\n  sources: [{kind: ServiceAccount, name: client}]\n",
    );
}

fn start(folder: &Path, extra: &[&str]) -> (KillOnDrop, String) {
    let api = free_port();
    let proc = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_maille-controller"))
            .arg("--manifests")
            .arg(folder)
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .arg("--acl")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-controller"),
    );
    (proc, format!("http://127.0.0.1:{api}/api/configuration"))
}

/// The table served, once it has the service.
async fn table(http: &reqwest::Client, url: &str) -> (TableSpec, String, String) {
    eventually(
        "a table with shop/web",
        Duration::from_secs(20),
        async || {
            let r = http.get(url).send().await.ok()?;
            let etag = r.headers().get("etag")?.to_str().ok()?.to_string();
            let origin = r.headers().get(ORIGIN_HEADER)?.to_str().ok()?.to_string();
            let t: TableSpec = r.json().await.ok()?;
            t.services
                .iter()
                .any(|s| s.name == "web")
                .then_some((t, etag, origin))
        },
    )
    .await
}

#[tokio::test]
async fn a_folder_of_two_nodes_gives_nodes_workloads_and_identities() {
    let folder = tempfile::tempdir().unwrap();
    let identity = tempfile::tempdir().unwrap();
    write_folder(folder.path(), "client");
    let id_dir = identity.path().join("ca");
    let (_c, url) = start(folder.path(), &["--identity-dir", id_dir.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let (t, etag, origin) = table(&http, &url).await;

    assert_eq!(
        t.mtls,
        MtlsMode::Strict,
        "strict by default with --identity-dir"
    );
    let nodes: Vec<_> = t
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.tunnel))
        .collect();
    assert_eq!(nodes, ["node-a 127.0.0.2:15008", "node-b 127.0.0.3:15008"]);
    let workloads: Vec<_> = t
        .workloads
        .iter()
        .map(|w| format!("{} {} {}/{}", w.ip, w.node, w.namespace, w.service_account))
        .collect();
    assert_eq!(
        workloads,
        [
            "127.0.0.11 node-a shop/client",
            "127.0.0.20 node-b shop/web"
        ]
    );
    let web = t.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.endpoints[0].node.as_deref(), Some("node-b"));
    assert_eq!(web.access[0].identities, ["shop/client"]);
    assert_eq!(web.access[0].sources, ["127.0.0.11"]);
    config_model::Table::try_from(&t).expect("a proxy accepts it");

    // The client Pod gets another ServiceAccount: a proxy holding this table gets a delta of
    // that one workload (and the access rule that lost its source).
    write_folder(folder.path(), "other");
    let d: TableDelta = eventually(
        "the delta of the pod change",
        Duration::from_secs(20),
        async || {
            let r = http
                .get(format!("{url}?wait=5s"))
                .header("If-None-Match", &etag)
                .header("Accept", DELTA_MEDIA_TYPE)
                .header(ORIGIN_HEADER, &origin)
                .send()
                .await
                .ok()?;
            if r.headers().get("content-type")?.to_str().ok()? != DELTA_MEDIA_TYPE {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    assert_eq!(d.workloads_changed.len(), 1, "{d:?}");
    assert_eq!(d.workloads_changed[0].ip, "127.0.0.11");
    assert_eq!(d.workloads_changed[0].service_account, "other");
    assert!(d.workloads_removed.is_empty() && d.nodes.is_none(), "{d:?}");
    assert_eq!(d.mtls, MtlsMode::Strict);
}

#[tokio::test]
async fn the_mode_follows_the_flag_and_without_identity_nothing_changes() {
    let folder = tempfile::tempdir().unwrap();
    write_folder(folder.path(), "client");
    let http = reqwest::Client::new();

    // No --identity-dir: disabled, and the table has none of the mesh fields.
    let (c, url) = start(folder.path(), &[]);
    let (t, _, _) = table(&http, &url).await;
    assert_eq!(t.mtls, MtlsMode::Disabled);
    assert!(t.nodes.is_empty() && t.workloads.is_empty());
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    for absent in ["mtls", "nodes", "workloads", "identities", "\"node\""] {
        assert!(!body.contains(absent), "{absent} in {body}");
    }
    drop(c);

    // Asked for explicitly, with another tunnel port.
    let (_c, url) = start(
        folder.path(),
        &["--mtls", "permissive", "--proxy-tunnel-port", "16008"],
    );
    let (t, _, _) = table(&http, &url).await;
    assert_eq!(t.mtls, MtlsMode::Permissive);
    assert_eq!(t.nodes[0].tunnel, "127.0.0.2:16008");

    // A bad mode is refused at start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_maille-controller"))
        .args(["--manifests", "/nonexistent", "--mtls", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sometimes") && err.contains("strict, permissive or disabled"),
        "{err}"
    );
}
