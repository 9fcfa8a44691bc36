//! Command-line flags of `maille-proxy` (each also settable by a `MAILLE_` environment
//! variable) and the port lists they carry.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Why a flag value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A port list that is not `a-b`, `a,b,c` or a mix of both.
    #[error("port list {value:?}: {reason}")]
    PortList {
        /// The whole flag value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two listener flags name the same port.
    #[error("port {port} appears in both {first} and {second}")]
    PortClash {
        /// The port.
        port: u16,
        /// One flag.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A mesh identity flag has a bad value.
    #[error("{0}")]
    Identity(String),
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An ordered list of listener ports: ranges (`5000-5009`), comma lists (`41000,41007`) or
/// both mixed (`5000-5003,6000`). The i-th entry is the listener of the i-th mesh port.
/// `none` (or an empty string) means no listener at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl PortList {
    /// The ports, in order.
    pub fn ports(&self) -> &[u16] {
        &self.0
    }

    /// Whether there is no port.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u16>> for PortList {
    fn from(v: Vec<u16>) -> Self {
        PortList(v)
    }
}

impl FromStr for PortList {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        let err = |reason: String| Error::PortList {
            value: value.to_string(),
            reason,
        };
        let trimmed = value.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
            return Ok(PortList::default());
        }
        let port = |s: &str| -> Result<u16> {
            match s.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(err(format!("{:?} is not a port from 1 to 65535", s.trim()))),
                Ok(p) => Ok(p),
            }
        };
        let mut ports = Vec::new();
        for part in trimmed.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (port(a)?, port(b)?);
                    if a > b {
                        return Err(err(format!("range {a}-{b} runs backwards")));
                    }
                    ports.extend(a..=b);
                }
                None => ports.push(port(part)?),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &ports {
            if !seen.insert(*p) {
                return Err(err(format!("port {p} is listed twice")));
            }
        }
        Ok(PortList(ports))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// How the proxy picks an endpoint among a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency, candidates drawn by weight; weighted
    /// round robin while an endpoint has no latency sample yet.
    #[default]
    PeakEwma,
    /// Weighted round robin only.
    RoundRobin,
}

/// Wire protocol of the OTLP span export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP POST to `<endpoint>/v1/traces` (port 4318 by convention).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// OTLP gRPC (port 4317 by convention).
    Grpc,
}

