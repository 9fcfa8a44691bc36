//! The proxy's current routing table: one immutable [`CompiledTable`] (the validated [`Table`]
//! and the per-service runtime built from it) behind an `ArcSwap`, replaced whole on every
//! update and read without locks on the request path.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use config_model::{Table, TrafficType};

use crate::balance::{EndpointRegistry, EndpointStats};
use crate::compiled::CompiledTable;
use crate::metrics;

/// The ports this proxy listens on, by traffic type: a service whose mesh port is not among
/// those of its type cannot be reached through this proxy.
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    /// HTTP listener ports.
    pub http: HashSet<u16>,
    /// TCP listener ports.
    pub tcp: HashSet<u16>,
    /// UDP listener ports.
    pub udp: HashSet<u16>,
}

impl Listeners {
    /// Why a service of this type on this mesh port cannot be routed here, if it cannot: a
    /// label value for `maille_proxy_unroutable_services` and a sentence for the log.
    fn unroutable(&self, tt: TrafficType, port: u16) -> Option<(&'static str, String)> {
        let own = match tt {
            TrafficType::Http => &self.http,
            TrafficType::Tcp => &self.tcp,
            TrafficType::Udp => &self.udp,
        };
        if own.contains(&port) {
            return None;
        }
        let other = [
            (TrafficType::Http, &self.http),
            (TrafficType::Tcp, &self.tcp),
            (TrafficType::Udp, &self.udp),
        ]
        .into_iter()
        .find(|(_, ports)| ports.contains(&port));
        Some(match other {
            Some((listener, _)) => (
                "wrong_listener",
                format!(
                    "a {tt} service on mesh port {port}, where this proxy listens for {listener}"
                ),
            ),
            None => (
                "no_listener",
                format!("mesh port {port} is not among this proxy's {tt} listener ports"),
            ),
        })
    }
}

/// The JSON of a whole table, as a source received it: kept for an upgrade's hand-over. A
/// table that came gzip (from the controller) is kept so, about an eighth of its size: at
/// 10,000 services 0.7 MB rather than 5.8 MB held for the life of the table.
#[derive(Clone, Debug)]
pub enum TableJson {
    /// Plain JSON.
    Plain(Arc<[u8]>),
    /// The gzip form of the JSON.
    Gzip(Arc<[u8]>),
}

impl From<Arc<[u8]>> for TableJson {
    fn from(json: Arc<[u8]>) -> TableJson {
        TableJson::Plain(json)
    }
}

/// Holds the table every listener (HTTP, TCP, UDP) routes with.
#[derive(Debug)]
pub struct TableStore {
    current: ArcSwap<CompiledTable>,
    /// Latency statistics per endpoint address, carried from one compiled table to the next.
    /// The lock also makes applies one at a time; requests never take it.
    endpoints: Mutex<EndpointRegistry>,
    ready: AtomicBool,
    /// The JSON the current table was built from, handed to a new process on upgrade.
    json: Mutex<Option<TableJson>>,
    /// When known, tables are checked against them: services that cannot be routed are
    /// accepted, warned about (once per service per table) and counted.
    listeners: Option<Listeners>,
    /// Label values of the `maille_proxy_unroutable_services` series this store set, removed
    /// at the next table (only its own: tests run several stores in one process).
    unroutable: Mutex<Vec<[String; 4]>>,
    /// The node this proxy runs on (`--node-name`), given to every compiled table.
    node: Option<Arc<str>>,
}

impl Default for TableStore {
    fn default() -> Self {
        TableStore {
            current: ArcSwap::from_pointee(CompiledTable::default()),
            endpoints: Mutex::new(EndpointRegistry::default()),
            ready: AtomicBool::new(false),
            json: Mutex::new(None),
            listeners: None,
            unroutable: Mutex::new(Vec::new()),
            node: None,
        }
    }
}

impl TableStore {
    /// A store holding the empty table; not ready until a first table is stored.
    pub fn new() -> Arc<TableStore> {
        Arc::new(TableStore::default())
    }

    /// [`TableStore::new`] for a proxy listening on these ports.
    pub fn with_listeners(listeners: Listeners) -> Arc<TableStore> {
        Arc::new(TableStore {
            listeners: Some(listeners),
            ..TableStore::default()
        })
    }

