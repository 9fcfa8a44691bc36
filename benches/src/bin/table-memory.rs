//! Memory of a held routing table, measured with a counting global allocator, by part: the
//! validated table (the model) and the compiled runtime the proxy builds from it (endpoint
//! plans and statistics, pickers, resilience state, metric series), per service and per
//! endpoint; and the peaks while parsing and compiling. Each measurement runs in a process of
//! its own, so that no metric series or allocator state of one carries into the next.

use std::process::Command;

use clap::Parser;
use config_model::Table;
use maille_benches::alloc_count::{self, CountingAlloc};
use maille_benches::fixtures;
use maille_proxy::TableStore;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Prints the bytes a held table takes, for tables of the given sizes.
#[derive(Parser, Debug)]
struct Args {
    /// Table sizes (services) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Endpoints per service (each size is also measured with one endpoint per service, to
    /// tell what a service costs from what an endpoint costs).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Give every endpoint a node (as a mesh with mutual TLS has), so that the runtime keeps
    /// where each endpoint runs.
    #[arg(long)]
    nodes: bool,
    /// Write the fixture table (`--services`' first size, `--endpoints`, `--nodes`) as JSON to
    /// this file and exit: a table for `maille-proxy --config` when measuring the real
    /// process's resident memory (benches/README.md, "Memory of a held table").
    #[arg(long)]
    write_json: Option<std::path::PathBuf>,
    /// Measure one table in this process and print its figures as one line (what the parent
    /// runs in a child process per measurement).
    #[arg(long, hide = true)]
    one: Option<String>,
}

/// What one measurement gives, in bytes (allocations: a count).
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    json: usize,
    spec: usize,
    model: usize,
    parse_peak: usize,
    runtime: usize,
    metrics: usize,
    compile_peak: usize,
    allocations: u64,
}

impl Figures {
    const FIELDS: usize = 8;

    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.json,
            self.spec,
            self.model,
            self.parse_peak,
            self.runtime,
            self.metrics,
            self.compile_peak,
            self.allocations
        )
    }

    fn parse(line: &str) -> Option<Figures> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() != Self::FIELDS {
            return None;
        }
        let u = |i: usize| v[i] as usize;
        Some(Figures {
            json: u(0),
            spec: u(1),
            model: u(2),
            parse_peak: u(3),
            runtime: u(4),
            metrics: u(5),
            compile_peak: u(6),
            allocations: v[7],
        })
    }
}

fn fixture_json(services: usize, endpoints: usize, nodes: bool) -> Vec<u8> {
    let mut spec = fixtures::table(services, endpoints);
    if nodes {
        for (i, svc) in spec.services.iter_mut().enumerate() {
            for (j, e) in svc.endpoints.iter_mut().enumerate() {
                e.node = Some(format!("node-{}", (i * endpoints + j) % 100));
            }
        }
    }
    serde_json::to_vec(&spec).expect("a table spec always serializes")
}

/// Measures one table: the wire form alone; then the table as the proxy reads it (the JSON
/// dropped after); then a store compiling it, whose metric series are new to the process; then
/// a second store compiling the same table again, whose series exist already: the difference
/// is what the series cost.
fn measure(services: usize, endpoints: usize, nodes: bool) -> Figures {
    let json = fixture_json(services, endpoints, nodes);

    let before = alloc_count::live_bytes();
    let spec: config_model::TableSpec = serde_json::from_slice(&json).expect("fixture parses");
    let spec_bytes = alloc_count::live_bytes() - before;
    drop(spec);

    let before = alloc_count::live_bytes();
    alloc_count::reset_peak();
    let table = Table::from_json(&json).expect("fixture validates");
    let parse_peak = alloc_count::peak_bytes() - before;
    let model = alloc_count::live_bytes() - before;

    let compile = |table: Table| {
        let store = TableStore::new();
        let before = alloc_count::live_bytes();
        let allocations = alloc_count::allocations();
        alloc_count::reset_peak();
        store.store(table);
        assert_eq!(store.load().len(), services);
        (
            store,
            alloc_count::live_bytes() - before,
            alloc_count::peak_bytes() - before,
            alloc_count::allocations() - allocations,
        )
    };
    let (first, with_series, compile_peak, allocations) = compile(table);
    let again = Table::from_json(&json).expect("fixture validates");
    let (second, runtime, _, _) = compile(again);
    drop((first, second));
    Figures {
        json: json.len(),
        spec: spec_bytes,
        model,
        parse_peak,
        runtime,
        metrics: with_series.saturating_sub(runtime),
        compile_peak,
        allocations,
    }
}

