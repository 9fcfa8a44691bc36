//! The fleet bench (issue 15 item 5): the real controller (manifests mode, through the
//! controller library, in this process) serving a cluster of many services to N simulated
//! proxies (the proxy's own controller client, in this process) and to the real `maille-proxy`
//! binary, under a churn of EndpointSlice edits; measured for each way of delivering a change
//! (the whole table, plain or gzip, or a delta). `src/bin/fleet.rs` runs it and prints the
//! tables; `benches/README.md` says how to read them.

pub mod cluster;
pub mod cpu;
pub mod real;
pub mod report;
pub mod sim;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use self::cluster::{Change, Cluster};
use self::real::{Ports, RealProxy};
use self::sim::Fleet;
use crate::fixtures;

/// Name of the in-process controller's threads.
pub const CONTROLLER_THREAD: &str = "fleet-ctl";
/// Thread name prefixes counted as the controller's CPU: its runtime and the file watcher
/// `notify` starts for the manifests folder.
const CONTROLLER_THREADS: [&str; 2] = [CONTROLLER_THREAD, "notify-rs"];

/// How a change reaches a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Delivery {
    /// The whole table as plain JSON at every change: the proxy before deltas and gzip (the
    /// baseline of the ratios).
    Full,
    /// The whole table, gzip (`--controller-deltas=false`).
    FullGzip,
    /// The service ports that changed, gzip when large (the default).
    Delta,
}

impl Delivery {
    /// The name in the tables and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Full => "full",
            Delivery::FullGzip => "full-gzip",
            Delivery::Delta => "delta",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Services in the cluster (one port each).
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Fleet sizes, one set of phases each.
    pub proxies: Vec<usize>,
    /// Deliveries measured, for the fleet and for the real proxy.
    pub deliveries: Vec<Delivery>,
    /// Changes per fleet phase (at most).
    pub changes: usize,
    /// No further change is started in a fleet phase once this long has gone by in its changes
    /// (at least two are made).
    pub phase_budget: Duration,
    /// The longest a proxy may take to get a change (or the first table) before the run fails.
    pub change_limit: Duration,
    /// Fleets larger than this are seeded from one first table ([`sim::Fleet::start_seeded`]),
    /// and the first table to all is measured on a fleet of this many proxies fetching it each;
    /// `None` never seeds.
    pub first_sample: Option<usize>,
    /// The `maille-proxy` binary to measure; none skips it.
    pub real_proxy: Option<PathBuf>,
    /// Changes for the real proxy, per delivery.
    pub real_changes: usize,
    /// The manifests folder (created, and removed after the run, with its sibling
    /// `<dir>.staging` where changed files are written before they are renamed into it).
    pub dir: PathBuf,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Options {
    /// The full run of the README: 10,000 services, 100 and 1,000 proxies.
    pub fn full(dir: PathBuf) -> Options {
        Options {
            services: 10_000,
            endpoints: 10,
            proxies: vec![100, 1000],
            deliveries: vec![Delivery::Full, Delivery::FullGzip, Delivery::Delta],
            changes: 10,
            phase_budget: Duration::from_secs(90),
            change_limit: Duration::from_secs(600),
            first_sample: Some(100),
            real_proxy: None,
            real_changes: 20,
            dir,
            progress: true,
        }
    }

    /// A smoke run small enough for the test suite: 200 services, 5 proxies, 3 changes.
    pub fn quick(dir: PathBuf) -> Options {
        Options {
            services: 200,
            endpoints: 10,
            proxies: vec![5],
            changes: 3,
            real_changes: 3,
            phase_budget: Duration::from_secs(30),
            change_limit: Duration::from_secs(60),
            first_sample: Some(2),
            progress: false,
            ..Options::full(dir)
        }
    }
}

/// When the controller reached each step of one change, from the file's rename: the new
/// table published (its version gauge moved: the 20 ms the file watcher waits for a burst to
/// settle, reading the changed file, translating, publishing) and the first waiting long-poll
/// answered with it (its count of tables sent moved). Seen by a thread reading the controller's
/// metrics every 200 µs, so each is late by at most that (or by how late the thread is woken).
#[derive(Clone, Copy, Debug, Default)]
pub struct Milestones {
    /// Rename to the new table published.
    pub published: Duration,
    /// Rename to the first long-poll answered with it.
    pub answered: Duration,
}

/// Watches the controller's metrics from the moment of a change (`t0`, the table version then
/// `before`, `sent` tables sent so far) until the table is published and a table sent; stops
/// when told to, whatever it saw. Both signals are counts that only grow, so no step can
/// be missed between two readings: a gauge of held long-polls can go down and back up between
/// them when the proxies ask again at once, which left an earlier form of this watch waiting
/// for its full time limit.
struct MilestoneWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Milestones>,
}

