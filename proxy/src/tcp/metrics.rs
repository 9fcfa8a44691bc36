//! Prometheus metrics of the TCP listeners.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec};
use prometheus::{IntGauge, IntGaugeVec};

const LABELS: &[&str] = &["namespace", "service", "port"];

static OPENED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_tcp_connections_opened_total",
        "TCP connections accepted on a mesh port and routed to a service.",
        LABELS
    )
    .expect("register maille_proxy_tcp_connections_opened_total")
});

static CLOSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_tcp_connections_closed_total",
        "Routed TCP connections that have ended, for whatever reason.",
        LABELS
    )
    .expect("register maille_proxy_tcp_connections_closed_total")
});

static FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_tcp_connections_failed_total",
        "TCP connections closed without reaching an endpoint (no route, no endpoint, or every \
         connect attempt failed).",
        LABELS
    )
    .expect("register maille_proxy_tcp_connections_failed_total")
});

static OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maille_proxy_tcp_connections_open",
        "Routed TCP connections currently open.",
        LABELS
    )
    .expect("register maille_proxy_tcp_connections_open")
});

static RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_tcp_received_bytes_total",
        "Bytes received from TCP clients and forwarded to endpoints.",
        LABELS
    )
    .expect("register maille_proxy_tcp_received_bytes_total")
});

static SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_tcp_sent_bytes_total",
        "Bytes received from endpoints and sent to TCP clients.",
        LABELS
    )
    .expect("register maille_proxy_tcp_sent_bytes_total")
});

/// Registers the TCP metrics with the default registry, so that they are served (at zero)
/// before the first connection.
pub fn register() {
    LazyLock::force(&OPENED);
    LazyLock::force(&CLOSED);
    LazyLock::force(&FAILED);
    LazyLock::force(&OPEN);
    LazyLock::force(&RECEIVED);
    LazyLock::force(&SENT);
}

/// A connection on a mesh port that no TCP service is mapped to: counted as failed with empty
/// `namespace` and `service` and the mesh (listener) port as `port`.
pub(crate) fn unrouted(mesh_port: u16) {
    FAILED
        .with_label_values(&["", "", &mesh_port.to_string()])
        .inc();
}

/// The metric handles of one service port, resolved once per connection.
#[derive(Clone)]
pub(crate) struct ConnMetrics {
    closed: IntCounter,
    failed: IntCounter,
    open: IntGauge,
    /// Client → endpoint bytes.
    pub(crate) received: IntCounter,
    /// Endpoint → client bytes.
    pub(crate) sent: IntCounter,
}

impl ConnMetrics {
    /// Counts a new routed connection and returns the handles for the rest of its life. The
    /// returned guard counts it closed when dropped, however the connection ends.
    pub(crate) fn open(labels: [&str; 3]) -> OpenConn {
        OPENED.with_label_values(&labels).inc();
        let m = ConnMetrics {
            closed: CLOSED.with_label_values(&labels),
            failed: FAILED.with_label_values(&labels),
            open: OPEN.with_label_values(&labels),
            received: RECEIVED.with_label_values(&labels),
            sent: SENT.with_label_values(&labels),
        };
        m.open.inc();
        OpenConn(m)
    }
}

/// A routed connection, counted open until dropped.
pub(crate) struct OpenConn(ConnMetrics);

impl OpenConn {
    pub(crate) fn metrics(&self) -> &ConnMetrics {
        &self.0
    }

    /// No endpoint could be reached.
    pub(crate) fn failed(&self) {
        self.0.failed.inc();
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.dec();
        self.0.closed.inc();
    }
}
