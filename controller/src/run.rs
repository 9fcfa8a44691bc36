//! Putting the controller together: API server, provider, rebuild loop, cluster writer.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::cli::RunArgs;
use crate::manifests;
use crate::metrics;
use crate::rebuild::Rebuilder;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API address could not be bound.
    #[error("cannot listen on --api-addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifests provider failed.
    #[error(transparent)]
    Manifests(#[from] manifests::Error),
    /// The Kubernetes provider failed.
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::Error),
    /// A flag has a bad value.
    #[error("{0}")]
    Flag(String),
}

/// A version above any this controller (or an earlier run of it) served: milliseconds since
/// the epoch.
fn first_version() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutting down");
        s.cancel();
    });
    run_until(args, shutdown).await
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run_until(args: RunArgs, shutdown: CancellationToken) -> Result<(), Error> {
    metrics::register();
    let settings = args.settings();
    let api_state = ApiState::new(first_version(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: args.api_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.api_addr), "API listening");
    let server = tokio::spawn(api::serve(listener, api_state.clone()));

    let (snap_tx, snap_rx) = watch::channel(None);
    let (out_tx, out_rx) = watch::channel(None);
    let rebuilder = Rebuilder::new(settings.clone(), api_state.clone(), out_tx);

    let result = match &args.manifests {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "Reading objects from a manifests folder");
            let rebuild = tokio::spawn(rebuilder.run(snap_rx, shutdown.clone()));
            let r = manifests::run(dir.clone(), snap_tx, shutdown.clone()).await;
            drop(out_rx);
            shutdown.cancel();
            let _ = rebuild.await;
            r.map_err(Error::from)
        }
        None => {
            let proxy_labels = args.proxy_labels().map_err(Error::Flag)?;
            let client = crate::kubernetes::client(args.kubeconfig.as_deref()).await?;
            let provider =
                crate::kubernetes::Provider::start(client.clone(), &settings, shutdown.clone())
                    .await;
            let mut health = provider.health();
            let api = api_state.clone();
            tokio::spawn(async move {
                loop {
                    let text = crate::kubernetes::describe_health(&health.borrow_and_update());
                    api.set_detail(text);
                    // Also refreshes how long a failing watch has been failing.
                    let tick = tokio::time::sleep(std::time::Duration::from_secs(1));
                    tokio::select! {
                        r = health.changed() => if r.is_err() { return },
                        _ = tick => {}
                    }
                }
            });
            tokio::select! {
                r = provider.wait_synced() => r?,
                _ = shutdown.cancelled() => return Ok(()),
            }
            let mut rebuilder = rebuilder;
            let recovered = provider.seed_allocations(rebuilder.allocator(), &settings);
            tracing::info!(recovered, "Port allocations recovered from shadow services");
            let writer =
                crate::writer::Writer::new(client, settings.mesh_namespace.clone(), proxy_labels);
            let writes = tokio::spawn(writer.run(out_rx, provider.shadows(), shutdown.clone()));
            let rebuild = tokio::spawn(rebuilder.run(snap_rx, shutdown.clone()));
            let r = provider.run(snap_tx).await;
            shutdown.cancel();
            let _ = rebuild.await;
            let _ = writes.await;
            r.map_err(Error::from)
        }
    };
    shutdown.cancel();
    let _ = server.await;
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