/// Flags of `maille-proxy`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "maille-proxy",
    version,
    about = "Maille's per-node proxy, on Pingora."
)]
pub struct Config {
    /// HTTP listener ports: ranges and comma lists, e.g. `5000-5009` or `5000-5003,6000`.
    #[arg(long, env = "MAILLE_HTTP_PORTS", default_value = "5000-5009")]
    pub http_ports: PortList,
    /// TCP listener ports (same syntax; `none` for no listener).
    #[arg(long, env = "MAILLE_TCP_PORTS", default_value = "10000-10024")]
    pub tcp_ports: PortList,
    /// UDP listener ports (same syntax; `none` for no listener).
    #[arg(long, env = "MAILLE_UDP_PORTS", default_value = "15000-15024")]
    pub udp_ports: PortList,
    /// Address the traffic listeners bind to.
    #[arg(long, env = "MAILLE_LISTEN_IP", default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,
    /// Address of the admin endpoints (`/ready`, `/live`, `/metrics`).
    #[arg(long, env = "MAILLE_ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    pub admin_addr: SocketAddr,
    /// Pull the routing table from the controller at this base URL (long-poll); several
    /// comma-separated URLs (controller replicas) are tried in turn on failure.
    #[arg(long, env = "MAILLE_CONTROLLER_URL", conflicts_with = "config")]
    pub controller_url: Option<String>,
    /// Refuse a controller answer larger than this (bytes, or with a `KiB`/`MiB`/`GiB`
    /// suffix); it is read frame by frame and dropped as soon as it passes the bound.
    #[arg(long, env = "MAILLE_CONTROLLER_MAX_TABLE_BYTES", default_value = "64MiB", value_parser = byte_size)]
    pub controller_max_table_bytes: u64,
    /// Ask the controller for deltas (the service ports changed since the table held) rather
    /// than the whole table at every change. `false` fetches the whole table every time.
    #[arg(long, env = "MAILLE_CONTROLLER_DELTAS", default_value_t = true, action = clap::ArgAction::Set)]
    pub controller_deltas: bool,
    /// Load the routing table from this JSON file, and reload it when it changes.
    #[arg(long, env = "MAILLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// On SIGTERM, keep serving in-flight requests this long before stopping.
    #[arg(long, env = "MAILLE_GRACE_PERIOD_SECONDS", default_value_t = 10)]
    pub grace_period_seconds: u64,
    /// After the grace period, give the runtimes this long to finish.
    #[arg(
        long,
        env = "MAILLE_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub graceful_shutdown_timeout_seconds: u64,
    /// Take the listening sockets and the routing table over from a running proxy (then send
    /// it SIGQUIT); it lets go once this process serves.
    #[arg(short = 'u', long, env = "MAILLE_UPGRADE")]
    pub upgrade: bool,
    /// Unix socket old and new process use to hand the listeners over during an upgrade.
    #[arg(
        long,
        env = "MAILLE_UPGRADE_SOCK",
        default_value = "/tmp/maille-proxy-upgrade.sock"
    )]
    pub upgrade_sock: PathBuf,
    /// Worker threads per listener group (HTTP, admin, ...); default: one per CPU.
    #[arg(long, env = "MAILLE_THREADS")]
    pub threads: Option<usize>,
    /// Endpoint selection.
    #[arg(long, env = "MAILLE_LOAD_BALANCER", value_enum, default_value_t = Balancer::PeakEwma)]
    pub load_balancer: Balancer,
    /// Write one structured line per HTTP request on the `access` log target.
    #[arg(long, env = "MAILLE_ACCESS_LOG")]
    pub access_log: bool,
    /// `--log` and `--log-format`, as in the controller.
    #[command(flatten)]
    pub logging: maille_telemetry::LogArgs,
    /// Time allowed for one TCP connect attempt to an endpoint (e.g. `5s`, `500ms`).
    #[arg(long, env = "MAILLE_TCP_CONNECT_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub tcp_connect_timeout: Duration,
    /// Endpoints tried, each at most once, before a TCP client connection is closed.
    #[arg(long, env = "MAILLE_TCP_CONNECT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub tcp_connect_attempts: u16,
    /// Close a TCP connection after this long without a byte either way; `0` never does.
    #[arg(long, env = "MAILLE_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = duration)]
    pub tcp_idle_timeout: Duration,
    /// Close a UDP session (and its upstream socket) after this long without a datagram
    /// either way.
    #[arg(long, env = "MAILLE_UDP_SESSION_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub udp_session_idle_timeout: Duration,
    /// UDP sessions open at once, over all UDP ports; a datagram needing one more is dropped.
    #[arg(long, env = "MAILLE_UDP_MAX_SESSIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub udp_max_sessions: u32,
    /// Time a client has to send a whole request header, from accept or from the first
    /// byte of a following request (slowloris bound).
    #[arg(long, env = "MAILLE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub http_header_timeout: Duration,
    /// Close an HTTP/1 keep-alive connection with no request for this long (HTTP/2: no
    /// stream open for this long).
    #[arg(long, env = "MAILLE_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub http_idle_timeout: Duration,
    /// Client connections open at once over all HTTP listeners; beyond, a new connection is
    /// closed at accept (and counted).
    #[arg(long, env = "MAILLE_HTTP_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// PEM bundle of the CAs that verify `scheme: https` upstreams (e.g. the cluster's
    /// internal CA). Default: the system trust store.
    #[arg(long, env = "MAILLE_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// OpenTelemetry collector to export spans to (OTLP), e.g. `http://otel-collector:4318`;
    /// tracing is on when this or `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.
    #[arg(long, env = "MAILLE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol; default: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else `http/protobuf`.
    #[arg(long, env = "MAILLE_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Share of new traces sampled, 0 to 1, parent-based (a request that carries a sampling
    /// decision keeps it); default: `OTEL_TRACES_SAMPLER`(`_ARG`), else every trace.
    #[arg(long, env = "MAILLE_TRACE_SAMPLING_RATIO", value_parser = ratio)]
    pub trace_sampling_ratio: Option<f64>,
    /// Finished spans held for export at most; more are dropped (and counted) while the
    /// collector is slow or down. Default: `OTEL_BSP_MAX_QUEUE_SIZE`, else 2048.
    #[arg(long, env = "MAILLE_TRACE_QUEUE_SIZE", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub trace_queue_size: Option<u32>,
    /// Longest wait before queued spans are sent. Default: `OTEL_BSP_SCHEDULE_DELAY`, else 5s.
    #[arg(long, env = "MAILLE_TRACE_BATCH_DELAY", value_parser = positive_duration)]
    pub trace_batch_delay: Option<Duration>,
    /// The node this proxy runs on (Kubernetes: `spec.nodeName` through the downward API),
    /// named in its mesh certificate.
    #[arg(long, env = "MAILLE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Mesh identity: ask the controller's identity listener (`--identity-url`) for a
    /// certificate for `--node-name`, presenting the token in this file (Kubernetes: the
    /// projected ServiceAccount token; local mode: the controller's DIR/bootstrap-token). Read
    /// again at every renewal. See docs/security.md, "Identity".
    #[arg(long, env = "MAILLE_IDENTITY_TOKEN_FILE", requires_all = ["node_name", "controller_url"])]
    pub identity_token_file: Option<PathBuf>,
    /// With `--identity-token-file`: the controller's identity listener, `https://` only
    /// (comma-separated for replicas). Default: the URL a local controller writes to
    /// `identity-url` in the token's folder (its --identity-dir), read at each request.
    #[arg(long, env = "MAILLE_IDENTITY_URL", requires = "identity_token_file")]
    pub identity_url: Option<String>,
    /// With `--identity-token-file`: the mesh roots (PEM, one or more) the identity listener's
    /// certificate must chain to, pinned out of band (Kubernetes: the trust ConfigMap the
    /// chart mounts). Read at each request. Default: `ca.crt` in the token's folder (the local
    /// controller's --identity-dir).
    #[arg(
        long,
        env = "MAILLE_IDENTITY_CA_FILE",
        requires = "identity_token_file"
    )]
    pub identity_ca_file: Option<PathBuf>,
    /// With `--identity-token-file`: the tunnel port on `--listen-ip`, which accepts only
    /// mutual TLS with a mesh certificate of this trust domain (what it carries is not built
    /// yet; see docs/security.md).
    #[arg(long, env = "MAILLE_TUNNEL_PORT", default_value_t = 15008)]
    pub tunnel_port: u16,
}

