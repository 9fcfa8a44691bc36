//! Command-line flags (clap derive; every flag also reads a `MAILLE_` environment variable).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use config_model::{MtlsMode, TrafficType};

use crate::settings::{MeshServices, PortRange, Settings};

/// `maille-controller`: flags at the top level run the controller; subcommands are one-off
/// tasks.
#[derive(Debug, Parser)]
#[command(
    name = "maille-controller",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A one-off task instead of running the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the controller itself.
    #[command(flatten)]
    pub run: RunArgs,
    /// `--log` and `--log-format`, as in the proxy.
    #[command(flatten)]
    pub logging: maille_telemetry::LogArgs,
}

/// One-off tasks (the DNS set-up adds its own here).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make `<service>.<namespace>.maille.mesh` resolve through the cluster DNS (CoreDNS
    /// Corefile, AKS coredns-custom or a kube-dns stub domain); idempotent. See docs/dns.md.
    Prepare(crate::dns::DnsArgs),
    /// Remove what `prepare` added to the cluster DNS, and the shadow services.
    Cleanup(crate::dns::DnsArgs),
}

/// Flags of the running controller.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Read objects from the manifests in this folder instead of a cluster (Services,
    /// EndpointSlices, Pods; multi-document YAML or JSON), and follow its changes.
    #[arg(long, env = "MAILLE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig to use instead of the in-cluster account or $KUBECONFIG.
    #[arg(long, env = "MAILLE_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The mesh's own namespace: where shadow services live; never meshed.
    #[arg(long, env = "MAILLE_NAMESPACE", default_value = "maille")]
    pub namespace: String,
    /// Address of the HTTP API (table, services, readiness, metrics).
    #[arg(long, env = "MAILLE_API_ADDR", default_value = "0.0.0.0:9000")]
    pub api_addr: SocketAddr,
    /// Long-polls of /api/configuration one client address may hold at once; beyond, 429.
    #[arg(long, env = "MAILLE_MAX_LONG_POLLS_PER_CLIENT", default_value_t = crate::api::DEFAULT_LONG_POLLS_PER_CLIENT)]
    pub max_long_polls_per_client: usize,
    /// Long-polls of /api/configuration held at once in all; beyond, 429.
    #[arg(long, env = "MAILLE_MAX_LONG_POLLS", default_value_t = crate::api::DEFAULT_LONG_POLLS_TOTAL)]
    pub max_long_polls: usize,
    /// Traffic type of services without a traffic-type annotation: http, tcp or udp.
    #[arg(long, env = "MAILLE_DEFAULT_MODE", default_value = "http", value_parser = parse_mode)]
    pub default_mode: TrafficType,
    /// ACL mode: traffic is denied unless an SMI TrafficTarget allows it.
    #[arg(long, env = "MAILLE_ACL")]
    pub acl: bool,
    /// Mesh only these namespaces (comma-separated); all when empty.
    #[arg(long, env = "MAILLE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Never mesh these namespaces (comma-separated).
    #[arg(long, env = "MAILLE_IGNORE_NAMESPACES", value_delimiter = ',')]
    pub ignore_namespaces: Vec<String>,
    /// Which Services of the meshed namespaces are meshed: `all` (except those annotated
    /// `maille.io/mesh: "false"`) or `annotated` (only those annotated `maille.io/mesh: "true"`).
    #[arg(long, env = "MAILLE_MESH_SERVICES", value_enum, default_value_t = MeshServices::All)]
    pub mesh_services: MeshServices,
    /// Proxy HTTP listener ports; the i-th port of a service is reached on the i-th.
    #[arg(long, env = "MAILLE_HTTP_PORTS", default_value = "5000-5009")]
    pub http_ports: PortRange,
    /// Proxy TCP listener ports, one per meshed TCP service port.
    #[arg(long, env = "MAILLE_TCP_PORTS", default_value = "10000-10024")]
    pub tcp_ports: PortRange,
    /// Proxy UDP listener ports, one per meshed UDP service port.
    #[arg(long, env = "MAILLE_UDP_PORTS", default_value = "15000-15024")]
    pub udp_ports: PortRange,
    /// Labels of the proxy pods, which shadow services select (comma-separated key=value).
    #[arg(
        long,
        env = "MAILLE_PROXY_SELECTOR",
        default_value = "app.kubernetes.io/name=maille,app.kubernetes.io/component=proxy"
    )]
    pub proxy_selector: String,
    /// Leader election (Kubernetes provider): only the replica holding the Lease writes shadow
    /// services and Events; every replica serves the table. `--leader-election=false` writes
    /// from every replica (one replica only!).
    #[arg(long, env = "MAILLE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease, in the mesh namespace.
    #[arg(long, env = "MAILLE_LEASE_NAME", default_value = "maille-controller")]
    pub lease_name: String,
    /// Seconds a leader's Lease lasts without renewal: a follower takes over at most this plus
    /// half of it after the leader died (12 s with the default). Renewals come every quarter of
    /// it; a leader that has not renewed for five eighths of it stops writing.
    #[arg(long, env = "MAILLE_LEASE_DURATION", default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration: u64,
    /// This replica's identity in the Lease; defaults to $POD_NAME, else the host name.
    #[arg(long, env = "MAILLE_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,
    /// Mesh identity, local mode (with --manifests): the mesh CA lives in this folder (made on
    /// first start: ca.crt, ca.key) with the token local proxies present in
    /// DIR/bootstrap-token. See docs/security.md, "Identity".
    #[arg(
        long,
        env = "MAILLE_IDENTITY_DIR",
        value_name = "DIR",
        requires = "manifests"
    )]
    pub identity_dir: Option<PathBuf>,
    /// Mesh identity, Kubernetes: the Secret of the mesh namespace that holds the mesh CA
    /// (tls.crt, tls.key, optional ca.crt). Identity is on when this is set.
    #[arg(
        long,
        env = "MAILLE_IDENTITY_CA_SECRET",
        value_name = "NAME",
        conflicts_with = "manifests"
    )]
    pub identity_ca_secret: Option<String>,
    /// Create the CA Secret (a new root) when it does not exist; `false` when you supply it.
    #[arg(long, env = "MAILLE_IDENTITY_CA_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub identity_ca_create: bool,
    /// The audience of the proxies' projected ServiceAccount tokens (TokenReview).
    #[arg(long, env = "MAILLE_IDENTITY_AUDIENCE", default_value = "maille")]
    pub identity_audience: String,
    /// The identity API's own TLS listener (certificate requests and the trust bundle are
    /// served there only; the plain API refuses them). Default: 0.0.0.0:9443 on a cluster;
    /// locally (--identity-dir) --api-addr's address with a free port, whose URL the controller
    /// writes to DIR/identity-url for local proxies.
    #[arg(long, env = "MAILLE_IDENTITY_LISTEN", value_name = "ADDR")]
    pub identity_listen: Option<SocketAddr>,
    /// Names of the identity listener's server certificate (comma-separated DNS names or IP
    /// addresses), as proxies dial it (--identity-url). Default: on a cluster
    /// maille-controller, .<namespace>, .<namespace>.svc and .<namespace>.svc.cluster.local;
    /// locally 127.0.0.1, localhost and the listen address. Given names replace these.
    #[arg(
        long,
        env = "MAILLE_IDENTITY_SERVER_NAMES",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub identity_server_names: Vec<String>,
    /// Kubernetes: the ConfigMap of the mesh namespace where the controller publishes the
    /// mesh roots (key ca.crt), which proxies mount and pin to verify the identity listener.
    #[arg(long, env = "MAILLE_IDENTITY_TRUST_CONFIGMAP", default_value = crate::identity::trust::DEFAULT_CONFIGMAP)]
    pub identity_trust_configmap: String,
    /// The SPIFFE trust domain: identities are spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long, env = "MAILLE_TRUST_DOMAIN", default_value = "cluster.local", value_parser = parse_trust_domain)]
    pub trust_domain: String,
    /// Lifetime of a node certificate (e.g. 24h, 1h, 30s); proxies renew at about half.
    #[arg(long, env = "MAILLE_CERTIFICATE_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    pub certificate_lifetime: std::time::Duration,
    /// Traffic between nodes: `strict` (through the node proxies' mutual-TLS tunnel only),
    /// `permissive` (in cleartext to nodes without a proxy, counted) or `disabled` (directly,
    /// in cleartext). Default: strict when an identity CA is configured (--identity-dir or
    /// --identity-ca-secret), else disabled. In the table: proxies follow a change without a
    /// restart. See docs/security.md.
    #[arg(long, env = "MAILLE_MTLS", value_parser = parse_mtls)]
    pub mtls: Option<MtlsMode>,
    /// The tunnel port of node proxies (their --tunnel-port) unless a proxy Pod's
    /// `maille.io/tunnel-port` annotation says otherwise.
    #[arg(long, env = "MAILLE_PROXY_TUNNEL_PORT", default_value_t = crate::mesh::DEFAULT_TUNNEL_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_tunnel_port: u16,
}

