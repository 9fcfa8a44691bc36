//! Assembles the Pingora server of a proxy: HTTP listeners, admin endpoints and the table
//! source, all sharing one `Arc<TableStore>`. Other listener kinds add their service with one
//! call (see [`ProxyServer::build`]).

use std::sync::Arc;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ListenFds, RunArgs, Server};
use pingora_core::services::background::background_service;

use crate::balance::Balancer;
use crate::config::Config;
use crate::source::controller::ControllerSource;
use crate::source::file::FileSource;
use crate::store::TableStore;
use crate::tcp::TcpSettings;
use crate::udp::{UdpHandle, UdpSettings};
use crate::upgrade::{Confirm, Handover, Signals, WithFds};
use crate::upstream::UpstreamTls;
use crate::{admin, http, metrics, tcp, udp, upgrade};

/// Why the proxy could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// The controller URL is wrong.
    #[error(transparent)]
    Controller(#[from] crate::source::controller::Error),
    /// A UDP listener port could not be bound.
    #[error(transparent)]
    Udp(#[from] crate::udp::Error),
    /// Tracing (`--otlp-endpoint`, `OTEL_*`) cannot be set up.
    #[error("tracing: {0}")]
    Tracing(#[from] crate::trace::Error),
    /// `--upstream-ca-file` cannot be used.
    #[error(transparent)]
    UpstreamCa(#[from] crate::upstream::CaError),
    /// `--upgrade`: the running proxy's listeners could not be taken over.
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::Error),
    /// `--identity-token-file`, `--node-name` or the controller URL cannot be used.
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    /// The tunnel port cannot be bound.
    #[error("cannot listen on --tunnel-port {addr}: {source}")]
    Tunnel {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Pingora refused its configuration.
    #[error("pingora server configuration: {0}")]
    Pingora(String),
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A proxy ready to run: the Pingora server with its services, the shared table store and the
/// balancer.
pub struct ProxyServer {
    server: Server,
    config: Config,
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    upstream_tls: UpstreamTls,
    /// Maille's listening sockets (handed over on upgrade; see [`crate::upgrade`]).
    fds: ListenFds,
    /// With `--upgrade`: the old process, to be told once this one serves.
    handover: Option<Handover>,
    tracing: crate::trace::Tracing,
    /// The mesh identity (`--identity-token-file`).
    identity: Option<Arc<crate::identity::Identity>>,
    /// Its sessions to the other nodes' proxies.
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
}

impl ProxyServer {
    /// The whole proxy: HTTP listeners, admin endpoints and the table source of `config`.
    /// TCP and UDP listeners plug in here, one call each, sharing [`Self::store`].
    pub fn build(config: Config) -> Result<ProxyServer> {
        let mut proxy = ProxyServer::new(config)?;
        proxy.add_http();
        proxy.add_tcp();
        proxy.add_udp()?;
        proxy.add_admin();
        proxy.add_identity()?;
        proxy.add_table_source()?;
        proxy.add_upgrade_confirm();
        Ok(proxy)
    }

    /// A server with no service yet, its store empty (not ready). With `--upgrade`, first
    /// takes the listening sockets and the table over from the running proxy (blocking until
    /// it sends them); [`Self::add_upgrade_confirm`] then lets it go.
    pub fn new(config: Config) -> Result<ProxyServer> {
        config.validate()?;
        // Every metric on /metrics at zero before any traffic.
        metrics::register();
        let conf = ServerConf {
            threads: config.worker_threads(),
            grace_period_seconds: Some(config.grace_period_seconds),
            graceful_shutdown_timeout_seconds: Some(config.graceful_shutdown_timeout_seconds),
            upgrade_sock: config.upgrade_sock.display().to_string(),
            ..ServerConf::default()
        }
        .validate()
        .map_err(|e| Error::Pingora(e.to_string()))?;
        // Maille hands the sockets over itself (crate::upgrade): Pingora's own hand-over is
        // limited to 32 of them.
        let opt = Opt::default();
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        server.bootstrap();
        let balancer = Arc::new(Balancer::new(config.load_balancer));
        let tls = match &config.upstream_ca_file {
            Some(path) => UpstreamTls::from_pem_file(path)?,
            None => UpstreamTls::default(),
        };
        let tracing = crate::trace::Tracing::from_config(&config)?;
        let store = TableStore::on_node(
            config.node_name.as_deref(),
            Some(crate::store::Listeners {
                http: config.http_ports.0.iter().copied().collect(),
                tcp: config.tcp_ports.0.iter().copied().collect(),
                udp: config.udp_ports.0.iter().copied().collect(),
            }),
        );
        let fds = upgrade::new_fds();
        let handover = if config.upgrade {
            let mut h = upgrade::receive(
                &config.upgrade_sock,
                &config.handover_addrs(),
                &fds,
                config.controller_max_table_bytes,
                upgrade::WAIT_FOR_OLD,
            )?;
            tracing::info!(
                listeners = h.listeners,
                table_bytes = h.table.as_ref().map(Vec::len),
                "Listeners taken over from the running proxy"
            );
            if !h.not_handed_over.is_empty() {
                tracing::warn!(addrs = ?h.not_handed_over, "The running proxy did not listen on these; binding them afresh");
            }
            match h.table.take() {
                // Routes from its first request on; the table source then brings newer ones.
                Some(json) => {
                    let _ = crate::source::apply_handed_over(&store, json, "the running proxy");
                }
                None => tracing::warn!("The running proxy had no routing table to hand over"),
            }
            Some(h)
        } else {
            None
        };
        let identity = match (&config.identity_token_file, &config.node_name) {
            (Some(token), Some(node)) => Some(crate::identity::Identity::with_anchor(
                node,
                token.clone(),
                config.identity_url.as_deref().unwrap_or(""),
                config.identity_ca_file.clone(),
            )?),
            _ => None,
        };
        let tunnel = identity
            .as_ref()
            .map(|id| crate::tunnel::client::Pool::new(id.clone(), tunnel_settings(&config)));
        Ok(ProxyServer {
            identity,
            tunnel,
            server,
            config,
            store,
            balancer,
            upstream_tls: tls,
            fds,
            handover,
            tracing,
        })
    }

    /// The table every listener routes with.
    pub fn store(&self) -> &Arc<TableStore> {
        &self.store
    }

    /// The endpoint balancer (latency state per endpoint address).
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// The proxy's tracing (off unless an OTLP endpoint is configured).
    pub fn tracing(&self) -> &crate::trace::Tracing {
        &self.tracing
    }

    /// The flags the proxy was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The HTTP listeners (`--http-ports` on `--listen-ip`), if any port is configured.
    pub fn add_http(&mut self) {
        let addrs = self.config.http_listen_addrs();
        if addrs.is_empty() {
            return;
        }
        let proxy = http::MeshProxy::new(
            self.store.clone(),
            self.balancer.clone(),
            self.config.access_log,
        )
        .with_upstream_tls(self.upstream_tls.clone())
        .with_tracing(self.tracing.clone())
        .with_tunnel(self.tunnel.clone());
        let svc = http::service(
            &self.server.configuration,
            proxy,
            &addrs,
            self.config.worker_threads(),
            self.config.http_conn_limits(),
        );
        self.server.add_service(WithFds::new(svc, self.fds.clone()));
    }

    /// The TCP listeners (`--tcp-ports` on `--listen-ip`), if any port is configured.
    pub fn add_tcp(&mut self) {
        let addrs = self.config.tcp_listen_addrs();
        if addrs.is_empty() {
            return;
        }
        let settings = TcpSettings::from_config(&self.config);
        let svc = tcp::service(
            self.store.clone(),
            self.balancer.clone(),
            settings,
            &addrs,
            self.tracing.clone(),
            self.tunnel.clone(),
        );
        self.server.add_service(WithFds::new(svc, self.fds.clone()));
    }

    /// The UDP listeners (`--udp-ports` on `--listen-ip`), bound now; `None` without ports.
    pub fn add_udp(&mut self) -> Result<Option<UdpHandle>> {
        let addrs = self.config.udp_listen_addrs();
        if addrs.is_empty() {
            return Ok(None);
        }
        let settings = UdpSettings::from_config(&self.config);
        let (svc, handle) = udp::service(
            self.store.clone(),
            self.balancer.clone(),
            settings,
            &addrs,
            self.config.worker_threads(),
            self.tunnel.clone(),
        )?;
        self.server.add_service(svc);
        Ok(Some(handle))
    }

    /// The admin endpoints on `--admin-addr`.
    pub fn add_admin(&mut self) {
        let app = admin::AdminApp::new(self.store.clone()).with_identity(self.identity.clone());
        let svc = admin::service_with(app, self.config.admin_addr);
        self.server.add_service(WithFds::new(svc, self.fds.clone()));
    }

    /// The mesh identity (`--identity-token-file`): gets and renews the certificate, and
    /// listens on the tunnel port.
    pub fn add_identity(&mut self) -> Result<()> {
        if let Some(identity) = &self.identity {
            self.server.add_service(background_service(
                "mesh identity",
                crate::identity::IdentityService(identity.clone()),
            ));
            let addr = std::net::SocketAddr::new(self.config.listen_ip, self.config.tunnel_port);
            let forward = crate::tunnel::server::Forward {
                admission: crate::tunnel::admit::TableAdmission::new(self.store.clone()),
                settings: tunnel_settings(&self.config),
            };
            let tunnel =
                crate::identity::tunnel::Tunnel::bind_with(identity.clone(), addr, Some(forward))
                    .map_err(|source| Error::Tunnel { addr, source })?;
            self.server.add_service(background_service(
                "mesh tunnel",
                crate::identity::tunnel::TunnelService(tunnel),
            ));
        }
        Ok(())
    }

    /// The sessions to other nodes' proxies, when `--identity-token-file` is set.
    pub fn tunnel(&self) -> Option<&Arc<crate::tunnel::client::Pool>> {
        self.tunnel.as_ref()
    }

    /// The mesh identity, when `--identity-token-file` is set.
    pub fn identity(&self) -> Option<&Arc<crate::identity::Identity>> {
        self.identity.as_ref()
    }

    /// The table source: `--config` file or `--controller-url`; neither means the table only
    /// changes through [`Self::store`] (tests).
    pub fn add_table_source(&mut self) -> Result<()> {
        if let Some(path) = &self.config.config {
            let src = FileSource::new(path.clone(), self.store.clone());
            self.server
                .add_service(background_service("table file", src));
        } else if let Some(url) = &self.config.controller_url {
            let src = ControllerSource::new(url, self.store.clone())?
                .max_table_bytes(self.config.controller_max_table_bytes)
                .deltas(self.config.controller_deltas);
            self.server
                .add_service(background_service("controller client", src));
        }
        Ok(())
    }

    /// With `--upgrade`: tells the old process, once the services run, that it may stop
    /// accepting and drain.
    pub fn add_upgrade_confirm(&mut self) {
        if let Some(h) = self.handover.take() {
            self.server
                .add_service(background_service("upgrade confirm", Confirm::new(h)));
        }
    }

    /// Runs until a shutdown signal (SIGTERM: graceful, SIGINT: fast, SIGQUIT: hand the
    /// listeners and the table to a new process started with `--upgrade`, see
    /// [`crate::upgrade::Signals`]).
    pub fn run_until_signal(self) {
        let signals = Signals::new(
            self.config.upgrade_sock.clone(),
            self.fds.clone(),
            self.store.clone(),
        );
        self.run(RunArgs {
            shutdown_signal: Box::new(signals),
        })
    }

    /// Runs until `args`' shutdown signal.
    pub fn run(self, args: RunArgs) {
        let tracing = self.tracing.clone();
        self.server.run(args);
        // Spans of the last requests go out before the process ends.
        tracing.shutdown();
    }
}

/// The tunnel's bounds: the TCP connect and idle timeouts of the flags.
fn tunnel_settings(config: &Config) -> crate::tunnel::TunnelSettings {
    let tcp = TcpSettings::from_config(config);
    crate::tunnel::TunnelSettings {
        connect_timeout: tcp.connect_timeout,
        stream_idle: tcp.idle_timeout,
        ..crate::tunnel::TunnelSettings::default()
    }
}
