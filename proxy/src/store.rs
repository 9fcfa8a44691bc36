//! The proxy's current routing table: one immutable [`CompiledTable`] (the validated [`Table`]
//! and the per-service runtime built from it) behind an `ArcSwap`, replaced whole on every
//! update and read without locks on the request path.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use config_model::{Table, TrafficType};

use crate::balance::StatsRef;
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

impl TableJson {
    fn len(&self) -> usize {
        match self {
            TableJson::Plain(b) | TableJson::Gzip(b) => b.len(),
        }
    }

    /// Whether both are the same kept bytes (not a copy).
    fn same(&self, other: &TableJson) -> bool {
        match (self, other) {
            (TableJson::Plain(a), TableJson::Plain(b))
            | (TableJson::Gzip(a), TableJson::Gzip(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The plain JSON (inflated when kept as gzip).
    fn inflate(&self) -> std::io::Result<Arc<[u8]>> {
        match self {
            TableJson::Plain(json) => Ok(json.clone()),
            TableJson::Gzip(gz) => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out)?;
                Ok(out.into())
            }
        }
    }
}

/// What is kept to hand the current table over on upgrade: the last whole table, and the
/// deltas (their JSON, in order) applied since, folded into it when they grow
/// ([`fold_bound`]) or at the hand-over.
#[derive(Clone, Debug)]
struct Kept {
    full: TableJson,
    deltas: Vec<Arc<[u8]>>,
    delta_bytes: usize,
    /// A fold of the first deltas runs (one at a time).
    folding: bool,
}

/// While a fold runs, deltas kept beyond this many times [`fold_bound`] are dropped (with the
/// whole table kept): bounded memory over an upgrade's hand-over when deltas outrun folds.
pub(crate) const KEPT_DELTAS_HARD_BOUND: usize = 4;

/// Delta bytes kept beside a whole table of `full_len` bytes (in its kept form) before they
/// are folded into it: a quarter of it, at least 64 KiB.
pub(crate) fn fold_bound(full_len: usize) -> usize {
    (full_len / 4).max(64 << 10)
}

/// Why the kept table and deltas could not be made into the JSON of one table.
#[derive(Debug, thiserror::Error)]
enum FoldError {
    #[error("the kept table does not inflate: {0}")]
    Inflate(std::io::Error),
    #[error("the kept table does not parse: {0}")]
    Table(serde_json::Error),
    #[error("kept delta {index} does not parse: {error}")]
    Delta {
        index: usize,
        error: serde_json::Error,
    },
    #[error("kept delta {index} does not apply: {error}")]
    Apply {
        index: usize,
        error: config_model::DeltaError,
    },
    #[error("cannot write the folded table: {0}")]
    Write(std::io::Error),
}

/// The JSON of the table `full` and `deltas` lead to (plain), and its version.
fn fold(full: &TableJson, deltas: &[Arc<[u8]>]) -> Result<(Vec<u8>, u64), FoldError> {
    let json = full.inflate().map_err(FoldError::Inflate)?;
    let mut spec: config_model::TableSpec =
        serde_json::from_slice(&json).map_err(FoldError::Table)?;
    drop(json);
    for (index, bytes) in deltas.iter().enumerate() {
        let delta: config_model::TableDelta =
            serde_json::from_slice(bytes).map_err(|error| FoldError::Delta { index, error })?;
        config_model::delta::apply_to_spec(&mut spec, &delta)
            .map_err(|error| FoldError::Apply { index, error })?;
    }
    let out = serde_json::to_vec(&spec).map_err(|e| FoldError::Write(e.into()))?;
    Ok((out, spec.version))
}

/// [`fold`], kept in the same form as `full` (gzip stays gzip).
fn fold_kept(full: &TableJson, deltas: &[Arc<[u8]>]) -> Result<(TableJson, u64), FoldError> {
    let (json, version) = fold(full, deltas)?;
    Ok(match full {
        TableJson::Plain(_) => (TableJson::Plain(json.into()), version),
        TableJson::Gzip(_) => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&json).map_err(FoldError::Write)?;
            drop(json);
            let gz = gz.finish().map_err(FoldError::Write)?;
            (TableJson::Gzip(gz.into()), version)
        }
    })
}