    /// [`TableStore::new`] for a proxy on node `node` (`--node-name`), listening on these
    /// ports when known: the tables it compiles tell endpoints of this node from others
    /// ([`CompiledTable::hop`]).
    pub fn on_node(node: Option<&str>, listeners: Option<Listeners>) -> Arc<TableStore> {
        Arc::new(TableStore {
            listeners,
            node: node.map(Arc::from),
            ..TableStore::default()
        })
    }

    /// Warns about (one line per service) and counts the services of `table` that this proxy
    /// cannot route; returns how many there are.
    fn check_routable(&self, table: &Table) -> usize {
        let Some(listeners) = &self.listeners else {
            return 0;
        };
        let mut previous = self.unroutable.lock().unwrap_or_else(|p| p.into_inner());
        for labels in previous.drain(..) {
            let labels: [&str; 4] = std::array::from_fn(|i| labels[i].as_str());
            let _ = metrics::register()
                .unroutable_services
                .remove_label_values(&labels);
        }
        let mut count = 0;
        for svc in table.services() {
            let Some((reason, why)) = listeners.unroutable(svc.traffic_type, svc.mesh_port) else {
                continue;
            };
            count += 1;
            let labels = [
                svc.key.namespace.clone(),
                svc.key.name.clone(),
                svc.key.port.to_string(),
                reason.to_string(),
            ];
            metrics::register()
                .unroutable_services
                .with_label_values(&std::array::from_fn::<&str, 4, _>(|i| labels[i].as_str()))
                .set(1);
            previous.push(labels);
            tracing::warn!(
                service = %svc.key,
                version = table.version,
                reason,
                "Service cannot be routed by this proxy: {why}"
            );
        }
        count
    }

    /// The current table, for the request path (no lock, no reference-count traffic in the
    /// common case).
    pub fn load(&self) -> Guard<Arc<CompiledTable>> {
        self.current.load()
    }

    /// The current table as an owned `Arc`, for holders across awaits (a request, a TCP
    /// connection while it connects).
    pub fn current(&self) -> Arc<CompiledTable> {
        self.current.load_full()
    }

    /// Latency and passive-health statistics of an endpoint address of the current table.
    pub fn endpoint_stats(&self, addr: &std::net::SocketAddr) -> Option<Arc<EndpointStats>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
    }

    /// Number of endpoint addresses whose statistics are held.
    #[cfg(test)]
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Replaces the table whole with one built from `json` (the whole table, in the wire
    /// form, as it came: plain or gzip), which is kept to hand over to a new process on
    /// upgrade. Returns the previous table.
    pub fn store_json(&self, table: Table, json: impl Into<TableJson>) -> Arc<CompiledTable> {
        let old = self.swap(table);
        *self.json.lock().unwrap_or_else(|p| p.into_inner()) = Some(json.into());
        old
    }

    /// Replaces the table whole and marks the store ready. Returns the previous table.
    /// A table stored this way has no JSON form: an upgrade hands none over (the new process
    /// then waits for its source); sources use [`Self::store_json`].
    pub fn store(&self, table: Table) -> Arc<CompiledTable> {
        let old = self.swap(table);
        *self.json.lock().unwrap_or_else(|p| p.into_inner()) = None;
        old
    }

    /// The JSON of the current table, when it came with one ([`Self::store_json`]); inflated
    /// when it is kept as gzip. `None` also when the gzip form does not inflate (it did when
    /// the table was read).
    pub fn json(&self) -> Option<Arc<[u8]>> {
        let kept = self
            .json
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        match kept {
            TableJson::Plain(json) => Some(json),
            TableJson::Gzip(gz) => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut out)
                    .inspect_err(|e| tracing::error!(error = %e, "The kept table does not inflate"))
                    .ok()?;
                Some(out.into())
            }
        }
    }

    /// Compiles the table against the current one, swaps it in, and updates the table gauges
    /// and the swap counter.
    fn swap(&self, table: Table) -> Arc<CompiledTable> {
        let version = table.version;
        self.check_routable(&table);
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let compiled = CompiledTable::compile(
            Arc::new(table),
            &self.current.load(),
            &mut endpoints,
            self.node.clone(),
        );
        let old = self.current.swap(Arc::new(compiled));
        drop(endpoints);
        self.ready.store(true, Ordering::Release);
        metrics::register().table_swaps.inc();
        metrics::register()
            .table_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        metrics::register()
            .table_last_swap
            .set(i64::try_from(now).unwrap_or(i64::MAX));
        old
    }

    /// Whether a first valid table has been stored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
