//! End to end: the real `maille-controller` on a manifests folder, the real `maille-proxy`
//! pulling from it, real backends on loopback. Edits to the folder must reach the traffic
//! within a second.
//!
//! `scripts/test-all` builds every binary before the tests; the proxy binary is looked up next
//! to this test's own target directory.

use maille_controller::testing::write_manifest;
use std::time::Duration;

use maille_controller::testing::{eventually, http_backend, http_get, LocalMesh};

/// An HTTP/1.1 backend that answers every request with its name.
fn backend(name: &'static str) -> u16 {
    http_backend(move |_| name.to_string())
}

/// One request on a fresh connection; returns (status, body).
async fn get(port: u16, host: &str) -> Option<(u16, String)> {
    http_get(port, host).await.ok()
}

fn service(traffic_type: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    maille.io/traffic-type: {traffic_type}\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n    - name: http\n      port: 80\n      targetPort: http\n"
    )
}

fn slice(name: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions: {{ready: true}}\nports:\n  - name: http\n    port: {port}\n    protocol: TCP\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_manifest_edits_within_a_second() {
    let (one, two, three) = (backend("one"), backend("two"), backend("three"));
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "service.yaml", &service("http"));
    write_manifest(dir.path(), "slice-1.yaml", &slice("web-1", one));
    write_manifest(dir.path(), "slice-2.yaml", &slice("web-2", two));

    let mesh = LocalMesh::start(env!("CARGO_BIN_EXE_maille-controller"), dir.path());
    let (http, tcp) = (mesh.http, mesh.tcp);
    let host = "web.shop.maille.mesh";
    let second = Duration::from_secs(1);
    // `n` requests; the bodies of those answered 200.
    let bodies = async |n: usize| -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..n {
            if let Some((200, body)) = get(http, host).await {
                seen.push(body);
            }
        }
        seen
    };

    // Both endpoints serve through the mesh name (and the ClusterIP as Host).
    eventually(
        "first table at the proxy",
        Duration::from_secs(30),
        async || get(http, host).await.filter(|(s, _)| *s == 200),
    )
    .await;
    let seen = bodies(40).await;
    assert_eq!(seen.len(), 40, "every request through the mesh succeeds");
    assert!(
        seen.iter().any(|b| b == "one") && seen.iter().any(|b| b == "two"),
        "{seen:?}"
    );
    assert_eq!(get(http, "10.96.0.20:80").await.map(|(s, _)| s), Some(200));
    assert_eq!(
        get(http, "nope.shop.maille.mesh").await.map(|(s, _)| s),
        Some(404)
    );

    // A new endpoint is used within a second.
    write_manifest(dir.path(), "slice-3.yaml", &slice("web-3", three));
    eventually("new endpoint in rotation", second, async || {
        bodies(6).await.iter().any(|b| b == "three").then_some(())
    })
    .await;

    // Removing an endpoint takes it out of rotation.
    std::fs::remove_file(dir.path().join("slice-1.yaml")).unwrap();
    eventually("removed endpoint out of rotation", second, async || {
        let seen = bodies(12).await;
        (seen.len() == 12 && !seen.iter().any(|b| b == "one")).then_some(())
    })
    .await;

    // Changing the traffic type moves the service from the HTTP port to the TCP port.
    write_manifest(dir.path(), "service.yaml", &service("tcp"));
    eventually("service leaves the HTTP listener", second, async || {
        get(http, host).await.filter(|(s, _)| *s == 404)
    })
    .await;
    eventually("service reachable on its TCP port", second, async || {
        get(tcp, "anything")
            .await
            .filter(|(s, b)| *s == 200 && (b == "two" || b == "three"))
    })
    .await;

    // Removing the service removes its route.
    std::fs::remove_file(dir.path().join("service.yaml")).unwrap();
    eventually("TCP route gone", second, async || {
        get(tcp, "anything").await.is_none().then_some(())
    })
    .await;
}
