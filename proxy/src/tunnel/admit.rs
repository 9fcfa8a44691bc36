//! The destination's judgement of a stream, on the routing table in use: the claim's target
//! must be an endpoint of the service it names.

use std::sync::Arc;

use super::server::{Admission, Denied};
use super::StreamClaim;
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
    fn admit(&self, _peer_node: &str, claim: &StreamClaim) -> Result<(), Denied> {
        if !self.store.is_ready() {
            return Err(Denied {
                reason: "not_ready",
                detail: "no routing table yet".into(),
            });
        }
        let table = self.store.load();
        let Some(id) = table.service(&claim.service) else {
            return Err(Denied {
                reason: "no_service",
                detail: format!("no service {}", claim.service),
            });
        };
        if !table[id].endpoints.iter().any(|e| e.addr == claim.target) {
            return Err(Denied {
                reason: "not_an_endpoint",
                detail: format!("{} is not an endpoint of {}", claim.target, claim.service),
            });
        }
        if table.acl {
            // Access by identity needs the mesh model (workloads, identities of the rules).
            return Err(Denied {
                reason: "access_denied",
                detail: "identity-based access rules are not available".into(),
            });
        }
        Ok(())
    }
}
