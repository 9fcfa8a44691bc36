//! Route lookup cost in one plain loop, for comparing two trees with the same harness when a
//! criterion baseline of the older tree cannot be built (benches/README.md, "Route lookup
//! before and after the host index change"): `Table::http_route` on the fixture table's own
//! hosts in turn (hit), the same in upper case, and unknown hosts (miss); the best of
//! `--rounds` rounds of `--lookups` lookups, in nanoseconds per lookup. The criterion bench
//! `route_lookup` measures the same lookups with statistics. The table is written here as JSON
//! text (plain HTTP services, 10 endpoints each, 50 namespaces) and read with
//! `Table::from_json`, the one interface every tree has, so the file builds unchanged in an
//! older tree.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use config_model::Table;

const MESH_PORT: u16 = 5000;

/// Prints nanoseconds per lookup for tables of the given sizes.
#[derive(Parser, Debug)]
struct Args {
    /// Table sizes (services), 10 endpoints each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Lookups per round.
    #[arg(long, default_value_t = 3_000_000)]
    lookups: usize,
    /// Rounds; the best is printed.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn main() {
    let args = Args::parse();
    for &n in &args.services {
        let (table, hosts) = table(n);
        let upper: Vec<String> = hosts.iter().map(|h| h.to_ascii_uppercase()).collect();
        let unknown: Vec<String> = hosts.iter().map(|h| format!("nope-{h}")).collect();
        for (label, list, expect_found) in [
            ("hit", &hosts, true),
            ("hit_upper_case", &upper, true),
            ("miss_unknown_host", &unknown, false),
        ] {
            let mut best = f64::MAX;
            for _ in 0..args.rounds.max(1) {
                let start = Instant::now();
                let mut found = 0usize;
                for k in 0..args.lookups {
                    let host = black_box(list[k % list.len()].as_str());
                    found += usize::from(table.http_route(MESH_PORT, host).is_some());
                }
                let per = start.elapsed().as_nanos() as f64 / args.lookups.max(1) as f64;
                assert_eq!(
                    found == args.lookups,
                    expect_found,
                    "{label}: {found} of {} found",
                    args.lookups
                );
                best = best.min(per);
            }
            println!("services={n} {label} best_ns={best:.1}");
        }
    }
}

/// A table of `n` HTTP services on mesh port 5000 and their hosts.
fn table(n: usize) -> (Table, Vec<String>) {
    let octets = |x: usize| format!("{}.{}.{}", (x >> 16) & 255, (x >> 8) & 255, x & 255);
    let mut services = Vec::with_capacity(n);
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        let (ns, name) = (format!("ns-{}", i % 50), format!("svc-{i}"));
        let endpoints: Vec<String> = (0..10)
            .map(|j| format!(r#"{{"address":"11.{}:8080"}}"#, octets(i * 10 + j)))
            .collect();
        services.push(format!(
            r#"{{"namespace":"{ns}","name":"{name}","port":80,"meshPort":{MESH_PORT},"trafficType":"http","clusterIp":"10.{}","endpoints":[{}]}}"#,
            octets(i),
            endpoints.join(",")
        ));
        hosts.push(format!("{name}.{ns}.maille.mesh"));
    }
    let json = format!(
        r#"{{"schemaVersion":1,"version":1,"services":[{}]}}"#,
        services.join(",")
    );
    let table = Table::from_json(json.as_bytes()).expect("the table validates");
    (table, hosts)
}
