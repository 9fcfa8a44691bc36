//! Every metric of the proxy, in one [`Metrics`] registered once in the `prometheus` default
//! registry (the one `/metrics` serves), as the controller's `metrics.rs` does. Subsystems take
//! their handles from [`register`]; per-service handles are resolved from it once per table
//! or connection (`tcp::metrics`, `udp::metrics`, `resilience::metrics`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use config_model::WorkloadIdentity;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Labels of a service port: `namespace`, `service`, `port` (the Service port).
pub const SERVICE_LABELS: [&str; 3] = ["namespace", "service", "port"];

/// Every metric of the proxy.
pub struct Metrics {
    /// `maille_proxy_http_requests_total{namespace,service,port,code}`; requests that matched
    /// no route have empty `namespace`/`service` and the listener port.
    pub http_requests: IntCounterVec,
    /// `maille_proxy_http_request_duration_seconds{namespace,service,port}`.
    pub http_duration: HistogramVec,
    /// `maille_proxy_http_connections_open`.
    pub http_connections_open: IntGauge,
    /// `maille_proxy_http_client_timeouts_total{phase}`.
    pub http_client_timeouts: IntCounterVec,
    /// `maille_proxy_http_connections_refused_total`.
    pub http_connections_refused: IntCounter,
    /// `maille_proxy_table_version`.
    pub table_version: IntGauge,
    /// `maille_proxy_table_last_swap_timestamp_seconds`.
    pub table_last_swap: IntGauge,
    /// `maille_proxy_unroutable_services{namespace,service,port,reason}`.
    pub unroutable_services: IntGaugeVec,
    /// `maille_proxy_table_swaps_total`.
    pub table_swaps: IntCounter,
    /// `maille_proxy_table_refusals_total`.
    pub table_refusals: IntCounter,
    /// `maille_proxy_tcp_connections_opened_total{namespace,service,port}`.
    pub tcp_opened: IntCounterVec,
    /// `maille_proxy_tcp_connections_closed_total{namespace,service,port}`.
    pub tcp_closed: IntCounterVec,
    /// `maille_proxy_tcp_connections_failed_total{namespace,service,port}`.
    pub tcp_failed: IntCounterVec,
    /// `maille_proxy_tcp_connections_open{namespace,service,port}`.
    pub tcp_open: IntGaugeVec,
    /// `maille_proxy_tcp_received_bytes_total{namespace,service,port}`.
    pub tcp_received: IntCounterVec,
    /// `maille_proxy_tcp_sent_bytes_total{namespace,service,port}`.
    pub tcp_sent: IntCounterVec,
    /// `maille_proxy_udp_datagrams_received_total{namespace,service,port}`.
    pub udp_datagrams_received: IntCounterVec,
    /// `maille_proxy_udp_datagrams_sent_total{namespace,service,port}`.
    pub udp_datagrams_sent: IntCounterVec,
    /// `maille_proxy_udp_received_bytes_total{namespace,service,port}`.
    pub udp_bytes_received: IntCounterVec,
    /// `maille_proxy_udp_sent_bytes_total{namespace,service,port}`.
    pub udp_bytes_sent: IntCounterVec,
    /// `maille_proxy_udp_sessions_active{namespace,service,port}`.
    pub udp_sessions: IntGaugeVec,
    /// `maille_proxy_udp_dropped_total{namespace,service,port,reason}`.
    pub udp_dropped: IntCounterVec,
    /// `maille_proxy_retries_total{namespace,service,port}`.
    pub retries: IntCounterVec,
    /// `maille_proxy_retry_budget_exhausted_total{namespace,service,port}`.
    pub retry_budget_exhausted: IntCounterVec,
    /// `maille_proxy_ratelimited_requests_total{namespace,service,port}`.
    pub ratelimited: IntCounterVec,
    /// `maille_proxy_timeouts_total{namespace,service,port}`.
    pub timeouts: IntCounterVec,
    /// `maille_proxy_circuit_breaker_trips_total{namespace,service,port}`.
    pub breaker_trips: IntCounterVec,
    /// `maille_proxy_circuit_breaker_rejected_total{namespace,service,port}`.
    pub breaker_rejected: IntCounterVec,
    /// `maille_proxy_circuit_breaker_state{namespace,service,port}`.
    pub breaker_state: IntGaugeVec,
    /// `maille_proxy_endpoint_ejections_total`.
    pub endpoint_ejections: IntCounter,
    /// `maille_proxy_acl_denied_total{namespace,service,port,source}`.
    pub acl_denied: IntCounterVec,
    /// `maille_proxy_split_requests_total{namespace,service,port,backend}`.
    pub split_requests: IntCounterVec,
    /// `maille_proxy_route_requests_total{namespace,service,port,route,rule}`.
    pub route_requests: IntCounterVec,
    /// `maille_proxy_trace_spans_exported_total`.
    pub spans_exported: IntCounter,
    /// `maille_proxy_trace_spans_dropped_total{reason}`.
    pub spans_dropped: IntCounterVec,
    /// `maille_proxy_identity_certificate_expiry_timestamp_seconds`.
    pub identity_expiry: IntGauge,
    /// `maille_proxy_identity_certificates_total{kind}`.
    pub identity_certificates: IntCounterVec,
    /// `maille_proxy_identity_renewal_failures_total{reason}`.
    pub identity_failures: IntCounterVec,
    /// `maille_proxy_tunnel_handshakes_total{result}`.
    pub tunnel_handshakes: IntCounterVec,
    /// `maille_proxy_tunnel_streams_total{direction,protocol,result}`.
    pub tunnel_streams: IntCounterVec,
    /// `maille_proxy_tunnel_bytes_total{direction,way}`.
    pub tunnel_bytes: IntCounterVec,
    /// `maille_proxy_tunnel_sessions_open{direction}`.
    pub tunnel_sessions: IntGaugeVec,
    /// `maille_proxy_tunnel_denied_total{reason}`.
    pub tunnel_denied: IntCounterVec,
    /// `maille_proxy_tunnel_http_streams_total{event}`: plain HTTP/1 requests across nodes and
    /// the tunnel streams kept between them ([`crate::tunnel::lease`]).
    pub tunnel_http_streams: IntCounterVec,
    /// `maille_proxy_tunnel_http_streams_idle`: tunnel streams kept for another request now.
    pub tunnel_http_idle: IntGauge,
    /// `maille_proxy_mtls_cleartext_total{namespace,service,port,protocol}`.
    pub mtls_cleartext: IntCounterVec,
    /// `maille_proxy_mtls_refused_total{namespace,service,port,protocol}`.
    pub mtls_refused: IntCounterVec,
    /// `maille_proxy_tunnel_client_identities_total{identity,result}`: streams a peer opened,
    /// by the client identity it stated; label values bounded by [`IdentityLabels`].
    pub tunnel_identities: IntCounterVec,
    /// The identity label values in use.
    pub identity_labels: IdentityLabels,
}