impl MilestoneWatch {
    fn start(t0: Instant, before: u64, sent: u64, limit: Duration) -> MilestoneWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut m = Milestones::default();
            while t0.elapsed() < limit {
                // Read before looking, so that the last look after `finish` still counts.
                let last = stopping.load(Ordering::Acquire);
                if m.published.is_zero() && table_version() > before {
                    m.published = t0.elapsed();
                }
                if !m.published.is_zero() && tables_sent() > sent {
                    m.answered = t0.elapsed();
                    break;
                }
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            m
        });
        MilestoneWatch { stop, handle }
    }

    /// Stops the watch (a step not seen by now stays zero) and returns what it saw.
    fn finish(self) -> Milestones {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// One change as the simulated fleet saw it.
#[derive(Clone, Debug)]
pub struct FleetChange {
    /// Where the controller's part of the time went.
    pub milestones: Milestones,
    /// From the file's rename to each proxy's `poll_once` returning with it.
    pub per_proxy: Vec<Duration>,
    /// To the last proxy.
    pub to_last: Duration,
    /// Table bodies the controller sent for it (all proxies).
    pub bytes: u64,
    /// Controller CPU from the edit until every proxy has it and is waiting again.
    pub controller_cpu: Duration,
    /// The simulated proxies' CPU over the same span.
    pub fleet_cpu: Duration,
    /// The controller's rebuild time (`maille_controller_rebuild_duration_seconds`, wall).
    pub rebuild: Duration,
}

/// A fleet of one size, one delivery.
#[derive(Clone, Debug)]
pub struct FleetPhase {
    /// How changes were delivered.
    pub delivery: Delivery,
    /// Simulated proxies.
    pub proxies: usize,
    /// From starting the proxies to the last of them holding the first table.
    pub first_contact: Duration,
    /// How many proxies `first_contact` was measured on: all of them, or a sample when the
    /// fleet was seeded from one first table.
    pub first_sample: usize,
    /// Whether the fleet was seeded from one first table (shared until changed).
    pub seeded: bool,
    /// The changes.
    pub changes: Vec<FleetChange>,
    /// Failed polls (should be 0).
    pub errors: u64,
    /// Deltas that did not fit (should be 0).
    pub resyncs: u64,
}

/// One change as the real proxy saw it.
#[derive(Clone, Debug)]
pub struct RealChange {
    /// From the file's rename to the proxy's log line saying it applied the change.
    pub visible: Duration,
    /// Where that time went ([`Milestones`]).
    pub milestones: Milestones,
    /// What the proxy says its apply took (parse, apply, compile and swap).
    pub work: real::ApplyWork,
    /// The proxy's CPU from the edit until it has it and is waiting again.
    pub proxy_cpu: Duration,
    /// The controller's CPU over the same span (one proxy served).
    pub controller_cpu: Duration,
    /// Table body bytes the controller sent.
    pub bytes: u64,
}

/// The real `maille-proxy` with one delivery.
#[derive(Clone, Debug)]
pub struct RealPhase {
    /// How changes were delivered.
    pub delivery: Delivery,
    /// From start to its first table.
    pub first_table: Duration,
    /// Its CPU per second while idle, holding the table (subtracted from nothing; for scale).
    pub idle_cpu_per_second: Duration,
    /// The changes.
    pub changes: Vec<RealChange>,
    /// Resident memory after the changes.
    pub rss: u64,
    /// Peak resident memory.
    pub peak_rss: u64,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Services in the cluster.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// From starting the controller to its first table.
    pub controller_start: Duration,
    /// Size of the full table's JSON.
    pub table_bytes: u64,
    /// Fleet phases, in the order run.
    pub fleet: Vec<FleetPhase>,
    /// Real proxy phases.
    pub real: Vec<RealPhase>,
    /// Peak resident memory of this process (controller and simulated proxies).
    pub bench_peak_rss: u64,
}

fn metrics() -> &'static maille_controller::metrics::Metrics {
    maille_controller::metrics::register()
}

