//! Putting the controller together: API server, provider, rebuild loop, cluster writer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::cli::RunArgs;
use crate::lease;
use crate::manifests;
use crate::metrics;
use crate::rebuild::Rebuilder;
use crate::writer::Writer;

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
    /// The mesh CA of `--identity-dir` cannot be read or made.
    #[error(transparent)]
    Identity(#[from] crate::identity::ca::Error),
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
    // Shown (at 0) when identity is off too, so that dashboards have a series either way.
    crate::identity::metrics::register();
    let settings = args.settings();
    tracing::info!(mtls = %settings.mesh.mtls, "Traffic between nodes");
    if settings.mesh.mtls != config_model::MtlsMode::Disabled && args.identity_config().is_none() {
        tracing::warn!(
            mtls = %settings.mesh.mtls,
            "Mutual TLS is on but no identity CA is configured (--identity-dir or --identity-ca-secret): proxies get no certificate, so traffic between nodes cannot use the tunnel"
        );
    }
    // On a cluster, versions follow the cluster's resourceVersions (the same on every replica,
    // growing across restarts); a manifests folder has none, so the start time stands in.
    let first = if args.manifests.is_some() {
        first_version()
    } else {
        0
    };
    let api_state = ApiState::with_limits(
        first,
        shutdown.clone(),
        api::LongPollLimits {
            per_client: args.max_long_polls_per_client,
            total: args.max_long_polls,
        },
    );
    let identity = args.identity_config().map(crate::identity::Service::new);
    let local_ca = match &args.identity_dir {
        Some(dir) => Some(crate::identity::Ca::load_or_create_dir(
            dir,
            &args.trust_domain,
        )?),
        None => None,
    };
    if let Some(service) = &identity {
        // A refused CA change leaves the CA held signing: a warning on /ready, not unready.
        let service = service.clone();
        api_state.add_ready_note(move || {
            service.last_ca_refusal().map(|reason| {
                format!("identity: a mesh CA change was refused; the CA held still signs: {reason}")
            })
        });
    }
    let identity_url = match &identity {
        Some(service) => Some(serve_identity(&args, service, &shutdown).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: args.api_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.api_addr), "API listening");
    let server = tokio::spawn(api::serve_with(
        listener,
        api_state.clone(),
        identity
            .clone()
            .zip(identity_url)
            .map(|(service, url)| crate::identity::plain_router(service, url)),
    ));

    let (snap_tx, snap_rx) = watch::channel(None);
    if let (Some(service), Some((ca, token))) = (&identity, local_ca) {
        service.install(
            ca,
            crate::identity::Authenticator::Bootstrap {
                token,
                snapshots: snap_tx.subscribe(),
            },
        );
        if let Some(dir) = &args.identity_dir {
            // Each step of a rotation takes effect without a restart.
            tokio::spawn(crate::identity::reload::follow_dir(
                service.clone(),
                dir.clone(),
                shutdown.clone(),
            ));
        }
    }
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
            if let (Some(service), Some(name)) = (&identity, &args.identity_ca_secret) {
                tokio::spawn(crate::identity::run_kubernetes(
                    service.clone(),
                    client.clone(),
                    crate::identity::secret::SecretRef {
                        namespace: args.namespace.clone(),
                        name: name.clone(),
                        create: args.identity_ca_create,
                    },
                    args.identity_audience.clone(),
                    proxy_labels.clone(),
                    args.identity_trust_configmap.clone(),
                    shutdown.clone(),
                ));
            }
            let provider =
                crate::kubernetes::Provider::start(client.clone(), &settings, shutdown.clone())
                    .await;
            // Leadership: the replica holding the Lease writes; every replica serves.
            let election = shutdown.child_token();
            // Without election this replica always leads (the sender lives as long as the run).
            let (_always, always_leading) = watch::channel(true);
            let (leading, elector) = if args.leader_election {
                let (rx, task) =
                    lease::spawn(client.clone(), args.lease_config(), election.clone());
                (rx, Some(task))
            } else {
                (always_leading, None)
            };
            tokio::spawn(show_detail(
                provider.health(),
                leading.clone(),
                args.leader_election.then(|| args.identity()),
                api_state.clone(),
            ));
            tokio::select! {
                r = provider.wait_synced() => r?,
                _ = shutdown.cancelled() => return Ok(()),
            }
            let rebuilder = rebuilder.with_ports_from_shadows(&settings.mesh_namespace);
            let writes = tokio::spawn(write_while_leading(
                leading,
                client,
                settings.mesh_namespace.clone(),
                proxy_labels,
                out_rx,
                provider.shadows(),
                shutdown.clone(),
            ));
            let rebuild = tokio::spawn(rebuilder.run(snap_rx, shutdown.clone()));
            let r = provider.run(snap_tx).await;
            shutdown.cancel();
            let _ = rebuild.await;
            let _ = writes.await;
            // Give the Lease up only once this replica has stopped writing.
            election.cancel();
            if let Some(elector) = elector {
                let _ = elector.await;
            }
            r.map_err(Error::from)
        }
    };
    shutdown.cancel();
    let _ = server.await;
    result
}