/// Bounds the `identity` label of `maille_proxy_tunnel_client_identities_total`: the first
/// [`IdentityLabels::MAX`] distinct client identities get a series each, later ones share
/// `other` (a cluster may have any number of ServiceAccounts; a proxy's /metrics must not grow
/// with them). A stream without a stated identity is `none`. Counting a known identity takes no
/// lock and allocates nothing: the counters of each identity are kept in a map read through an
/// `ArcSwap`, copied only when an identity is added.
#[derive(Default)]
pub struct IdentityLabels {
    known: arc_swap::ArcSwap<HashMap<WorkloadIdentity, [IntCounter; 2]>>,
    /// `none` and `other`.
    fixed: std::sync::OnceLock<[[IntCounter; 2]; 2]>,
    adding: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for IdentityLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityLabels")
            .field("known", &self.known.load().len())
            .finish_non_exhaustive()
    }
}

/// The `result` values of `maille_proxy_tunnel_client_identities_total`, by `!admitted`.
const IDENTITY_RESULTS: [&str; 2] = ["admitted", "denied"];

fn identity_pair(vec: &IntCounterVec, label: &str) -> [IntCounter; 2] {
    IDENTITY_RESULTS.map(|r| vec.with_label_values(&[label, r]))
}

impl IdentityLabels {
    /// Distinct identities with a series of their own.
    pub const MAX: usize = 256;

