//! The fleet bench: the controller with a cluster of many services, N simulated proxies and the
//! real `maille-proxy` under a churn of EndpointSlice edits, for full-table and delta delivery.
//! Prints the tables of `benches/README.md` ("The fleet bench") on stdout, progress on stderr.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use maille_benches::fleet::{self, real, Delivery, Options};

/// Runs the fleet bench (defaults: the README's full run).
#[derive(Parser, Debug)]
struct Args {
    /// The smoke run: 200 services, 5 proxies, 3 changes (other flags still apply).
    #[arg(long)]
    quick: bool,
    /// Services in the cluster.
    #[arg(long)]
    services: Option<usize>,
    /// Endpoints per service.
    #[arg(long)]
    endpoints: Option<usize>,
    /// Fleet sizes (comma-separated); 0 for none (the real proxy alone).
    #[arg(long, value_delimiter = ',')]
    proxies: Option<Vec<usize>>,
    /// Deliveries to measure (comma-separated): full, full-gzip, delta.
    #[arg(long, value_delimiter = ',', value_enum)]
    deliveries: Option<Vec<Delivery>>,
    /// Changes per fleet phase, at most.
    #[arg(long)]
    changes: Option<usize>,
    /// Seconds after which a fleet phase starts no further change (at least 2 are made).
    #[arg(long)]
    phase_budget: Option<u64>,
    /// Changes for the real proxy, per delivery.
    #[arg(long)]
    real_changes: Option<usize>,
    /// The `maille-proxy` binary (default: the one next to this program).
    #[arg(long)]
    proxy_binary: Option<PathBuf>,
    /// Fleets larger than this are seeded from one first table, and the first table to all is
    /// measured on this many proxies fetching it each (default 100; --quick: 2).
    #[arg(long)]
    first_table_sample: Option<usize>,
    /// Never seed: every simulated proxy fetches and holds its own first table (1,000 proxies
    /// at 10,000 services then need about 35 GB).
    #[arg(long)]
    no_seed: bool,
    /// Do not measure the real proxy.
    #[arg(long)]
    no_real_proxy: bool,
    /// The manifests folder (created, then removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("maille-fleet-{}", std::process::id()))
    });
    let mut opts = if args.quick {
        Options::quick(dir)
    } else {
        Options::full(dir)
    };
    opts.progress = true;
    opts.services = args.services.unwrap_or(opts.services);
    opts.endpoints = args.endpoints.unwrap_or(opts.endpoints);
    opts.proxies = args.proxies.unwrap_or(opts.proxies);
    opts.proxies.retain(|&n| n > 0);
    opts.deliveries = args.deliveries.unwrap_or(opts.deliveries);
    opts.deliveries.sort();
    opts.deliveries.dedup();
    opts.changes = args.changes.unwrap_or(opts.changes);
    opts.real_changes = args.real_changes.unwrap_or(opts.real_changes);
    if let Some(k) = args.first_table_sample {
        opts.first_sample = Some(k);
    }
    if args.no_seed {
        opts.first_sample = None;
    }
    if let Some(s) = args.phase_budget {
        opts.phase_budget = Duration::from_secs(s);
    }
    if !args.no_real_proxy {
        let binary = args
            .proxy_binary
            .or_else(real::binary_next_to_this_one)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no maille-proxy next to this program: build it in the same profile \
                     (cargo build --release -p maille-proxy), pass --proxy-binary, or --no-real-proxy"
                )
            })?;
        opts.real_proxy = Some(binary);
    }
    let report = fleet::run(&opts)?;
    print!("{}", fleet::report::markdown(&report));
    Ok(())
}
