//! TCP load for the load bench: connections per second or stream throughput through a proxy
//! to `bench-backend`'s TCP port. Prints one JSON line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Connect, PING, PONG, close; as many as possible.
    Connect,
    /// Read the backend's endless stream.
    Stream,
}

/// Bounded TCP load against a loopback target.
#[derive(Parser, Debug)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Where to connect (a proxy, or the backend itself).
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent connections (connect mode: concurrent connect loops).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "target {} is not a loopback address: the load bench only sends traffic to this machine",
        args.target
    );
    let duration = Duration::from_secs_f64(args.seconds);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (name, report) = runtime.block_on(async {
        match args.mode {
            Mode::Connect => (
                "connect",
                maille_benches::tcp_load::connections(args.target, args.concurrency, duration)
                    .await,
            ),
            Mode::Stream => (
                "stream",
                maille_benches::tcp_load::stream(args.target, args.concurrency, duration).await,
            ),
        }
    });
    println!("{}", report.to_json(name));
    Ok(())
}