    /// The counter of `identity` (`None`: no identity stated) and result in `vec`.
    pub fn counter(
        &self,
        vec: &IntCounterVec,
        identity: Option<&WorkloadIdentity>,
        admitted: bool,
    ) -> IntCounter {
        let r = usize::from(!admitted);
        let fixed = self
            .fixed
            .get_or_init(|| [identity_pair(vec, "none"), identity_pair(vec, "other")]);
        let Some(identity) = identity else {
            return fixed[0][r].clone();
        };
        let known = self.known.load();
        if let Some(c) = known.get(identity) {
            return c[r].clone();
        }
        if known.len() >= Self::MAX {
            return fixed[1][r].clone();
        }
        drop(known);
        let _one = self.adding.lock();
        let known = self.known.load_full();
        if let Some(c) = known.get(identity) {
            return c[r].clone();
        }
        if known.len() >= Self::MAX {
            return fixed[1][r].clone();
        }
        let pair = identity_pair(vec, &identity.to_string());
        let c = pair[r].clone();
        let mut next = HashMap::clone(&known);
        next.insert(identity.clone(), pair);
        self.known.store(Arc::new(next));
        c
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge!(name, help).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(name, help, labels).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

/// The `reason` values of `maille_proxy_identity_renewal_failures_total`.
pub const IDENTITY_FAILURE_REASONS: [&str; 6] = [
    "token",
    "unreachable",
    "untrusted",
    "trust_anchor",
    "refused",
    "invalid",
];

/// The `result` values of `maille_proxy_tunnel_streams_total`: out (this proxy opened the
/// stream) and in (a peer did).
pub const TUNNEL_STREAM_RESULTS: [(&str, &[&str]); 2] = [
    (
        "out",
        &[
            "ok",
            "no_identity",
            "dial_failed",
            "denied",
            "unreachable",
            "refused",
            "timeout",
            "error",
        ],
    ),
    (
        "in",
        &["ok", "bad_request", "denied", "unreachable", "error"],
    ),
];

/// The `reason` values of `maille_proxy_trace_spans_dropped_total`.
pub const SPAN_DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    const S: &[&str] = &SERVICE_LABELS;
    let m = Metrics {
        http_requests: counter_vec(
            "maille_proxy_http_requests_total",
            "HTTP requests answered by the proxy, by service port and status code.",
            &["namespace", "service", "port", "code"],
        ),
        http_duration: register_histogram_vec!(
            "maille_proxy_http_request_duration_seconds",
            "Time from the request header to the end of the response, by service port.",
            S,
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        )
        .expect("register maille_proxy_http_request_duration_seconds"),
        http_connections_open: gauge(
            "maille_proxy_http_connections_open",
            "Client connections open on the HTTP listeners.",
        ),
        http_client_timeouts: counter_vec(
            "maille_proxy_http_client_timeouts_total",
            "Client connections on the HTTP listeners closed because a request header was not read in time (phase=header) or no next request came (phase=idle).",
            &["phase"],
        ),
        http_connections_refused: counter(
            "maille_proxy_http_connections_refused_total",
            "Client connections closed at accept because --http-max-connections were already open.",
        ),
        table_version: gauge(
            "maille_proxy_table_version",
            "Version (controller generation) of the routing table in use.",
        ),
        table_last_swap: gauge(
            "maille_proxy_table_last_swap_timestamp_seconds",
            "Unix time at which the routing table in use was swapped in.",
        ),
        unroutable_services: gauge_vec(
            "maille_proxy_unroutable_services",
            "Service ports of the current table that this proxy cannot route (1 each), by reason: no_listener (the mesh port is not among this proxy's listener ports of the service's traffic type) or wrong_listener (the port is a listener of another traffic type).",
            &["namespace", "service", "port", "reason"],
        ),
        table_swaps: counter("maille_proxy_table_swaps_total", "Routing tables swapped in."),
        table_refusals: counter(
            "maille_proxy_table_refusals_total",
            "Routing tables refused because they did not parse or validate.",
        ),
        tcp_opened: counter_vec(
            "maille_proxy_tcp_connections_opened_total",
            "TCP connections accepted on a mesh port and routed to a service.",
            S,
        ),
        tcp_closed: counter_vec(
            "maille_proxy_tcp_connections_closed_total",
            "Routed TCP connections that have ended, for whatever reason.",
            S,
        ),
        tcp_failed: counter_vec(
            "maille_proxy_tcp_connections_failed_total",
            "TCP connections closed without reaching an endpoint (no route, no endpoint, or every connect attempt failed).",
            S,
        ),
        tcp_open: gauge_vec(
            "maille_proxy_tcp_connections_open",
            "Routed TCP connections currently open.",
            S,
        ),
        tcp_received: counter_vec(
            "maille_proxy_tcp_received_bytes_total",
            "Bytes received from TCP clients and forwarded to endpoints.",
            S,
        ),
        tcp_sent: counter_vec(
            "maille_proxy_tcp_sent_bytes_total",
            "Bytes received from endpoints and sent to TCP clients.",
            S,
        ),
        udp_datagrams_received: counter_vec(
            "maille_proxy_udp_datagrams_received_total",
            "Datagrams received from UDP clients and routed to a service.",
            S,
        ),
        udp_datagrams_sent: counter_vec(
            "maille_proxy_udp_datagrams_sent_total",
            "Datagrams from endpoints sent back to UDP clients.",
            S,
        ),
        udp_bytes_received: counter_vec(
            "maille_proxy_udp_received_bytes_total",
            "Payload bytes received from UDP clients and routed to a service.",
            S,
        ),
        udp_bytes_sent: counter_vec(
            "maille_proxy_udp_sent_bytes_total",
            "Payload bytes from endpoints sent back to UDP clients.",
            S,
        ),
        udp_sessions: gauge_vec(
            "maille_proxy_udp_sessions_active",
            "UDP sessions (client address with its own upstream socket) currently open.",
            S,
        ),
        udp_dropped: counter_vec(
            "maille_proxy_udp_dropped_total",
            "Datagrams dropped, by reason.",
            &["namespace", "service", "port", "reason"],
        ),
        retries: counter_vec(
            "maille_proxy_retries_total",
            "Requests sent again to another endpoint after a connect failure or an upstream error.",
            S,
        ),
        retry_budget_exhausted: counter_vec(
            "maille_proxy_retry_budget_exhausted_total",
            "Retries not made because the service's retry budget was spent.",
            S,
        ),
        ratelimited: counter_vec(
            "maille_proxy_ratelimited_requests_total",
            "Requests answered 429 by the service's rate limit.",
            S,
        ),
        timeouts: counter_vec(
            "maille_proxy_timeouts_total",
            "Requests answered 504 because the service's whole-request timeout expired.",
            S,
        ),
        breaker_trips: counter_vec(
            "maille_proxy_circuit_breaker_trips_total",
            "Times the service's circuit breaker opened.",
            S,
        ),
        breaker_rejected: counter_vec(
            "maille_proxy_circuit_breaker_rejected_total",
            "Requests answered 503 at once because the service's circuit breaker was open.",
            S,
        ),
        breaker_state: gauge_vec(
            "maille_proxy_circuit_breaker_state",
            "State of the service's circuit breaker: 0 closed, 1 open, 2 half-open.",
            S,
        ),
        endpoint_ejections: counter(
            "maille_proxy_endpoint_ejections_total",
            "Endpoints ejected by passive health after consecutive connect failures or resets (each ejection counts once).",
        ),
        acl_denied: counter_vec(
            "maille_proxy_acl_denied_total",
            "Requests (403), TCP connections (closed) and UDP datagrams (dropped) that no TrafficTarget allowed, by service port and client address.",
            &["namespace", "service", "port", "source"],
        ),
        split_requests: counter_vec(
            "maille_proxy_split_requests_total",
            "Requests (HTTP) or connections (TCP) sent by a traffic split to a backend, by root service port and backend service (namespace/name).",
            &["namespace", "service", "port", "backend"],
        ),
        route_requests: counter_vec(
            "maille_proxy_route_requests_total",
            "Requests to a service port that a Gateway API route entry matched, by route (namespace/name) and rule index.",
            &["namespace", "service", "port", "route", "rule"],
        ),
        spans_exported: counter(
            "maille_proxy_trace_spans_exported_total",
            "Spans sent to the OTLP collector and accepted by it.",
        ),
        spans_dropped: counter_vec(
            "maille_proxy_trace_spans_dropped_total",
            "Spans not exported, by reason: queue_full (export queue full) or export_failed.",
            &["reason"],
        ),
        identity_expiry: gauge(
            "maille_proxy_identity_certificate_expiry_timestamp_seconds",
            "When the proxy's mesh certificate expires (Unix seconds); 0 while it holds none.",
        ),
        identity_certificates: counter_vec(
            "maille_proxy_identity_certificates_total",
            "Certificates the proxy received from the controller (first and renewals).",
            &["kind"],
        ),
        identity_failures: counter_vec(
            "maille_proxy_identity_renewal_failures_total",
            "Failed certificate requests, by reason: token (unreadable token file, no identity URL), unreachable (no controller answered), untrusted (the identity server's certificate does not verify against the pinned roots), trust_anchor (the pinned roots cannot be read), refused (the controller said no), invalid (an answer the proxy cannot use).",
            &["reason"],
        ),
        tunnel_handshakes: counter_vec(
            "maille_proxy_tunnel_handshakes_total",
            "Connections to the tunnel port by handshake result: ok, no_client_certificate, unknown_ca, expired, foreign_trust_domain, bad_certificate, not_tls, timeout, no_identity (this proxy holds no certificate), overload.",
            &["result"],
        ),
        tunnel_streams: counter_vec(
            "maille_proxy_tunnel_streams_total",
            "Streams through the tunnel between node proxies, by direction (out: opened by this proxy for a client; in: opened by a peer proxy), protocol (tcp, also HTTP; udp) and result: ok, no_identity (no certificate held), dial_failed (no session to the peer), denied (the destination refused the claim), unreachable (the destination could not reach the endpoint), refused, timeout, bad_request (in: a claim that cannot be read), error.",
            &["direction", "protocol", "result"],
        ),
        tunnel_bytes: counter_vec(
            "maille_proxy_tunnel_bytes_total",
            "Payload bytes of tunnel streams, by direction (out, in: who opened the stream) and way (sent, received by this proxy).",
            &["direction", "way"],
        ),
        tunnel_sessions: gauge_vec(
            "maille_proxy_tunnel_sessions_open",
            "Mutual-TLS sessions with peer node proxies currently open, by direction (out: dialled by this proxy; in: accepted).",
            &["direction"],
        ),
        tunnel_denied: counter_vec(
            "maille_proxy_tunnel_denied_total",
            "Tunnel streams this proxy refused to carry to a pod of its node, by reason.",
            &["reason"],
        ),
        tunnel_http_streams: counter_vec(
            "maille_proxy_tunnel_http_streams_total",
            "Plain HTTP/1 requests to other nodes and their tunnel streams, by event: opened (the request opened a new stream), reused (it rode a stream kept from an earlier request), kept (kept after the request for another one), not_kept (closed with the request: an error, Connection: close, HTTP/1.0, an upgrade, an unread body), full (clean, but the bounds on kept streams were reached), stale (a kept stream closed unused: idle too long, its session or certificate replaced, or bytes arrived on it).",
            &["event"],
        ),
        tunnel_http_idle: gauge(
            "maille_proxy_tunnel_http_streams_idle",
            "Tunnel streams kept between plain HTTP/1 requests to other nodes, now.",
        ),
        mtls_cleartext: counter_vec(
            "maille_proxy_mtls_cleartext_total",
            "Requests (HTTP), connections (TCP) and sessions (UDP) sent in cleartext to an endpoint on another node because that node runs no proxy (mtls: permissive).",
            &["namespace", "service", "port", "protocol"],
        ),
        mtls_refused: counter_vec(
            "maille_proxy_mtls_refused_total",
            "Requests (503), connections (closed) and datagrams (dropped) not sent because the endpoint's node runs no proxy (mtls: strict).",
            &["namespace", "service", "port", "protocol"],
        ),
        tunnel_identities: counter_vec(
            "maille_proxy_tunnel_client_identities_total",
            "Tunnel streams peers opened to this proxy, by the client identity the source proxy stated (namespace/serviceaccount; none for a client outside the mesh; other once 256 distinct identities have a series) and result: admitted or denied.",
            &["identity", "result"],
        ),
        identity_labels: IdentityLabels::default(),
    };
    // Series of fixed label values are served at zero before anything happens.
    for phase in ["header", "idle"] {
        m.http_client_timeouts.with_label_values(&[phase]);
    }
    for reason in SPAN_DROP_REASONS {
        m.spans_dropped.with_label_values(&[reason]);
    }
    for reason in IDENTITY_FAILURE_REASONS {
        m.identity_failures.with_label_values(&[reason]);
    }
    for kind in ["first", "renewal"] {
        m.identity_certificates.with_label_values(&[kind]);
    }
    for result in crate::identity::tunnel::RESULTS {
        m.tunnel_handshakes.with_label_values(&[result]);
    }
    for (direction, results) in TUNNEL_STREAM_RESULTS {
        for result in results {
            m.tunnel_streams
                .with_label_values(&[direction, "tcp", result]);
        }
        for way in ["sent", "received"] {
            m.tunnel_bytes.with_label_values(&[direction, way]);
        }
        m.tunnel_sessions.with_label_values(&[direction]);
    }
    for event in crate::tunnel::lease::EVENTS {
        m.tunnel_http_streams.with_label_values(&[event]);
    }
    m
});