fn parse_mtls(s: &str) -> Result<MtlsMode, String> {
    s.trim().to_ascii_lowercase().parse()
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`, at most 255.
fn parse_trust_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid trust domain {s:?}: expected lowercase letters, digits, '.', '-' or '_', e.g. cluster.local"
        ))
    }
}

/// A certificate lifetime from 2 seconds to 366 days.
fn parse_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let ms = config_model::duration::parse_millis(s)
        .map_err(|e| format!("invalid certificate lifetime {s:?}: {e}"))?;
    if !(2_000..=366 * 24 * 3_600_000).contains(&ms) {
        return Err(format!(
            "invalid certificate lifetime {s:?}: expected from 2s to 366 days, e.g. 24h"
        ));
    }
    Ok(std::time::Duration::from_millis(ms))
}

fn parse_mode(s: &str) -> Result<TrafficType, String> {
    s.trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|()| format!("invalid traffic type {s:?}: expected http, tcp or udp"))
}

impl RunArgs {
    /// The translation settings these flags give.
    pub fn settings(&self) -> Settings {
        let set = |v: &[String]| -> BTreeSet<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Settings {
            default_mode: self.default_mode,
            acl: self.acl,
            mesh_namespace: self.namespace.clone(),
            watch_namespaces: set(&self.watch_namespaces),
            ignore_namespaces: set(&self.ignore_namespaces),
            mesh_services: self.mesh_services,
            http_ports: self.http_ports,
            tcp_ports: self.tcp_ports,
            udp_ports: self.udp_ports,
            mesh: self.mesh_settings(),
        }
    }

    /// The mutual-TLS mode: `--mtls`, else strict with an identity CA and disabled without.
    pub fn mtls_mode(&self) -> MtlsMode {
        self.mtls.unwrap_or(if self.identity_config().is_some() {
            MtlsMode::Strict
        } else {
            MtlsMode::Disabled
        })
    }

    /// How node proxies are found: in a manifests folder, Pods labelled
    /// `app.kubernetes.io/name: maille-proxy` of any namespace (as for local identity); on a
    /// cluster, Pods of the mesh namespace with the `--proxy-selector` labels.
    fn mesh_settings(&self) -> crate::mesh::MeshSettings {
        let mut mesh = crate::mesh::MeshSettings {
            mtls: self.mtls_mode(),
            tunnel_port: self.proxy_tunnel_port,
            ..crate::mesh::MeshSettings::default()
        };
        if self.manifests.is_none() {
            // A bad selector is refused when the provider starts (`proxy_labels`).
            mesh.proxy_labels = self.proxy_labels().unwrap_or_default();
            mesh.proxy_namespace = Some(self.namespace.clone());
        }
        mesh
    }

    /// The Lease settings these flags give, for the mesh namespace.
    pub fn lease_config(&self) -> crate::lease::LeaseConfig {
        let duration = std::time::Duration::from_secs(self.lease_duration);
        crate::lease::LeaseConfig {
            duration,
            renew_deadline: duration * 5 / 8,
            retry: duration / 4,
            ..crate::lease::LeaseConfig::new(&self.lease_name, &self.namespace, &self.identity())
        }
    }

    /// This replica's identity for leader election.
    pub fn identity(&self) -> String {
        self.lease_identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| format!("maille-controller-{}", std::process::id()))
    }

    /// The identity settings, when identity is on (`--identity-dir` or `--identity-ca-secret`).
    pub fn identity_config(&self) -> Option<crate::identity::Config> {
        (self.identity_dir.is_some() || self.identity_ca_secret.is_some()).then(|| {
            crate::identity::Config {
                trust_domain: self.trust_domain.clone(),
                lifetime: self.certificate_lifetime,
            }
        })
    }

    /// Where the identity listener binds: `--identity-listen`, else 0.0.0.0:9443 on a cluster
    /// and --api-addr's address with a free port locally.
    pub fn identity_listen_addr(&self) -> SocketAddr {
        self.identity_listen.unwrap_or_else(|| {
            if self.manifests.is_some() {
                SocketAddr::new(self.api_addr.ip(), 0)
            } else {
                SocketAddr::from(([0, 0, 0, 0], crate::identity::tls::DEFAULT_PORT))
            }
        })
    }

    /// The names of the identity server certificate for a listener bound to `bound`.
    pub fn identity_server_names(&self, bound: SocketAddr) -> Vec<String> {
        let given: Vec<String> = self
            .identity_server_names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if !given.is_empty() {
            return given;
        }
        if self.manifests.is_some() {
            let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            if !bound.ip().is_unspecified() {
                names.push(bound.ip().to_string());
            }
            names
        } else {
            let ns = &self.namespace;
            vec![
                "maille-controller".to_string(),
                format!("maille-controller.{ns}"),
                format!("maille-controller.{ns}.svc"),
                format!("maille-controller.{ns}.svc.cluster.local"),
            ]
        }
    }

    /// The proxy pod labels as a map; an entry without `=` is an error naming it.
    pub fn proxy_labels(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.proxy_selector
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| {
                        format!("--proxy-selector: invalid value {kv:?}: expected key=value")
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_listener_defaults_to_9443_on_a_cluster_and_a_free_port_locally() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("maille-controller").chain(args.iter().copied()))
                .unwrap()
                .run
        };
        let cluster = parse(&["--identity-ca-secret", "ca", "--namespace", "mesh"]);
        let addr = cluster.identity_listen_addr();
        assert_eq!(addr.to_string(), "0.0.0.0:9443");
        assert_eq!(
            cluster.identity_server_names(addr)[3],
            "maille-controller.mesh.svc.cluster.local"
        );
        let local = parse(&[
            "--manifests",
            "/tmp/m",
            "--identity-dir",
            "/tmp/id",
            "--api-addr",
            "127.0.0.5:9000",
        ]);
        let addr = local.identity_listen_addr();
        assert_eq!(addr.to_string(), "127.0.0.5:0");
        assert_eq!(
            local.identity_server_names("127.0.0.5:41000".parse().unwrap()),
            ["127.0.0.1", "localhost", "127.0.0.5"]
        );
        let given = parse(&[
            "--identity-ca-secret",
            "ca",
            "--identity-listen",
            "10.0.0.1:15012",
            "--identity-server-names",
            "ctl.mesh.svc, 10.0.0.1",
        ]);
        assert_eq!(given.identity_listen_addr().to_string(), "10.0.0.1:15012");
        assert_eq!(
            given.identity_server_names(given.identity_listen_addr()),
            ["ctl.mesh.svc", "10.0.0.1"]
        );
    }

    #[test]
    fn mtls_defaults_to_strict_with_an_identity_ca_only() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("maille-controller").chain(args.iter().copied()))
        };
        let local = parse(&["--manifests", "/tmp/m"]).unwrap();
        assert_eq!(local.run.settings().mesh.mtls, MtlsMode::Disabled);
        let with_ca = parse(&["--manifests", "/tmp/m", "--identity-dir", "/tmp/ca"]).unwrap();
        let mesh = with_ca.run.settings().mesh;
        assert_eq!(mesh.mtls, MtlsMode::Strict);
        assert_eq!(mesh.tunnel_port, 15008);
        // A folder's proxies: the local label, any namespace.
        assert_eq!(mesh.proxy_namespace, None);
        assert_eq!(
            mesh.proxy_labels
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("maille-proxy")
        );
        let cluster = parse(&["--identity-ca-secret", "ca", "--mtls", "Permissive"]).unwrap();
        let mesh = cluster.run.settings().mesh;
        assert_eq!(mesh.mtls, MtlsMode::Permissive);
        // A cluster's proxies: --proxy-selector, in the mesh namespace only.
        assert_eq!(mesh.proxy_namespace.as_deref(), Some("maille"));
        assert_eq!(mesh.proxy_labels.len(), 2);
        let off = parse(&["--identity-ca-secret", "ca", "--mtls", "disabled"]).unwrap();
        assert_eq!(off.run.settings().mesh.mtls, MtlsMode::Disabled);
        let e = parse(&["--mtls", "loose"]).unwrap_err().to_string();
        assert!(
            e.contains("loose") && e.contains("strict, permissive or disabled"),
            "{e}"
        );
        for bad in ["0", "65536", "x"] {
            assert!(parse(&["--proxy-tunnel-port", bad]).is_err(), "{bad}");
        }
        let port = parse(&["--proxy-tunnel-port", "16008"]).unwrap();
        assert_eq!(port.run.settings().mesh.tunnel_port, 16008);
    }

    #[test]
    fn defaults_and_lists() {
        let cli = Cli::try_parse_from([
            "maille-controller",
            "--manifests",
            "/tmp/m",
            "--watch-namespaces",
            "a, b",
            "--tcp-ports",
            "20000-20001",
            "--default-mode",
            "TCP",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let s = cli.run.settings();
        assert_eq!(s.watch_namespaces.len(), 2);
        assert!(s.watch_namespaces.contains("b"));
        assert_eq!(s.tcp_ports, PortRange::new(20000, 20001));
        assert_eq!(s.http_ports, PortRange::new(5000, 5009));
        assert_eq!(s.default_mode, TrafficType::Tcp);
        assert_eq!(cli.run.api_addr.port(), 9000);
        assert_eq!(cli.run.proxy_labels().unwrap().len(), 2);
        assert!(cli.run.leader_election);
        assert_eq!(cli.run.lease_name, "maille-controller");
        let cli = Cli::try_parse_from([
            "maille-controller",
            "--leader-election=false",
            "--lease-identity",
            "pod-a",
        ])
        .unwrap();
        assert!(!cli.run.leader_election);
        assert_eq!(cli.run.identity(), "pod-a");
        assert_eq!(s.mesh_services, MeshServices::All);
        let cli =
            Cli::try_parse_from(["maille-controller", "--mesh-services", "annotated"]).unwrap();
        assert_eq!(cli.run.settings().mesh_services, MeshServices::Annotated);
    }

    #[test]
    fn bad_values_are_refused_with_the_value() {
        let e = Cli::try_parse_from(["maille-controller", "--udp-ports", "9-1"]).unwrap_err();
        assert!(e.to_string().contains("9-1"), "{e}");
        let e = Cli::try_parse_from(["maille-controller", "--default-mode", "sctp"]).unwrap_err();
        assert!(e.to_string().contains("sctp"), "{e}");
    }
}