/// Table bodies the controller has sent, full and delta.
fn bytes_sent() -> u64 {
    ["full", "delta"]
        .iter()
        .map(|k| metrics().table_response_bytes.with_label_values(&[k]).get())
        .sum()
}

/// Tables the controller has sent, full and delta.
fn tables_sent() -> u64 {
    ["full", "delta"]
        .iter()
        .map(|k| metrics().table_responses.with_label_values(&[k]).get())
        .sum()
}

fn table_version() -> u64 {
    u64::try_from(metrics().table_version.get()).unwrap_or(0)
}

fn rebuild_time() -> Duration {
    Duration::from_secs_f64(metrics().rebuild_duration.get_sample_sum())
}

fn controller_cpu() -> Duration {
    cpu::threads_cpu(&CONTROLLER_THREADS)
}

/// Waits until exactly `n` long-polls are held by the controller (every proxy asked again).
fn wait_waiting(n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let held = metrics().longpoll_waiting.get();
        if usize::try_from(held).ok() == Some(n) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the controller holds {held} long-polls after {limit:?}, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The controller, on a runtime of its own.
struct Controller {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    url: String,
}

impl Controller {
    /// Starts the controller on `dir` and waits for its first table; returns how long that
    /// took. The API port is one the kernel says is free, tried again if taken meanwhile.
    fn start(
        dir: &std::path::Path,
        ports: Ports,
        long_polls: usize,
    ) -> anyhow::Result<(Controller, Duration)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(CONTROLLER_THREAD)
            .enable_all()
            .build()?;
        let start = Instant::now();
        for _ in 0..5 {
            let port = real::free_port()?;
            let cli = maille_controller::cli::Cli::try_parse_from([
                "maille-controller".to_string(),
                "--manifests".into(),
                dir.display().to_string(),
                "--api-addr".into(),
                format!("127.0.0.1:{port}"),
                "--max-long-polls-per-client".into(),
                long_polls.to_string(),
                "--max-long-polls".into(),
                long_polls.to_string(),
                "--http-ports".into(),
                format!("{}-{}", ports.http, ports.http),
                "--tcp-ports".into(),
                ports.tcp_range(),
            ])?;
            let shutdown = CancellationToken::new();
            let task = runtime.spawn(maille_controller::run::run_until(cli.run, shutdown.clone()));
            while table_version() == 0 && !task.is_finished() {
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("the controller built no table within 10 minutes");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if !task.is_finished() {
                let controller = Controller {
                    runtime: Some(runtime),
                    shutdown,
                    url: format!("http://127.0.0.1:{port}"),
                };
                return Ok((controller, start.elapsed()));
            }
            match runtime.block_on(task)? {
                Err(maille_controller::run::Error::Bind { .. }) => continue,
                Err(e) => return Err(e).context("the controller stopped"),
                Ok(()) => bail!("the controller stopped at once"),
            }
        }
        bail!("no free port for the controller's API after 5 tries")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn progress(opts: &Options, line: impl FnOnce() -> String) {
    if opts.progress {
        eprintln!("fleet: {}", line());
    }
}

/// Runs every phase and returns the figures. The manifests folder is removed at the end.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    Cluster::remove(&opts.dir);
    let result = run_in(opts);
    Cluster::remove(&opts.dir);
    result
}

fn run_in(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.services > 0 && opts.endpoints > 1,
        "need services and 2+ endpoints"
    );
    progress(opts, || {
        format!(
            "writing {} services ({} endpoints each) to {}",
            opts.services,
            opts.endpoints,
            opts.dir.display()
        )
    });
    let mut cluster = Cluster::write(&opts.dir, opts.services, opts.endpoints)?;
    let tcp_services = (0..opts.services)
        .filter(|&i| fixtures::tcp_slot(i).is_some())
        .count();
    let ports = Ports::free(u16::try_from(tcp_services.max(1))?)?;
    let most = opts.proxies.iter().copied().max().unwrap_or(0);
    let (controller, controller_start) = Controller::start(cluster.dir(), ports, most + 16)?;
    let table_bytes = full_table_bytes(&controller)?;
    progress(opts, || {
        format!(
            "controller up at {} in {controller_start:.1?}: table version {}, {} KiB",
            controller.url,
            table_version(),
            table_bytes / 1024
        )
    });

    let mut report = Report {
        services: opts.services,
        endpoints: opts.endpoints,
        controller_start,
        table_bytes,
        fleet: Vec::new(),
        real: Vec::new(),
        bench_peak_rss: 0,
    };
    if let Some(binary) = &opts.real_proxy {
        for &delivery in &opts.deliveries {
            if delivery == Delivery::Full {
                // The binary always takes gzip: its full-table figure is `full-gzip`.
                continue;
            }
            let phase = real_phase(opts, &controller, &mut cluster, binary, ports, delivery)?;
            report.real.push(phase);
        }
    }
    for &n in &opts.proxies {
        for &delivery in &opts.deliveries {
            let phase = fleet_phase(opts, &controller, &mut cluster, ports, n, delivery)?;
            report.fleet.push(phase);
        }
    }
    report.bench_peak_rss = cpu::rss(std::process::id()).map_or(0, |(_, peak)| peak);
    drop(controller);
    Ok(report)
}

/// The size of the full table the controller serves, plain JSON.
fn full_table_bytes(controller: &Controller) -> anyhow::Result<u64> {
    // One plain GET; the bytes counter says how large its body was.
    let before = bytes_sent();
    let addr = controller.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr)?;
    write!(
        stream,
        "GET /api/configuration HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink)?;
    anyhow::ensure!(
        sink.starts_with(b"HTTP/1.1 200"),
        "GET /api/configuration failed"
    );
    Ok(bytes_sent() - before)
}

/// Checks that every store shows the change: the service has the endpoints it should.
fn check_applied(fleet: &Fleet, change: &Change, http_port: u16) -> anyhow::Result<()> {
    for (i, store) in fleet.stores.iter().enumerate() {
        let table = store.load();
        let got = table
            .http_route(http_port, &change.host)
            .map(|id| table[id].endpoints.len());
        anyhow::ensure!(
            got == Some(change.ready),
            "simulated proxy {i}: {} has {got:?} endpoints at version {}, expected {}",
            change.host,
            table.version,
            change.ready
        );
    }
    Ok(())
}

fn fleet_phase(
    opts: &Options,
    controller: &Controller,
    cluster: &mut Cluster,
    ports: Ports,
    n: usize,
    delivery: Delivery,
) -> anyhow::Result<FleetPhase> {
    wait_waiting(0, Duration::from_secs(40))?;
    let label = format!("{n} simulated proxies, {}", delivery.label());
    let seeded = opts.first_sample.is_some_and(|k| n > k);
    let first_sample = if seeded {
        opts.first_sample.unwrap_or(n)
    } else {
        n
    };
    let start = Instant::now();
    let fleet = Fleet::start(&controller.url, first_sample, delivery)?;
    let mut held = vec![0u64; first_sample];
    let first = table_version();
    let mut have = 0;
    while have < first_sample {
        let left = opts.change_limit.saturating_sub(start.elapsed());
        let applied = match fleet.applied.recv_timeout(left) {
            Ok(a) => a,
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{label}: {have} of {first_sample} had the first table after {:?}",
                    opts.change_limit
                )
            }
            Err(RecvTimeoutError::Disconnected) => bail!("{label}: the proxies stopped"),
        };
        if held[applied.proxy] < first && applied.version >= first {
            have += 1;
        }
        held[applied.proxy] = applied.version;
    }
    let first_contact = start.elapsed();
    progress(opts, || {
        format!("{label}: first table to {first_sample} in {first_contact:.1?}")
    });
    let fleet = if seeded {
        drop(fleet);
        wait_waiting(0, Duration::from_secs(40))?;
        // The rest of the phase: n proxies holding one decoded table, each applying every
        // change on its own (benches/README.md says what is shared and why the figures hold).
        let seed = sim::Seed::fetch(&controller.url, delivery)?;
        anyhow::ensure!(
            seed.version() == table_version(),
            "{label}: seed not current"
        );
        let fleet = Fleet::start_seeded(&controller.url, n, delivery, &seed)?;
        progress(opts, || format!("{label}: {n} proxies seeded"));
        fleet
    } else {
        fleet
    };
    let mut held = vec![0u64; n];
    wait_waiting(n, Duration::from_secs(60))?;

    let changes_start = Instant::now();
    let mut changes = Vec::new();
    while changes.len() < opts.changes
        && (changes.len() < 2 || changes_start.elapsed() < opts.phase_budget)
    {
        let (change, pending) = cluster.change()?;
        let (before, sent) = (table_version(), tables_sent());
        let (c0, f0, b0, r0) = (
            controller_cpu(),
            cpu::threads_cpu(&[sim::THREAD_NAME]),
            bytes_sent(),
            rebuild_time(),
        );
        let t0 = Instant::now();
        pending.publish()?;
        let watch = MilestoneWatch::start(t0, before, sent, opts.change_limit);
        let mut got: Vec<Option<Instant>> = vec![None; n];
        let mut have = 0;
        while have < n {
            let left = opts.change_limit.saturating_sub(t0.elapsed());
            let applied = match fleet.applied.recv_timeout(left) {
                Ok(a) => a,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{label}: change {}: {have} of {n} proxies had it after {:?}",
                    changes.len() + 1,
                    opts.change_limit
                ),
                Err(RecvTimeoutError::Disconnected) => bail!("{label}: the proxies stopped"),
            };
            held[applied.proxy] = applied.version;
            if applied.version > before && got[applied.proxy].is_none() {
                got[applied.proxy] = Some(applied.at);
                have += 1;
            }
        }
        check_applied(&fleet, &change, ports.http)?;
        wait_waiting(n, Duration::from_secs(30))?;
        let per_proxy: Vec<Duration> = got
            .iter()
            .map(|at| {
                at.expect("every proxy has it")
                    .saturating_duration_since(t0)
            })
            .collect();
        let figures = FleetChange {
            milestones: watch.finish(),
            to_last: per_proxy.iter().copied().max().unwrap_or_default(),
            per_proxy,
            bytes: bytes_sent() - b0,
            controller_cpu: controller_cpu().saturating_sub(c0),
            fleet_cpu: cpu::threads_cpu(&[sim::THREAD_NAME]).saturating_sub(f0),
            rebuild: rebuild_time().saturating_sub(r0),
        };
        progress(opts, || {
            format!(
                "{label}: change {} ({}): published after {:.1?}, first answer {:.1?}, last proxy after {:.1?}, {} bytes/proxy, controller CPU {:.1?}",
                changes.len() + 1,
                change.host,
                figures.milestones.published,
                figures.milestones.answered,
                figures.to_last,
                figures.bytes / n as u64,
                figures.controller_cpu
            )
        });
        changes.push(figures);
    }
    let errors = fleet.errors.load(Ordering::Relaxed);
    let resyncs = fleet.resyncs.load(Ordering::Relaxed);
    drop(fleet);
    Ok(FleetPhase {
        delivery,
        proxies: n,
        first_contact,
        first_sample,
        seeded,
        changes,
        errors,
        resyncs,
    })
}