/// Every metric of the proxy, registered in the default registry on the first call (the
/// server calls it at start, so that `/metrics` shows them before any traffic).
pub fn register() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::IdentityLabels;
    use config_model::WorkloadIdentity;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn identity_labels_are_bounded() {
        let vec = IntCounterVec::new(Opts::new("t", "t"), &["identity", "result"]).unwrap();
        let count = |labels: &IdentityLabels, id: Option<&str>, admitted: bool| {
            let id: Option<WorkloadIdentity> = id.map(|i| i.parse().unwrap());
            labels.counter(&vec, id.as_ref(), admitted).inc();
        };
        let value = |id: &str, result: &str| vec.with_label_values(&[id, result]).get();
        let labels = IdentityLabels::default();
        count(&labels, None, true);
        assert_eq!(value("none", "admitted"), 1);
        for i in 0..IdentityLabels::MAX {
            count(&labels, Some(&format!("ns/sa-{i}")), i % 2 == 0);
        }
        assert_eq!(value("ns/sa-2", "admitted"), 1);
        assert_eq!(value("ns/sa-3", "denied"), 1);
        // Full: a new identity shares `other`, a known one keeps its own series.
        count(&labels, Some("ns/late"), false);
        assert_eq!(value("other", "denied"), 1);
        count(&labels, Some("ns/sa-7"), false);
        assert_eq!(value("ns/sa-7", "denied"), 2);
        assert_eq!(vec.with_label_values(&["ns/late", "denied"]).get(), 0);
    }
}
