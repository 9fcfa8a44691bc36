//! The destination's judgement of a stream, on the routing table in use
//! ([`crate::identity::claim::admit`]): the endpoint must be a pod of the named service on this
//! node, a stated identity must be a pod of the peer's node, and in ACL mode an access rule
//! of the service must allow that identity.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use super::server::{Admission, Denied};
use super::StreamClaim;
use crate::identity::claim::{self, Claim, Denial};
use crate::store::TableStore;

/// Judges claims on the current table of `store`.
pub struct TableAdmission {
    store: Arc<TableStore>,
}

impl TableAdmission {
    /// Judges on `store`'s table.
    pub fn new(store: Arc<TableStore>) -> Arc<TableAdmission> {
        Arc::new(TableAdmission { store })
    }
}

impl Admission for TableAdmission {
    fn admit(&self, peer_node: &str, c: &StreamClaim) -> Result<(), Denied> {
        if !self.store.is_ready() {
            return Err(Denied {
                reason: "not_ready",
                detail: "no routing table yet".into(),
            });
        }
        let table = self.store.load();
        let claim = Claim {
            source_ip: c.source_ip,
            identity: c.identity.clone(),
            service: c.service.clone(),
            target: c.target,
        };
        match claim::admit(&table, peer_node, &claim) {
            Ok(_) => Ok(()),
            Err(d) => {
                if matches!(d, Denial::Spoofed { .. }) && spoof_log_due(peer_node) {
                    // A node speaking for a pod that is not its own: rarely an accident of
                    // timing alone, so louder than an ordinary denial (counted every time).
                    tracing::warn!(peer_node, denial = %d, "Tunnel: a peer stated an identity it does not hold (logged once a minute per node)");
                }
                Err(Denied {
                    reason: d.reason(),
                    detail: d.to_string(),
                })
            }
        }
    }
}

/// Whether a spoofing peer's warning is due: once a minute per node, so that a compromised
/// node cannot flood the log (its denials are all counted).
fn spoof_log_due(peer_node: &str) -> bool {
    static LOGGED: LazyLock<parking_lot::Mutex<HashMap<String, Instant>>> =
        LazyLock::new(Default::default);
    const EVERY: Duration = Duration::from_secs(60);
    let now = Instant::now();
    let mut logged = LOGGED.lock();
    if logged.len() > 1024 {
        logged.retain(|_, at| now.duration_since(*at) < EVERY);
    }
    let due = logged
        .get(peer_node)
        .is_none_or(|at| now.duration_since(*at) >= EVERY);
    if due {
        logged.insert(peer_node.to_string(), now);
    }
    due
}