fn real_phase(
    opts: &Options,
    controller: &Controller,
    cluster: &mut Cluster,
    binary: &std::path::Path,
    ports: Ports,
    delivery: Delivery,
) -> anyhow::Result<RealPhase> {
    wait_waiting(0, Duration::from_secs(40))?;
    let label = format!("maille-proxy, {}", delivery.label());
    let start = Instant::now();
    let proxy = RealProxy::start(binary, &controller.url, ports, delivery == Delivery::Delta)?;
    proxy.wait_version(table_version(), opts.change_limit)?;
    let first_table = start.elapsed();
    wait_waiting(1, Duration::from_secs(30))?;
    // Let the start settle, then see what holding the table costs.
    std::thread::sleep(Duration::from_millis(500));
    let idle0 = cpu::process_cpu(proxy.pid());
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu_per_second = cpu::process_cpu(proxy.pid()).saturating_sub(idle0);
    progress(opts, || {
        format!("{label}: first table in {first_table:.1?}")
    });

    let mut changes = Vec::new();
    for k in 0..opts.real_changes {
        let (change, pending) = cluster.change()?;
        let (before, sent) = (table_version(), tables_sent());
        let (p0, c0, b0) = (
            cpu::process_cpu(proxy.pid()),
            controller_cpu(),
            bytes_sent(),
        );
        let t0 = Instant::now();
        pending.publish()?;
        let watch = MilestoneWatch::start(t0, before, sent, opts.change_limit);
        let line = proxy
            .wait_version(before + 1, opts.change_limit)
            .with_context(|| format!("{label}: change {} ({})", k + 1, change.host))?;
        let milestones = watch.finish();
        wait_waiting(1, Duration::from_secs(30))?;
        let figures = RealChange {
            visible: line.at.saturating_duration_since(t0),
            milestones,
            work: line.work,
            proxy_cpu: cpu::process_cpu(proxy.pid()).saturating_sub(p0),
            controller_cpu: controller_cpu().saturating_sub(c0),
            bytes: bytes_sent() - b0,
        };
        progress(opts, || {
            format!(
                "{label}: change {} visible after {:.1?} (published {:.1?}, answered {:.1?}; proxy parse {:?} apply {:?} swap {:?}), proxy CPU {:.1?}, controller CPU {:.1?}",
                k + 1,
                figures.visible,
                figures.milestones.published,
                figures.milestones.answered,
                figures.work.parse,
                figures.work.apply,
                figures.work.swap,
                figures.proxy_cpu,
                figures.controller_cpu
            )
        });
        changes.push(figures);
    }
    anyhow::ensure!(
        proxy.version() == Some(table_version()),
        "{label}: the proxy holds version {:?}, the controller serves {}",
        proxy.version(),
        table_version()
    );
    let (rss, peak_rss) = cpu::rss(proxy.pid()).context("proxy memory")?;
    Ok(RealPhase {
        delivery,
        first_table,
        idle_cpu_per_second,
        changes,
        rss,
        peak_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test of this crate's library that moves the controller's metrics (they are
    // per process): the fleet run itself is its own test binary.
    #[test]
    fn the_milestone_watch_sees_both_steps_even_when_the_waiting_long_polls_are_back() {
        let m = metrics();
        let (before, sent) = (table_version(), tables_sent());
        let t0 = Instant::now();
        // Nothing happens: told to stop, the watch stops at once, long before its limit.
        let quiet = MilestoneWatch::start(t0, before, sent, Duration::from_secs(600)).finish();
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
        assert_eq!(
            (quiet.published, quiet.answered),
            (Duration::ZERO, Duration::ZERO)
        );

        // Published, then every waiting long-poll answered and held again before the watch
        // looks: the held gauge is where it was, the count of tables sent is not.
        let t0 = Instant::now();
        let watch = MilestoneWatch::start(t0, before, sent, Duration::from_secs(600));
        m.longpoll_waiting.add(5);
        m.table_version.set(i64::try_from(before + 1).unwrap());
        m.table_responses.with_label_values(&["delta"]).inc_by(5);
        m.longpoll_waiting.sub(5);
        m.longpoll_waiting.add(5);
        std::thread::sleep(Duration::from_millis(20));
        let seen = watch.finish();
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
        assert!(!seen.published.is_zero(), "{seen:?}");
        assert!(seen.answered >= seen.published, "{seen:?}");
        m.longpoll_waiting.sub(5);
    }
}
