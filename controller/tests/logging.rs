//! `--log` and `--log-format` of the real `maille-controller` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use maille_controller::testing::KillOnDrop;
use std::sync::mpsc;
use std::time::Duration;

fn controller(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maille-controller"));
    cmd.arg("--manifests")
        .arg(dir)
        .args(["--api-addr", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MAILLE_LOG")
        .env_remove("MAILLE_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn json_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = KillOnDrop(
        controller(dir.path(), &["--log-format", "json"])
            .spawn()
            .expect("start maille-controller"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The controller logs its start-up at info; check the first lines.
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a log line within 20 s");
    let mut lines = vec![first];
    lines.extend(rx.recv_timeout(Duration::from_secs(1)));
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(v["level"], "INFO", "{line}");
        assert!(v["message"].is_string(), "no top-level message: {line}");
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
    }
}

#[test]
fn text_format_is_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = KillOnDrop(controller(dir.path(), &[]).spawn().expect("start"));
    let stderr = child.0.stderr.take().expect("stderr");
    let mut first = String::new();
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("read a log line");
    assert!(first.contains("INFO"), "{first}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_err(),
        "{first}"
    );
}

#[test]
fn a_bad_log_filter_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = controller(dir.path(), &["--log", "maille_controller=loud"])
        .output()
        .expect("run maille-controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad filter: {stderr}");
    assert!(
        stderr.contains("--log") && stderr.contains("maille_controller=loud"),
        "{stderr}"
    );
}
