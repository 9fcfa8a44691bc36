//! Prometheus metrics of the UDP listeners.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec};
use prometheus::{IntGauge, IntGaugeVec};

use crate::refusal::Refusal;

const LABELS: &[&str] = &["namespace", "service", "port"];

static DATAGRAMS_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_udp_datagrams_received_total",
        "Datagrams received from UDP clients and routed to a service.",
        LABELS
    )
    .expect("register maille_proxy_udp_datagrams_received_total")
});

static DATAGRAMS_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_udp_datagrams_sent_total",
        "Datagrams from endpoints sent back to UDP clients.",
        LABELS
    )
    .expect("register maille_proxy_udp_datagrams_sent_total")
});

static BYTES_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_udp_received_bytes_total",
        "Payload bytes received from UDP clients and routed to a service.",
        LABELS
    )
    .expect("register maille_proxy_udp_received_bytes_total")
});

static BYTES_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_udp_sent_bytes_total",
        "Payload bytes from endpoints sent back to UDP clients.",
        LABELS
    )
    .expect("register maille_proxy_udp_sent_bytes_total")
});

static SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maille_proxy_udp_sessions_active",
        "UDP sessions (client address with its own upstream socket) currently open.",
        LABELS
    )
    .expect("register maille_proxy_udp_sessions_active")
});

static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_udp_dropped_total",
        "Datagrams dropped, by reason.",
        &["namespace", "service", "port", "reason"]
    )
    .expect("register maille_proxy_udp_dropped_total")
});

/// Registers the UDP metrics with the default registry, so that they are served (at zero)
/// before the first datagram.
pub fn register() {
    LazyLock::force(&DATAGRAMS_RECEIVED);
    LazyLock::force(&DATAGRAMS_SENT);
    LazyLock::force(&BYTES_RECEIVED);
    LazyLock::force(&BYTES_SENT);
    LazyLock::force(&SESSIONS);
    LazyLock::force(&DROPPED);
}

/// Why a datagram was dropped; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Refused before any endpoint saw it: no route, access denied, no endpoint.
    Refused(Refusal),
    /// A new session was needed but `--udp-max-sessions` are open.
    SessionLimit,
    /// The upstream socket could not be opened or the datagram not sent on it.
    UpstreamError,
    /// The reply could not be sent back to the client.
    ClientError,
}

impl DropReason {
    fn reason(self) -> &'static str {
        match self {
            DropReason::Refused(r) => r.reason(),
            DropReason::SessionLimit => "session_limit",
            DropReason::UpstreamError => "upstream_error",
            DropReason::ClientError => "client_error",
        }
    }
}

/// A datagram on a mesh port that no UDP service is mapped to: counted with empty `namespace`
/// and `service` and the mesh (listener) port as `port`.
pub(crate) fn dropped_unrouted(mesh_port: u16) {
    DROPPED
        .with_label_values(&["", "", &mesh_port.to_string(), Refusal::NoRoute.reason()])
        .inc();
}

/// The metric handles of one service port, resolved once per session (or per dropped datagram).
#[derive(Clone)]
pub(crate) struct ServiceMetrics {
    labels: [String; 3],
    pub(crate) datagrams_received: IntCounter,
    pub(crate) datagrams_sent: IntCounter,
    pub(crate) bytes_received: IntCounter,
    pub(crate) bytes_sent: IntCounter,
    pub(crate) sessions: IntGauge,
}

impl ServiceMetrics {
    pub(crate) fn new(l: [&str; 3]) -> ServiceMetrics {
        let labels = l.map(str::to_string);
        ServiceMetrics {
            datagrams_received: DATAGRAMS_RECEIVED.with_label_values(&l),
            datagrams_sent: DATAGRAMS_SENT.with_label_values(&l),
            bytes_received: BYTES_RECEIVED.with_label_values(&l),
            bytes_sent: BYTES_SENT.with_label_values(&l),
            sessions: SESSIONS.with_label_values(&l),
            labels,
        }
    }

    /// A datagram from a client, about to be forwarded.
    pub(crate) fn received(&self, len: usize) {
        self.datagrams_received.inc();
        self.bytes_received.inc_by(len as u64);
    }

    /// A reply delivered to a client.
    pub(crate) fn sent(&self, len: usize) {
        self.datagrams_sent.inc();
        self.bytes_sent.inc_by(len as u64);
    }

    pub(crate) fn dropped(&self, why: DropReason) {
        let [ns, name, port] = &self.labels;
        DROPPED
            .with_label_values(&[ns.as_str(), name.as_str(), port.as_str(), why.reason()])
            .inc();
    }
}