/// A ratio flag: a number from 0 to 1.
fn ratio(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?}: expected a number from 0 to 1, e.g. 0.01")),
    }
}

/// A duration flag: `250ms`, `5s`, `2m`, `1h`, `1m30s`, or `0`.
fn duration(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    config_model::duration::parse_millis(s)
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

/// A size flag: `1048576`, `512KiB`, `64MiB`, `1GiB`; above zero.
fn byte_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}, expected bytes or KiB, MiB, GiB"
            ))
        }
    };
    match digits.parse::<u64>() {
        Ok(0) => Err(format!("{s:?}: expected a size above zero, e.g. 64MiB")),
        Ok(n) => n
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("{s:?}: too large")),
        Err(_) => Err(format!("{s:?}: expected a size such as 64MiB or 1048576")),
    }
}

/// A duration flag that must be above zero.
fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: expected a duration above zero, e.g. 5s")),
        d => Ok(d),
    }
}

impl Default for Config {
    /// The defaults of every flag, ignoring the environment.
    fn default() -> Self {
        Config {
            http_ports: "5000-5009".parse().expect("default port list"),
            tcp_ports: "10000-10024".parse().expect("default port list"),
            udp_ports: "15000-15024".parse().expect("default port list"),
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            controller_url: None,
            controller_max_table_bytes: 64 << 20,
            controller_deltas: true,
            config: None,
            grace_period_seconds: 10,
            graceful_shutdown_timeout_seconds: 5,
            upgrade: false,
            upgrade_sock: PathBuf::from("/tmp/maille-proxy-upgrade.sock"),
            threads: None,
            load_balancer: Balancer::PeakEwma,
            access_log: false,
            logging: maille_telemetry::LogArgs::default(),
            tcp_connect_timeout: Duration::from_secs(5),
            tcp_connect_attempts: 3,
            tcp_idle_timeout: Duration::from_secs(3600),
            udp_session_idle_timeout: Duration::from_secs(60),
            udp_max_sessions: 10_000,
            upstream_ca_file: None,
            otlp_endpoint: None,
            otlp_protocol: None,
            trace_sampling_ratio: None,
            trace_queue_size: None,
            trace_batch_delay: None,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            http_max_connections: 4096,
            node_name: None,
            identity_token_file: None,
            identity_url: None,
            identity_ca_file: None,
            tunnel_port: 15008,
        }
    }
}