/// Runs [`measure`] in a child process.
fn measure_apart(services: usize, endpoints: usize, nodes: bool) -> Figures {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut cmd = Command::new(exe);
    cmd.arg("--one").arg(format!("{services},{endpoints}"));
    if nodes {
        cmd.arg("--nodes");
    }
    let out = cmd.output().expect("run a measurement");
    assert!(
        out.status.success(),
        "measurement failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Figures::parse(String::from_utf8_lossy(&out.stdout).trim()).expect("a line of figures")
}

fn main() {
    let args = Args::parse();
    if let Some(path) = &args.write_json {
        let n = args.services.first().copied().unwrap_or(10_000);
        std::fs::write(path, fixture_json(n, args.endpoints, args.nodes)).expect("write the table");
        return;
    }
    if let Some(one) = &args.one {
        let (s, e) = one.split_once(',').expect("--one services,endpoints");
        let f = measure(
            s.parse().expect("services"),
            e.parse().expect("endpoints"),
            args.nodes,
        );
        println!("{}", f.line());
        return;
    }
    println!(
        "| services | endpoints | JSON bytes | wire form (TableSpec) | held Table (model) | \
         peak parsing | runtime (compiled) | of which metric series | peak compiling | \
         model + runtime per service | allocations to compile |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut splits = Vec::new();
    for &n in &args.services {
        let mut rows = vec![(args.endpoints, measure_apart(n, args.endpoints, args.nodes))];
        if args.endpoints > 1 {
            rows.push((1, measure_apart(n, 1, args.nodes)));
        }
        for (e, f) in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                n,
                n * e,
                f.json,
                f.spec,
                f.model,
                f.parse_peak,
                f.runtime,
                f.metrics,
                f.compile_peak,
                (f.model + f.runtime + f.metrics) / n.max(1),
                f.allocations,
            );
        }
        if let [(e, many), (_, one)] = rows[..] {
            splits.push((n, e, many, one));
        }
    }
    if !splits.is_empty() {
        println!(
            "\n| services | part | per service (fixed) | per endpoint |\n|---:|---|---:|---:|"
        );
        for (n, e, many, one) in splits {
            let per = |a: usize, b: usize| {
                let per_endpoint = (a as f64 - b as f64) / ((e - 1) * n) as f64;
                (b as f64 / n as f64 - per_endpoint, per_endpoint)
            };
            for (part, a, b) in [
                ("model (Table)", many.model, one.model),
                ("runtime without series", many.runtime, one.runtime),
                ("metric series", many.metrics, one.metrics),
            ] {
                let (fixed, ep) = per(a, b);
                println!("| {n} | {part} | {fixed:.0} | {ep:.0} |");
            }
        }
    }
    println!(
        "\nBytes are what the program allocated (counting global allocator), without the \
         allocator's own overhead (size classes, pages it keeps). \"held Table\" is what stays \
         allocated once the JSON is dropped; \"runtime\" what compiling it in a store adds, \
         measured with the metric series already created; \"metric series\" what creating them \
         added the first time. Each row is a process of its own. Per service and per endpoint: \
         from the rows with {} endpoints and with one endpoint per service.",
        args.endpoints
    );
}
