//! The real `maille-controller` in manifests mode: a file that stops parsing and an object
//! defined twice are reported in `/api/services` and in the log, while the last good objects
//! keep being served.

use maille_controller::testing::write_manifest;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use maille_controller::testing::KillOnDrop;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80}]\n";
const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: canary, namespace: shop}\nspec: {service: web, backends: [{service: web, weight: 1}]}\n";

/// Waits until `ok` holds, polling; panics naming `what` after 20 s.
async fn eventually<T>(what: &str, mut ok: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = ok().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn broken_file_and_duplicate_reach_api_services_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "a.yaml", &format!("{SERVICE}---\n{SPLIT}"));
    write_manifest(dir.path(), "b.yaml", SPLIT);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_maille-controller"))
            .arg("--manifests")
            .arg(dir.path())
            .args(["--api-addr", "127.0.0.1:0", "--log-format", "json"])
            .env_remove("RUST_LOG")
            .env_remove("MAILLE_LOG")
            .env_remove("MAILLE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start maille-controller"),
    );
    let log: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let lines = BufReader::new(child.0.stderr.take().unwrap());
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    let logged = |needle: &'static str| {
        let log = log.clone();
        move || {
            log.lock()
                .unwrap()
                .iter()
                .find(|v| v.to_string().contains(needle))
                .cloned()
        }
    };
    let listening = logged("API listening");
    let line = eventually("the API address in the log", async || listening()).await;
    let addr = line["fields"]["addr"]
        .as_str()
        .or_else(|| line["addr"].as_str())
        .unwrap_or_else(|| panic!("no addr in {line}"))
        .to_string();
    let http = reqwest::Client::new();
    let rows = async || -> Option<Vec<serde_json::Value>> {
        let r = http
            .get(format!("http://{addr}/api/services"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    };
    let row = |rows: &[serde_json::Value], kind: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind || (kind == "port" && r["port"] == 80))
            .cloned()
    };

    // The duplicate: one row on the TrafficSplit, one warning; the service is served.
    let split = eventually("the duplicate's row", async || {
        let rows = rows().await?;
        row(&rows, "port")?;
        row(&rows, "TrafficSplit")
    })
    .await;
    assert_eq!(split["name"], "canary", "{split}");
    assert!(
        split["errors"][0]
            .as_str()
            .unwrap()
            .contains("defined more than once"),
        "{split}"
    );
    let warned = logged("defined more than once");
    let w = eventually("the duplicate in the log", async || warned()).await;
    assert_eq!(w["level"], "WARN", "{w}");

    // a.yaml stops parsing: reported on a File row and in the log, its objects still used.
    write_manifest(dir.path(), "a.yaml", "kind: [unclosed\n");
    let file = eventually("the broken file's row", async || {
        row(&rows().await?, "File")
    })
    .await;
    assert!(file["name"].as_str().unwrap().ends_with("a.yaml"), "{file}");
    let error = file["errors"][0].as_str().unwrap().to_string();
    assert!(error.contains("not valid YAML"), "{error}");
    assert!(error.contains("still used"), "{error}");
    let web = row(&rows().await.unwrap(), "port").expect("web is still listed");
    assert_eq!(web["meshPort"], 5000, "{web}");
    let warned = logged("not valid YAML");
    let w = eventually("the broken file in the log", async || warned()).await;
    assert_eq!(w["level"], "WARN", "{w}");
    assert!(w.to_string().contains("a.yaml"), "{w}");

    // Fixed: the File row goes, and the log says the problem is resolved.
    write_manifest(dir.path(), "a.yaml", SERVICE);
    eventually("the File row gone", async || {
        let rows = rows().await?;
        row(&rows, "File").is_none().then_some(())
    })
    .await;
    let resolved = logged("Problem resolved");
    eventually("the resolution in the log", async || resolved()).await;
}