/// Holds the table every listener (HTTP, TCP, UDP) routes with.
#[derive(Debug)]
pub struct TableStore {
    current: ArcSwap<CompiledTable>,
    /// Makes applies one at a time (each table is compiled against the one it replaces);
    /// requests never take it.
    applying: Mutex<()>,
    ready: AtomicBool,
    /// The JSON the current table was built from (a whole table and the deltas since),
    /// handed to a new process on upgrade. Taken before the table is swapped, so that the
    /// table served and the JSON kept change together.
    json: Arc<Mutex<Option<Kept>>>,
    /// When known, tables are checked against them: services that cannot be routed are
    /// accepted, warned about (once per service per table) and counted.
    listeners: Option<Listeners>,
    /// Label values of the `maille_proxy_unroutable_services` series this store set, removed
    /// when their service leaves (only its own: tests run several stores in one process).
    unroutable: Mutex<HashSet<[String; 4]>>,
    /// The node this proxy runs on (`--node-name`), given to every compiled table.
    node: Option<Arc<str>>,
}

impl Default for TableStore {
    fn default() -> Self {
        TableStore {
            current: ArcSwap::from_pointee(CompiledTable::default()),
            applying: Mutex::new(()),
            ready: AtomicBool::new(false),
            json: Arc::default(),
            listeners: None,
            unroutable: Mutex::new(HashSet::new()),
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

    /// A store that starts where `seed` is, for simulations of many proxies in one process
    /// (the fleet bench): it holds `seed`'s compiled table (the same `Arc`: nothing is copied)
    /// and the JSON `seed` keeps for an upgrade (shared bytes). From then on it applies tables
    /// and deltas on its own, and holds of its own only what they change. Ready when `seed` is.
    pub fn seeded_from(seed: &TableStore) -> Arc<TableStore> {
        let kept = seed.json.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let kept = kept.map(|k| Kept {
            folding: false,
            ..k
        });
        Arc::new(TableStore {
            current: ArcSwap::new(seed.current()),
            applying: Mutex::new(()),
            ready: AtomicBool::new(seed.is_ready()),
            json: Arc::new(Mutex::new(kept)),
            listeners: seed.listeners.clone(),
            unroutable: Mutex::new(HashSet::new()),
            node: seed.node.clone(),
        })
    }

    /// Warns about (one line per service) and counts, in `maille_proxy_unroutable_services`,
    /// the services of `table` that this proxy cannot route. Only the positions at which
    /// `table` may differ from `previous`, the table it replaces, are looked at
    /// ([`config_model::Chunks::unshared`]): after a delta, the chunks of the services it
    /// named. A service that stays unroutable is not warned about again.
    fn check_routable(&self, table: &Table, previous: &Table) {
        let Some(listeners) = &self.listeners else {
            return;
        };
        let labels = |svc: &config_model::Service| {
            let (reason, why) = listeners.unroutable(svc.traffic_type, svc.mesh_port)?;
            let labels = [
                svc.key.namespace.clone(),
                svc.key.name.clone(),
                svc.key.port.to_string(),
                reason.to_string(),
            ];
            Some((labels, reason, why))
        };
        let (new, old) = (table.services(), previous.services());
        let differ: Vec<usize> = new
            .unshared(old)
            .filter(|&i| match (new.get(i), old.get(i)) {
                (Some(n), Some(o)) => !Arc::ptr_eq(n, o),
                _ => true,
            })
            .collect();
        let mut own = self.unroutable.lock().unwrap_or_else(|p| p.into_inner());
        // Every old series of these positions leaves before the new ones come (a service moved
        // to another position is in both).
        let mut gone = HashSet::new();
        for svc in differ.iter().filter_map(|&i| old.get(i)) {
            if let Some((labels, ..)) = labels(svc) {
                if own.remove(&labels) {
                    let values: [&str; 4] = std::array::from_fn(|i| labels[i].as_str());
                    let _ = metrics::register()
                        .unroutable_services
                        .remove_label_values(&values);
                    gone.insert(labels);
                }
            }
        }
        for svc in differ.iter().filter_map(|&i| new.get(i)) {
            let Some((labels, reason, why)) = labels(svc) else {
                continue;
            };
            let values: [&str; 4] = std::array::from_fn(|i| labels[i].as_str());
            metrics::register()
                .unroutable_services
                .with_label_values(&values)
                .set(1);
            if !gone.contains(&labels) {
                tracing::warn!(
                    service = %svc.key,
                    version = table.version,
                    reason,
                    "Service cannot be routed by this proxy: {why}"
                );
            }
            own.insert(labels);
        }
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

    /// Latency and passive-health statistics of an endpoint address of the current table
    /// ([`CompiledTable::endpoint_stats`]).
    pub fn endpoint_stats(&self, addr: &std::net::SocketAddr) -> Option<StatsRef> {
        self.current.load().endpoint_stats(addr)
    }

    /// Replaces the table whole with one built from `json` (the whole table, in the wire
    /// form, as it came: plain or gzip), which is kept to hand over to a new process on
    /// upgrade. Returns the previous table.
    pub fn store_json(&self, table: Table, json: impl Into<TableJson>) -> Arc<CompiledTable> {
        let mut kept = self.json.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.swap(table);
        *kept = Some(Kept {
            full: json.into(),
            deltas: Vec::new(),
            delta_bytes: 0,
            folding: false,
        });
        old
    }

    /// Replaces the table whole with one a delta (`delta`: its JSON) led to from the current
    /// one. The delta is kept beside the whole table kept, so that an upgrade hands over this
    /// very table; past [`fold_bound`] the deltas are folded into the whole table on a thread
    /// of their own, off the request path and without holding up this swap. Returns the
    /// previous table.
    pub fn store_delta(&self, table: Table, delta: &[u8]) -> Arc<CompiledTable> {
        let version = table.version;
        let mut guard = self.json.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.swap(table);
        let Some(kept) = guard.as_mut() else {
            // No whole table to apply it to (a fold failed): the next whole one brings it back.
            return old;
        };
        kept.deltas.push(Arc::from(delta));
        kept.delta_bytes += delta.len();
        let bound = fold_bound(kept.full.len());
        if kept.folding {
            // Deltas that come faster than a fold of them ends are dropped past a hard bound
            // rather than held without one.
            if kept.delta_bytes > KEPT_DELTAS_HARD_BOUND * bound {
                tracing::warn!(
                    version,
                    bytes = kept.delta_bytes,
                    "Table deltas come faster than they fold; the deltas kept for an upgrade are dropped: an upgrade hands no table over until the next whole table"
                );
                *guard = None;
            }
            return old;
        }
        if kept.delta_bytes <= bound {
            return old;
        }
        kept.folding = true;
        let (full, deltas) = (kept.full.clone(), kept.deltas.clone());
        let shared = self.json.clone();
        let spawned = std::thread::Builder::new()
            .name("maille-table-fold".into())
            .spawn(move || {
                let folded = fold_kept(&full, &deltas);
                let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
                let Some(kept) = guard.as_mut() else {
                    return;
                };
                // A whole table came meanwhile: this fold is of no use.
                if !kept.full.same(&full) {
                    return;
                }
                kept.folding = false;
                match folded {
                    Ok((folded, _)) => {
                        let n = deltas.len();
                        kept.full = folded;
                        kept.deltas.drain(..n);
                        kept.delta_bytes = kept.deltas.iter().map(|d| d.len()).sum();
                        tracing::debug!(version, deltas = n, bytes = kept.full.len(), "Kept table deltas folded for an upgrade");
                    }
                    Err(error) => {
                        tracing::error!(
                            version,
                            %error,
                            "Cannot fold the table deltas kept for an upgrade; an upgrade hands no table over until the next whole table"
                        );
                        *guard = None;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start folding the table deltas kept for an upgrade; they are dropped");
            *guard = None;
        }
        old
    }

    /// Replaces the table whole and marks the store ready. Returns the previous table.
    /// A table stored this way has no JSON form: an upgrade hands none over (the new process
    /// then waits for its source); sources use [`Self::store_json`] and [`Self::store_delta`].
    pub fn store(&self, table: Table) -> Arc<CompiledTable> {
        let mut kept = self.json.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.swap(table);
        *kept = None;
        old
    }

    /// The JSON of the current table, when it came with one ([`Self::store_json`], and
    /// [`Self::store_delta`] since): the whole table kept, inflated when kept as gzip, with
    /// the deltas kept applied. `None`, with an error logged, when that fails or does not
    /// lead to the version served.
    pub fn json(&self) -> Option<Arc<[u8]>> {
        let (kept, serving) = {
            let kept = self.json.lock().unwrap_or_else(|p| p.into_inner());
            (kept.clone()?, self.current.load().version)
        };
        let result = if kept.deltas.is_empty() {
            // The version of a table read whole is the one served.
            kept.full
                .inflate()
                .map_err(FoldError::Inflate)
                .map(|json| (json, serving))
        } else {
            fold(&kept.full, &kept.deltas).map(|(json, version)| (json.into(), version))
        };
        match result {
            Ok((json, version)) if version == serving => Some(json),
            Ok((_, version)) => {
                tracing::error!(
                    version,
                    serving,
                    "The kept table is not the one served; none handed over"
                );
                None
            }
            Err(error) => {
                tracing::error!(version = serving, %error, "Cannot make the JSON of the table served; none handed over");
                None
            }
        }
    }

    /// Compiles the table against the current one, swaps it in, and updates the table gauges
    /// and the swap counter.
    fn swap(&self, table: Table) -> Arc<CompiledTable> {
        let version = table.version;
        let applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current.load();
        self.check_routable(&table, &previous);
        let compiled = CompiledTable::compile(Arc::new(table), &previous, self.node.clone());
        drop(previous);
        let old = self.current.swap(Arc::new(compiled));
        drop(applying);
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

    /// Bytes of the deltas kept beside the whole table, whether a fold of them runs, and
    /// the fold bound of the whole table kept: `None` when nothing is kept.
    #[cfg(test)]
    pub(crate) fn kept_deltas(&self) -> Option<(usize, bool, usize)> {
        let kept = self.json.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref()
            .map(|k| (k.delta_bytes, k.folding, fold_bound(k.full.len())))
    }

    /// Whether the whole table kept is in gzip form.
    #[cfg(test)]
    pub(crate) fn kept_is_gzip(&self) -> bool {
        let kept = self.json.lock().unwrap_or_else(|p| p.into_inner());
        matches!(kept.as_ref().map(|k| &k.full), Some(TableJson::Gzip(_)))
    }

    /// Whether a first valid table has been stored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, table};
    use config_model::{Table, TableSpec};
    use prometheus::core::Collector;

    use super::*;

    /// The `maille_proxy_unroutable_services` series of namespace `ns`: service and reason.
    fn unroutable(ns: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for family in metrics::register().unroutable_services.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                if label("namespace") == ns {
                    out.push((label("service"), label("reason")));
                }
            }
        }
        out.sort();
        out
    }

    fn next(store: &TableStore, spec: &TableSpec, newer: &TableSpec) {
        let delta = newer.delta_since(spec);
        let table = store.load().apply_delta(&delta).unwrap();
        store.store_delta(table, b"{}");
    }

    #[test]
    fn after_deltas_only_the_unroutable_services_of_the_table_are_counted() {
        let listeners = Listeners {
            http: [5000].into(),
            ..Listeners::default()
        };
        let store = TableStore::with_listeners(listeners);
        let ns = "unroutable-deltas";
        let svc = |name: &str, port: u16| http(ns, name, port, &["10.0.0.1:80"]);
        let mut spec = table(
            1,
            vec![svc("a", 5000), svc("b", 1), svc("c", 5000), svc("d", 2)],
        );
        spec.sort_services();
        store.store(Table::try_from(&spec).unwrap());
        let no = |s: &str| (s.to_string(), "no_listener".to_string());
        assert_eq!(unroutable(ns), [no("b"), no("d")]);

        // b leaves; d, the last, takes its place: its series stays.
        let mut v2 = table(2, vec![svc("a", 5000), svc("c", 5000), svc("d", 2)]);
        v2.sort_services();
        next(&store, &spec, &v2);
        assert_eq!(unroutable(ns), [no("d")]);
        // d moves to a listened port, e comes on an unlistened one.
        let mut v3 = table(
            3,
            vec![svc("a", 5000), svc("c", 5000), svc("d", 5000), svc("e", 3)],
        );
        v3.sort_services();
        next(&store, &v2, &v3);
        assert_eq!(unroutable(ns), [no("e")]);
        // A whole table replaces them all.
        store.store(Table::try_from(&table(4, vec![svc("f", 4)])).unwrap());
        assert_eq!(unroutable(ns), [no("f")]);
    }
}
