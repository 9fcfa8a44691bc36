//! `maille-proxy`: parses flags, sets up logging and runs the proxy until a signal.

use clap::Parser;
use maille_proxy::{Config, ProxyServer};

/// mimalloc rather than glibc's malloc: Pingora allocates several times per request, and glibc's
/// malloc/free took about a tenth of the proxy's CPU; mimalloc cut the CPU per request to about
/// 0.8x in the load bench (benches/README.md, "What was tried").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.logging.init()?;
    tracing::info!(
        http_ports = %config.http_ports,
        tcp_ports = %config.tcp_ports,
        udp_ports = %config.udp_ports,
        admin = %config.admin_addr,
        "Starting maille-proxy"
    );
    let proxy = ProxyServer::build(config)?;
    proxy.run_until_signal();
    tracing::info!("maille-proxy stopped");
    Ok(())
}
