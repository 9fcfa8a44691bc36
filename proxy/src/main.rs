//! `maille-proxy`: parses flags, sets up logging and runs the proxy until a signal.

use clap::Parser;
use maille_proxy::{Config, ProxyServer};

/// mimalloc rather than glibc's malloc: Pingora allocates several times per request, and glibc's
/// malloc/free took about a tenth of the proxy's CPU; mimalloc cut the CPU per request to about
/// 0.8x in the load bench (benches/README.md, "What was tried").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Transparent huge pages off for this process: mimalloc asks for them on its arenas, and a
    // proxy holding 10,000 services was then resident about 16 MB larger (77 against 62 MB in
    // benches/README.md, "Memory of a held table"), for no measurable gain in a process this
    // size.
    let thp = nix::sys::prctl::set_thp_disable(true);
    let config = Config::parse();
    config.logging.init()?;
    if let Err(error) = thp {
        tracing::warn!(%error, "Cannot turn transparent huge pages off for this process");
    }
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
