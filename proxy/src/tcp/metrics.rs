//! The per-connection handles of the TCP listeners' metrics, taken from
//! [`crate::metrics::Metrics`].

use prometheus::{IntCounter, IntGauge};

/// A connection on a mesh port that no TCP service is mapped to: counted as failed with empty
/// `namespace` and `service` and the mesh (listener) port as `port`.
pub(crate) fn unrouted(mesh_port: u16) {
    crate::metrics::register()
        .tcp_failed
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
        let all = crate::metrics::register();
        all.tcp_opened.with_label_values(&labels).inc();
        let m = ConnMetrics {
            closed: all.tcp_closed.with_label_values(&labels),
            failed: all.tcp_failed.with_label_values(&labels),
            open: all.tcp_open.with_label_values(&labels),
            received: all.tcp_received.with_label_values(&labels),
            sent: all.tcp_sent.with_label_values(&labels),
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
