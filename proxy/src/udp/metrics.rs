//! The per-session handles of the UDP listeners' metrics, and why datagrams are dropped;
//! the metrics themselves are [`crate::metrics::Metrics`]'.

use prometheus::{IntCounter, IntGauge};

use crate::refusal::Refusal;

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
    /// mTLS `strict` and the endpoint's node runs no proxy.
    MtlsStrict,
}

impl DropReason {
    fn reason(self) -> &'static str {
        match self {
            DropReason::Refused(r) => r.reason(),
            DropReason::SessionLimit => "session_limit",
            DropReason::UpstreamError => "upstream_error",
            DropReason::ClientError => "client_error",
            DropReason::MtlsStrict => "mtls_strict",
        }
    }
}

/// A datagram on a mesh port that no UDP service is mapped to: counted with empty `namespace`
/// and `service` and the mesh (listener) port as `port`.
pub(crate) fn dropped_unrouted(mesh_port: u16) {
    crate::metrics::register()
        .udp_dropped
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
        let m = crate::metrics::register();
        let labels = l.map(str::to_string);
        ServiceMetrics {
            datagrams_received: m.udp_datagrams_received.with_label_values(&l),
            datagrams_sent: m.udp_datagrams_sent.with_label_values(&l),
            bytes_received: m.udp_bytes_received.with_label_values(&l),
            bytes_sent: m.udp_bytes_sent.with_label_values(&l),
            sessions: m.udp_sessions.with_label_values(&l),
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
        crate::metrics::register()
            .udp_dropped
            .with_label_values(&[ns.as_str(), name.as_str(), port.as_str(), why.reason()])
            .inc();
    }
}
