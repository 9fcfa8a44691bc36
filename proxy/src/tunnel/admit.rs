//! The destination's judgement of a stream, on the routing table in use
//! ([`crate::identity::claim::admit`]): the endpoint must be a pod of the named service on this
//! node, a stated identity must be a pod of the peer's node, and in ACL mode an access rule
//! of the service must allow that identity.

use std::sync::Arc;

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
                if matches!(d, Denial::Spoofed { .. }) {
                    // A node speaking for a pod that is not its own: never an accident of
                    // timing alone, so louder than an ordinary denial.
                    tracing::warn!(peer_node, denial = %d, "Tunnel: a peer stated an identity it does not hold");
                }
                Err(Denied {
                    reason: d.reason(),
                    detail: d.to_string(),
                })
            }
        }
    }
}
