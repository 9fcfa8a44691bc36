//! End to end: a graceful upgrade of the real `maille-proxy` after the real `maille-controller`
//! sent it a delta, with the controller gone by then. The new process must route with the
//! table the old one served (the delta's version) from its first request: no 503 waiting for a
//! controller that does not answer.

use maille_controller::testing::write_manifest;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maille_controller::testing::{eventually, free_port, proxy_binary, KillOnDrop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 backend that answers every request with its name, one thread per connection.
fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                            name.len()
                        );
                        let _ = conn.write_all(reply.as_bytes());
                        return;
                    }
                }
            });
        }
    });
    port
}

/// One request on a fresh connection; (status, body), or why there is none.
async fn get(port: u16, host: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&out).into_owned())
    };
    let out = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s".to_string())??;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
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

/// The proxy, its log in `log`.
fn proxy(args: &[String], log: &Path) -> KillOnDrop {
    let out = File::create(log).unwrap();
    KillOnDrop(
        Command::new(proxy_binary())
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start maille-proxy"),
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

    let (api, http, admin) = (free_port(), free_port(), free_port());
    let controller = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_maille-controller"))
            .arg("--manifests")
            .arg(&manifests)
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--http-ports", &format!("{http}-{http}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-controller"),
    );
    let args: Vec<String> = [
        "--controller-url",
        &format!("http://127.0.0.1:{api}"),
        "--listen-ip",
        "127.0.0.1",
        "--admin-addr",
        &format!("127.0.0.1:{admin}"),
        "--http-ports",
        &http.to_string(),
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--upgrade-sock",
        &dir.path().join("upgrade.sock").display().to_string(),
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ]
    .map(String::from)
    .into();
    let old_log = dir.path().join("old.log");
    let mut old = proxy(&args, &old_log);
    let patience = Duration::from_secs(30);
    eventually(
        "the first (whole) table at the proxy",
        patience,
        async || {
            get(http, "web.shop.maille.mesh")
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
        let web = get(http, "web.shop.maille.mesh").await.ok()?;
        let cart = get(http, "cart.shop.maille.mesh").await.ok()?;
        (web == (200, "two".into()) && cart == (200, "cart".into())).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&old_log).unwrap();
    assert!(
        log.contains("Routing table delta applied"),
        "the change did not come as a delta:\n{log}"
    );

    // The controller goes away; then the upgrade.
    drop(controller);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api)).is_err(),
        "controller still up"
    );
    let new_log = dir.path().join("new.log");
    let mut new = proxy(&[&args[..], &["--upgrade".into()]].concat(), &new_log);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&old, "QUIT");
    let start = Instant::now();
    while old.0.try_wait().unwrap().is_none() {
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
        let r = get(http, host).await;
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
