//! The real `maille-proxy` binary against the bench's controller: started with JSON logs on
//! stderr, from which a thread takes the moment each table is swapped in or each delta applied
//! (`Routing table swapped in`, `Routing table delta applied`, with its `version`). Its CPU and
//! memory come from `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One table the proxy applied, from its log line.
#[derive(Clone, Copy, Debug)]
pub struct AppliedLine {
    /// The version it applied.
    pub version: u64,
    /// When the line was read.
    pub at: Instant,
    /// What the proxy says the apply took (its `parse_us`, `apply_us`, `swap_us` fields).
    pub work: ApplyWork,
}

/// Where the proxy says an apply's time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyWork {
    /// Reading the JSON (into a validated table, or a delta).
    pub parse: Duration,
    /// Building the next table from the one held (deltas only).
    pub apply: Duration,
    /// Compiling and swapping it in.
    pub swap: Duration,
}

/// Tables the proxy applied, and its last log lines.
#[derive(Default)]
struct Seen {
    applied: Vec<AppliedLine>,
    tail: Vec<String>,
    ended: bool,
}

/// A running `maille-proxy`; dropping it kills it.
pub struct RealProxy {
    child: Child,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

/// The ports a real proxy listens on: those the controller puts in the table, so that every
/// service of it is routable (a service on a port without a listener is warned about once per
/// table, which would be measured instead of the table update).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// The one HTTP mesh port.
    pub http: u16,
    /// The first of the TCP mesh ports.
    pub tcp_first: u16,
    /// How many TCP mesh ports.
    pub tcp_count: u16,
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Ports {
    /// Free ports on 127.0.0.1: the HTTP port and a run of `tcp_count` consecutive TCP ports
    /// (probed by binding; ephemeral ports the kernel handed out).
    pub fn free(tcp_count: u16) -> anyhow::Result<Ports> {
        let http = free_port()?;
        for _ in 0..200 {
            let first = free_port()?;
            if first == http || first.checked_add(tcp_count).is_none() {
                continue;
            }
            let run = first..first + tcp_count;
            if !run.contains(&http) && run.clone().all(bindable) {
                return Ok(Ports {
                    http,
                    tcp_first: first,
                    tcp_count,
                });
            }
        }
        anyhow::bail!("no run of {tcp_count} free consecutive TCP ports found on 127.0.0.1")
    }

    /// `--tcp-ports` of both programs.
    pub fn tcp_range(&self) -> String {
        format!(
            "{}-{}",
            self.tcp_first,
            self.tcp_first + self.tcp_count.max(1) - 1
        )
    }
}

/// A port the kernel says is free now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the `maille-proxy` binary of this build is: next to this program, or one folder up
/// (a test runs from `target/<profile>/deps`).
pub fn binary_next_to_this_one() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [dir, dir.parent()?]
        .into_iter()
        .map(|d| d.join("maille-proxy"))
        .find(|p| p.is_file());
    found
}

/// The version and timings in one JSON log line of a table being applied.
fn applied_version(line: &str) -> Option<(u64, ApplyWork)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = v.get("message")?.as_str()?;
    if message != "Routing table swapped in" && message != "Routing table delta applied" {
        return None;
    }
    let us =
        |field: &str| Duration::from_micros(v.get(field).and_then(|f| f.as_u64()).unwrap_or(0));
    let work = ApplyWork {
        parse: us("parse_us"),
        apply: us("apply_us"),
        swap: us("swap_us"),
    };
    Some((v.get("version")?.as_u64()?, work))
}

impl RealProxy {
    /// Starts `binary` pulling from `controller` (`http://…`), asking for deltas or not.
    pub fn start(
        binary: &Path,
        controller: &str,
        ports: Ports,
        deltas: bool,
    ) -> anyhow::Result<RealProxy> {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut child = Command::new(binary)
            .args(["--controller-url", controller])
            .args(["--controller-deltas", if deltas { "true" } else { "false" }])
            .args(["--listen-ip", "127.0.0.1"])
            .args(["--http-ports", &ports.http.to_string()])
            .args(["--tcp-ports", &ports.tcp_range()])
            .args(["--udp-ports", "none"])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--threads", "1"])
            .args(["--log", "info", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("proxy stderr")?;
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let s = seen.clone();
        std::thread::Builder::new()
            .name("fleet-proxy-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let (lock, cond) = &*s;
                    let mut seen = lock.lock().expect("log lock");
                    if let Some((version, work)) = applied_version(&line) {
                        seen.applied.push(AppliedLine { version, at, work });
                        cond.notify_all();
                    }
                    if seen.tail.len() >= 20 {
                        seen.tail.remove(0);
                    }
                    seen.tail.push(line);
                }
                let (lock, cond) = &*s;
                lock.lock().expect("log lock").ended = true;
                cond.notify_all();
            })?;
        Ok(RealProxy { child, seen })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the proxy has applied a table of at least `version`; returns its log line
    /// (when it was read, and the timings it gives).
    pub fn wait_version(&self, version: u64, limit: Duration) -> anyhow::Result<AppliedLine> {
        let deadline = Instant::now() + limit;
        let (lock, cond) = &*self.seen;
        let mut seen = lock.lock().expect("log lock");
        loop {
            if let Some(line) = seen.applied.iter().find(|l| l.version >= version) {
                return Ok(*line);
            }
            let now = Instant::now();
            if seen.ended || now >= deadline {
                anyhow::bail!(
                    "maille-proxy did not apply version {version} within {limit:?}{}; its last log lines:\n{}",
                    if seen.ended { " (it exited)" } else { "" },
                    seen.tail.join("\n")
                );
            }
            seen = cond.wait_timeout(seen, deadline - now).expect("log lock").0;
        }
    }

    /// The version of the last table applied.
    pub fn version(&self) -> Option<u64> {
        let seen = self.seen.0.lock().expect("log lock");
        seen.applied.last().map(|l| l.version)
    }
}

impl Drop for RealProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_versions_are_read_from_json_log_lines() {
        let line = r#"{"timestamp":"2026-12-03T02:00:00Z","level":"INFO","message":"Routing table delta applied","origin":"http://x","version":42,"changed":1,"parse_us":12,"apply_us":900,"swap_us":1100,"target":"maille_proxy::source"}"#;
        let work = ApplyWork {
            parse: Duration::from_micros(12),
            apply: Duration::from_micros(900),
            swap: Duration::from_micros(1100),
        };
        assert_eq!(applied_version(line), Some((42, work)));
        let line = r#"{"message":"Routing table swapped in","version":7}"#;
        assert_eq!(applied_version(line), Some((7, ApplyWork::default())));
        assert_eq!(
            applied_version(r#"{"message":"Routing table refused","version":8}"#),
            None
        );
        assert_eq!(applied_version("Routing table swapped in version=9"), None);
    }

    #[test]
    fn free_ports_do_not_overlap() {
        let p = Ports::free(5).unwrap();
        assert!(!(p.tcp_first..p.tcp_first + 5).contains(&p.http));
        assert_eq!(
            p.tcp_range(),
            format!("{}-{}", p.tcp_first, p.tcp_first + 4)
        );
    }
}