impl Config {
    /// Checks what clap cannot: the TCP and HTTP listeners must not share a port (UDP may
    /// reuse a TCP port number, it is another protocol).
    pub fn validate(&self) -> Result<()> {
        let http: std::collections::HashSet<u16> = self.http_ports.0.iter().copied().collect();
        if let Some(p) = self.tcp_ports.0.iter().find(|p| http.contains(p)) {
            return Err(Error::PortClash {
                port: *p,
                first: "--http-ports",
                second: "--tcp-ports",
            });
        }
        if let Some(urls) = &self.identity_url {
            crate::identity::parse_urls(urls, "--identity-url")
                .map_err(|e| Error::Identity(e.to_string()))?;
        }
        if self.identity_token_file.is_some() {
            let tunnel = self.tunnel_port;
            for (ports, flag) in [
                (&self.http_ports, "--http-ports"),
                (&self.tcp_ports, "--tcp-ports"),
            ] {
                if ports.0.contains(&tunnel) {
                    return Err(Error::PortClash {
                        port: tunnel,
                        first: flag,
                        second: "--tunnel-port",
                    });
                }
            }
            if self.admin_addr.port() == tunnel && self.admin_addr.ip() == self.listen_ip {
                return Err(Error::PortClash {
                    port: tunnel,
                    first: "--admin-addr",
                    second: "--tunnel-port",
                });
            }
        }
        if http.contains(&self.admin_addr.port()) {
            return Err(Error::PortClash {
                port: self.admin_addr.port(),
                first: "--http-ports",
                second: "--admin-addr",
            });
        }
        Ok(())
    }