/// Binds the identity API's TLS listener (`--identity-listen`) and serves it, its server
/// certificate made and renewed once the CA is installed; locally, writes its URL to
/// `DIR/identity-url`. Returns the URL proxies use.
async fn serve_identity(
    args: &RunArgs,
    service: &Arc<crate::identity::Service>,
    shutdown: &CancellationToken,
) -> Result<String, Error> {
    use crate::identity::tls;
    let addr = args.identity_listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Flag(format!("cannot listen on --identity-listen {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let names = args.identity_server_names(bound);
    let sans = tls::san_list(&names).map_err(|e| Error::Flag(e.to_string()))?;
    let cert = tls::ServerCert::new(sans);
    tokio::spawn(tls::keep_renewed(
        service.clone(),
        cert.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(tls::serve(
        listener,
        tls::server_config(cert),
        crate::identity::router(service.clone()),
        shutdown.clone(),
    ));
    let url = match &args.identity_dir {
        Some(dir) => {
            let url = tls::local_url(bound);
            tls::write_url_file(dir, &url).map_err(|source| {
                Error::Identity(crate::identity::ca::Error::Io {
                    path: dir.join(tls::URL_FILE),
                    source,
                })
            })?;
            url
        }
        None => format!("https://{}:{}", names[0], bound.port()),
    };
    tracing::info!(addr = %bound, %url, names = ?names, "Identity API listening (TLS)");
    Ok(url)
}

/// Keeps `/ready`'s detail current: the health of each watch and who leads.
async fn show_detail(
    mut health: watch::Receiver<crate::kubernetes::Health>,
    mut leading: watch::Receiver<bool>,
    identity: Option<String>,
    api: Arc<ApiState>,
) {
    loop {
        let mut text = crate::kubernetes::describe_health(&health.borrow_and_update());
        match &identity {
            Some(id) if *leading.borrow_and_update() => text.push_str(&format!(
                "leader: yes ({id}): writes shadow services and Events\n"
            )),
            Some(id) => text.push_str(&format!("leader: no ({id}): serves the table only\n")),
            None => text.push_str("leader: election off: writes shadow services and Events\n"),
        }
        api.set_detail(text);
        // The tick also refreshes how long a failing watch has been failing.
        let tick = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            r = health.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = tick => {}
        }
    }
}

/// Runs a cluster writer while this replica leads, and stops it as soon as it does not.
async fn write_while_leading(
    mut leading: watch::Receiver<bool>,
    client: kube::Client,
    mesh_namespace: String,
    proxy_labels: std::collections::BTreeMap<String, String>,
    translations: watch::Receiver<Option<Arc<crate::translate::Translation>>>,
    shadows: watch::Receiver<crate::kubernetes::Shadows>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("Leading: writing shadow services and Events");
        let stop = shutdown.child_token();
        let writer = Writer::new(client.clone(), mesh_namespace.clone(), proxy_labels.clone());
        let task = tokio::spawn(writer.run(translations.clone(), shadows.clone(), stop.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = leading.wait_for(|l| !*l) => tracing::info!("No longer leading: writes stopped"),
        }
        stop.cancel();
        let _ = task.await;
    }
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
