//! The proxy's current routing table: one immutable [`Table`] behind an `ArcSwap`, replaced
//! whole on every update and read without locks on the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use config_model::Table;

use crate::metrics;

/// Holds the table every listener (HTTP, TCP, UDP) routes with.
#[derive(Debug)]
pub struct TableStore {
    current: ArcSwap<Table>,
    ready: AtomicBool,
    /// The JSON the current table was built from, handed to a new process on upgrade.
    json: Mutex<Option<Arc<[u8]>>>,
}

impl Default for TableStore {
    fn default() -> Self {
        TableStore {
            current: ArcSwap::new(Table::empty()),
            ready: AtomicBool::new(false),
            json: Mutex::new(None),
        }
    }
}

impl TableStore {
    /// A store holding the empty table; not ready until a first table is stored.
    pub fn new() -> Arc<TableStore> {
        Arc::new(TableStore::default())
    }

    /// The current table, for the request path (no lock, no reference-count traffic in the
    /// common case).
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.current.load()
    }

    /// The current table as an owned `Arc`, for long-lived holders (a TCP connection).
    pub fn current(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Replaces the table whole with one built from `json` (the whole table, in the wire
    /// form), which is kept to hand over to a new process on upgrade. Returns the previous
    /// table.
    pub fn store_json(&self, table: Table, json: Arc<[u8]>) -> Arc<Table> {
        let old = self.swap(table);
        *self.json.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        old
    }

    /// Replaces the table whole and marks the store ready. Returns the previous table.
    /// A table stored this way has no JSON form: an upgrade hands none over (the new process
    /// then waits for its source); sources use [`Self::store_json`].
    pub fn store(&self, table: Table) -> Arc<Table> {
        let old = self.swap(table);
        *self.json.lock().unwrap_or_else(|p| p.into_inner()) = None;
        old
    }

    /// The JSON of the current table, when it came with one ([`Self::store_json`]).
    pub fn json(&self) -> Option<Arc<[u8]>> {
        self.json.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Updates the table gauges and the swap counter.
    fn swap(&self, table: Table) -> Arc<Table> {
        let version = table.version;
        let old = self.current.swap(Arc::new(table));
        self.ready.store(true, Ordering::Release);
        metrics::TABLE_SWAPS.inc();
        metrics::TABLE_VERSION.set(i64::try_from(version).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        metrics::TABLE_LAST_SWAP.set(i64::try_from(now).unwrap_or(i64::MAX));
        old
    }

    /// Whether a first valid table has been stored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