    /// Worker threads per listener group.
    pub fn worker_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1)
    }

    /// The addresses of the listening sockets handed over on upgrade (HTTP, TCP, admin), in
    /// the form Pingora keys them by. UDP sockets are not handed over (`SO_REUSEPORT`).
    pub fn handover_addrs(&self) -> std::collections::HashSet<String> {
        self.http_listen_addrs()
            .into_iter()
            .chain(self.tcp_listen_addrs())
            .chain(std::iter::once(self.admin_addr))
            .map(|a| a.to_string())
            .collect()
    }

    /// The client connection limits of the HTTP listeners.
    pub fn http_conn_limits(&self) -> crate::http::conn::ConnLimits {
        crate::http::conn::ConnLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections as usize,
        }
    }

    /// Listener addresses of the HTTP ports.
    pub fn http_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_addrs(&self.http_ports)
    }

    /// Listener addresses of the TCP ports.
    pub fn tcp_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_addrs(&self.tcp_ports)
    }

    /// Listener addresses of the UDP ports.
    pub fn udp_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_addrs(&self.udp_ports)
    }

    fn listen_addrs(&self, ports: &PortList) -> Vec<SocketAddr> {
        ports
            .0
            .iter()
            .map(|p| SocketAddr::new(self.listen_ip, *p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_accept_ranges_lists_and_mixes() {
        let p: PortList = "5000-5003".parse().unwrap();
        assert_eq!(p.0, vec![5000, 5001, 5002, 5003]);
        let p: PortList = "41000,41007,41013".parse().unwrap();
        assert_eq!(p.0, vec![41000, 41007, 41013]);
        let p: PortList = "5000-5002, 6000".parse().unwrap();
        assert_eq!(p.0, vec![5000, 5001, 5002, 6000]);
        assert!("none".parse::<PortList>().unwrap().is_empty());
        assert!("".parse::<PortList>().unwrap().is_empty());
        assert_eq!(p.to_string(), "5000,5001,5002,6000");
    }

    #[test]
    fn port_lists_name_the_bad_part() {
        let e = "5000-49x".parse::<PortList>().unwrap_err().to_string();
        assert!(e.contains("\"49x\""), "{e}");
        let e = "5009-5000".parse::<PortList>().unwrap_err().to_string();
        assert!(e.contains("backwards"), "{e}");
        let e = "5000,5000".parse::<PortList>().unwrap_err().to_string();
        assert!(e.contains("5000 is listed twice"), "{e}");
        let e = "0".parse::<PortList>().unwrap_err().to_string();
        assert!(e.contains("not a port"), "{e}");
        let e = "70000".parse::<PortList>().unwrap_err().to_string();
        assert!(e.contains("not a port"), "{e}");
    }

    #[test]
    fn flags_parse_with_defaults_and_env_names() {
        let c = Config::try_parse_from(["maille-proxy"]).unwrap();
        assert_eq!(c.http_ports.0.len(), 10);
        assert_eq!(c.tcp_ports.0.first(), Some(&10000));
        assert_eq!(c.udp_ports.0.last(), Some(&15024));
        assert_eq!(c.admin_addr.port(), 8081);
        assert_eq!(c.grace_period_seconds, 10);
        let c = Config::try_parse_from([
            "maille-proxy",
            "--http-ports",
            "41000,41007",
            "--tcp-ports",
            "none",
            "--config",
            "/tmp/t.json",
            "-u",
        ])
        .unwrap();
        assert_eq!(c.http_ports.0, vec![41000, 41007]);
        assert!(c.tcp_ports.is_empty());
        assert!(c.upgrade);
        assert!(Config::try_parse_from([
            "maille-proxy",
            "--config",
            "x",
            "--controller-url",
            "http://c"
        ])
        .is_err());
    }

    #[test]
    fn tcp_and_udp_flags_parse_durations_and_bounds() {
        let c = Config::try_parse_from(["maille-proxy"]).unwrap();
        assert_eq!(c.tcp_connect_timeout, Duration::from_secs(5));
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.udp_session_idle_timeout, Duration::from_secs(60));
        assert_eq!((c.tcp_connect_attempts, c.udp_max_sessions), (3, 10_000));
        let c = Config::try_parse_from([
            "maille-proxy",
            "--tcp-connect-timeout",
            "250ms",
            "--tcp-idle-timeout",
            "0",
            "--udp-session-idle-timeout",
            "1m30s",
            "--udp-max-sessions",
            "7",
        ])
        .unwrap();
        assert_eq!(c.tcp_connect_timeout, Duration::from_millis(250));
        assert!(c.tcp_idle_timeout.is_zero());
        assert_eq!(c.udp_session_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.udp_max_sessions, 7);
        for bad in [
            ["--tcp-connect-timeout", "0"],
            ["--tcp-connect-timeout", "5"],
            ["--udp-session-idle-timeout", "0s"],
            ["--tcp-connect-attempts", "0"],
            ["--udp-max-sessions", "0"],
        ] {
            let e = Config::try_parse_from(["maille-proxy", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_invalid_log_filter_is_refused_naming_the_flag() {
        let e = Config::try_parse_from(["maille-proxy", "--log", "maille_proxy=loud"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--log") && msg.contains("maille_proxy=loud"),
            "{msg}"
        );
        let c =
            Config::try_parse_from(["maille-proxy", "--log", "info,maille_proxy=debug"]).unwrap();
        assert_eq!(c.logging.log.as_deref(), Some("info,maille_proxy=debug"));
    }

    #[test]
    fn the_controller_answer_bound_takes_sizes() {
        let c = Config::try_parse_from(["maille-proxy"]).unwrap();
        assert_eq!(c.controller_max_table_bytes, 64 << 20);
        for (flag, bytes) in [
            ("1048576", 1 << 20),
            ("512KiB", 512 << 10),
            ("2GiB", 2 << 30),
        ] {
            let c = Config::try_parse_from(["maille-proxy", "--controller-max-table-bytes", flag])
                .unwrap();
            assert_eq!(c.controller_max_table_bytes, bytes, "{flag}");
        }
        for bad in ["0", "12MB", "x", "99999999999GiB"] {
            let e = Config::try_parse_from(["maille-proxy", "--controller-max-table-bytes", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn tracing_flags_parse_and_refuse_bad_values() {
        let c = Config::try_parse_from(["maille-proxy"]).unwrap();
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.trace_sampling_ratio, None);
        let c = Config::try_parse_from([
            "maille-proxy",
            "--otlp-endpoint",
            "http://otel-collector:4317",
            "--otlp-protocol",
            "grpc",
            "--trace-sampling-ratio",
            "0.01",
            "--trace-queue-size",
            "100",
            "--trace-batch-delay",
            "200ms",
        ])
        .unwrap();
        assert_eq!(
            c.otlp_endpoint.as_deref(),
            Some("http://otel-collector:4317")
        );
        assert_eq!(c.otlp_protocol, Some(OtlpProtocol::Grpc));
        assert_eq!(c.trace_sampling_ratio, Some(0.01));
        assert_eq!(c.trace_queue_size, Some(100));
        assert_eq!(c.trace_batch_delay, Some(Duration::from_millis(200)));
        let c = Config::try_parse_from(["maille-proxy", "--otlp-protocol", "http/protobuf"]);
        assert_eq!(c.unwrap().otlp_protocol, Some(OtlpProtocol::HttpProtobuf));
        for bad in [
            ["--trace-sampling-ratio", "1.5"],
            ["--trace-sampling-ratio", "-0.1"],
            ["--trace-sampling-ratio", "most"],
            ["--trace-queue-size", "0"],
            ["--otlp-protocol", "http/json"],
            ["--trace-batch-delay", "0"],
        ] {
            let arg = format!("{}={}", bad[0], bad[1]);
            let e = Config::try_parse_from(["maille-proxy", &arg]).unwrap_err();
            assert!(e.to_string().contains(bad[1]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn http_connection_flags_have_bounded_defaults() {
        let c = Config::try_parse_from(["maille-proxy"]).unwrap();
        assert_eq!(
            c.http_conn_limits(),
            crate::http::conn::ConnLimits::default()
        );
        assert_eq!(c.http_conn_limits(), Config::default().http_conn_limits());
        let c = Config::try_parse_from([
            "maille-proxy",
            "--http-header-timeout",
            "500ms",
            "--http-idle-timeout",
            "2m",
            "--http-max-connections",
            "3",
        ])
        .unwrap();
        assert_eq!(c.http_header_timeout, Duration::from_millis(500));
        assert_eq!(c.http_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.http_max_connections, 3);
        for bad in [
            ["--http-header-timeout", "0"],
            ["--http-idle-timeout", "0s"],
            ["--http-max-connections", "0"],
        ] {
            let e = Config::try_parse_from(["maille-proxy", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn clashing_ports_are_refused() {
        let c = Config {
            http_ports: "5000-5009".parse().unwrap(),
            tcp_ports: "5009-5010".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "port 5009 appears in both --http-ports and --tcp-ports"
        );
        assert!(Config::default().validate().is_ok());
    }
}
