//! A forward-only Pingora proxy: the framework's floor in the load bench. SIGINT stops it.

use std::net::SocketAddr;

use clap::Parser;

/// Forwards every HTTP request arriving on `--listen` to `--upstream`, nothing else.
#[derive(Parser, Debug)]
struct Args {
    /// Listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream (plain HTTP/1.1, keep-alive).
    #[arg(long)]
    upstream: SocketAddr,
    /// Pingora worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() {
    let args = Args::parse();
    maille_benches::floor::server(args.listen, args.upstream, args.threads).run_forever();
}
