//! End to end: a graceful upgrade of the real `maille-proxy` after the real `maille-controller`
//! sent it a delta, with the controller gone by then. The new process must route with the
//! table the old one served (the delta's version) from its first request: no 503 waiting for a
//! controller that does not answer. The controller and the first proxy are a
//! [`LocalMesh`] with an upgrade socket of its own.

use std::process::Command;
use std::time::{Duration, Instant};

use maille_controller::testing::{
    eventually, http_backend, http_get, start_proxy, write_manifest, KillOnDrop, LocalMesh,
};

/// An HTTP/1.1 backend that answers every request with its name.
fn backend(name: &'static str) -> u16 {
    http_backend(move |_| name.to_string())
}

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  clusterIP: {ip}\n  ports:\n    - name: http\n      port: 80\n      targetPort: http\n"
    )
}

fn slice(service: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions: {{ready: true}}\nports:\n  - name: http\n    port: {port}\n    protocol: TCP\n"
    )
}

fn signal(p: &KillOnDrop, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_a_delta_with_the_controller_down_serves_the_delta_s_table() {
    let (one, two, cart) = (backend("one"), backend("two"), backend("cart"));
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_manifest(&manifests, "web.yaml", &service("web", "10.96.0.20"));
    write_manifest(&manifests, "web-slice.yaml", &slice("web", one));

    let old_log = dir.path().join("old.log");
    let grace = [
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ];
    let mut mesh = LocalMesh::start_with(
        env!("CARGO_BIN_EXE_maille-controller"),
        &manifests,
        &grace,
        Some(&old_log),
    );
    let (api, http) = (mesh.api, mesh.http);
    let patience = Duration::from_secs(30);
    eventually(
        "the first (whole) table at the proxy",
        patience,
        async || {
            http_get(http, "web.shop.maille.mesh")
                .await
                .ok()
                .filter(|r| *r == (200, "one".into()))
        },
    )
    .await;

    // A change: web's endpoint moves, a service joins. The controller sends it as a delta.
    write_manifest(&manifests, "web-slice.yaml", &slice("web", two));
    write_manifest(&manifests, "cart.yaml", &service("cart", "10.96.0.21"));
    write_manifest(&manifests, "cart-slice.yaml", &slice("cart", cart));
    eventually("the change at the proxy", patience, async || {
        let web = http_get(http, "web.shop.maille.mesh").await.ok()?;
        let cart = http_get(http, "cart.shop.maille.mesh").await.ok()?;
        (web == (200, "two".into()) && cart == (200, "cart".into())).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&old_log).unwrap();
    assert!(
        log.contains("Routing table delta applied"),
        "the change did not come as a delta:\n{log}"
    );

    // The controller goes away; then the upgrade.
    mesh.stop_controller();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api)).is_err(),
        "controller still up"
    );
    let new_log = dir.path().join("new.log");
    let mut new = start_proxy(
        &[&mesh.proxy_args[..], &["--upgrade".into()]].concat(),
        Some(&new_log),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&mesh.proxy, "QUIT");
    let start = Instant::now();
    while mesh.proxy.0.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < patience,
            "old proxy still running after SIGQUIT:\n{}",
            std::fs::read_to_string(&old_log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The new process alone now; it routes with the delta's table at once.
    let logs = || {
        format!(
            "old:\n{}\nnew:\n{}",
            std::fs::read_to_string(&old_log).unwrap(),
            std::fs::read_to_string(&new_log).unwrap()
        )
    };
    for (host, body) in [
        ("cart.shop.maille.mesh", "cart"),
        ("web.shop.maille.mesh", "two"),
    ] {
        let r = http_get(http, host).await;
        assert_eq!(
            r,
            Ok((200, body.into())),
            "{host} after the upgrade\n{}",
            logs()
        );
    }
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "new proxy exited\n{}",
        logs()
    );
}
