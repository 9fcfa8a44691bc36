//! The load bench's backend: fixed-response HTTP and the bench TCP protocol on loopback ports.
//! Prints `http=ADDR tcp=ADDR` once both listen.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;

/// Fixed-response HTTP/1.1 and TCP (PING/PONG, stream, echo) servers for the load bench.
#[derive(Parser, Debug)]
struct Args {
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// TCP listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    tcp: SocketAddr,
    /// Worker threads; 1 runs everything on the calling thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let http = TcpListener::bind(args.http).await?;
        let tcp = TcpListener::bind(args.tcp).await?;
        println!("http={} tcp={}", http.local_addr()?, tcp.local_addr()?);
        tokio::spawn(maille_benches::backend::serve_tcp(tcp));
        maille_benches::backend::serve_http(http).await;
        Ok(())
    })
}
