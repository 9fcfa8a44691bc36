//! Where the routing table comes from: a JSON file watched for changes ([`file`]) or the
//! controller's long-poll API ([`controller`]). Both go through [`apply_json`], which refuses a
//! table that does not parse or validate and keeps the last good one; the controller's deltas
//! go through [`swap_delta`], which builds the next table from the one held.

pub mod controller;
pub mod file;

use std::sync::Arc;
use std::time::{Duration, Instant};

use config_model::table::JsonError;
use config_model::{DeltaError, Table, TableDelta};

use crate::metrics;
use crate::store::{TableJson, TableStore};

/// Parses and validates a JSON table from `origin` (a path or URL, for the logs) and swaps it
/// in. On failure, logs the reason (which names service, field and value), counts a refusal
/// and leaves the current table in place. Returns the version of the table swapped in.
pub fn apply_json(store: &TableStore, bytes: &[u8], origin: &str) -> Result<u64, JsonError> {
    swap_json(store, bytes, origin).inspect_err(|e| {
        tracing::error!(
            origin,
            error = %e,
            kept_version = store.load().version,
            "Routing table refused; keeping the last good one"
        );
    })
}

/// [`apply_json`] without the refusal log line, for sources that rate-limit their own logs
/// (a controller may send the same bad table on every poll). Still counts the refusal.
pub fn swap_json(store: &TableStore, bytes: &[u8], origin: &str) -> Result<u64, JsonError> {
    let start = Instant::now();
    let table = Table::from_json(bytes);
    swapped(
        store,
        table,
        || Arc::<[u8]>::from(bytes).into(),
        start,
        origin,
    )
}

/// [`swap_json`] for a body the caller hands over: `json`, and the gzip form it came in, if
/// it did. The JSON is dropped as soon as it is read and the gzip form kept for an upgrade
/// (an eighth of the size, [`TableJson`]); without one, the JSON is kept.
pub fn swap_json_body(
    store: &TableStore,
    json: Vec<u8>,
    gzip: Option<Vec<u8>>,
    origin: &str,
) -> Result<u64, JsonError> {
    let start = Instant::now();
    match gzip {
        Some(gz) => {
            let table = Table::from_json(&json);
            drop(json);
            swapped(store, table, || TableJson::Gzip(gz.into()), start, origin)
        }
        None => {
            let json: Arc<[u8]> = json.into();
            let table = Table::from_json(&json);
            swapped(store, table, || json.into(), start, origin)
        }
    }
}

/// Swaps in a table read from JSON (`start`: when the reading began), keeping `kept` for an
/// upgrade, or counts its refusal.
fn swapped(
    store: &TableStore,
    table: Result<Table, JsonError>,
    kept: impl FnOnce() -> TableJson,
    start: Instant,
    origin: &str,
) -> Result<u64, JsonError> {
    match table {
        Ok(table) => {
            let parsed = start.elapsed();
            let version = table.version;
            let services = table.len();
            let previous = store.store_json(table, kept());
            tracing::info!(
                origin,
                version,
                previous = previous.version,
                services,
                parse_us = micros(parsed),
                swap_us = micros(start.elapsed() - parsed),
                "Routing table swapped in"
            );
            Ok(version)
        }
        Err(e) => {
            metrics::register().table_refusals.inc();
            Err(e)
        }
    }
}

/// A duration in whole microseconds, for the log fields that say where an apply's time went
/// (`parse_us`: JSON to validated table or delta; `apply_us`: the delta applied to the table
/// held; `swap_us`: compiled and swapped in).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Why a delta from the controller was not swapped in.
#[derive(Debug, thiserror::Error)]
pub enum DeltaFailure {
    /// Not JSON, or not shaped like a delta.
    #[error("table delta is not valid JSON: {0}")]
    Parse(String),
    /// The delta does not fit the table held (another base version, a removal of a service it
    /// does not have): the full table is needed.
    #[error("{0}; asking for the full table")]
    Resync(DeltaError),
    /// The table the delta leads to is refused.
    #[error(transparent)]
    Invalid(DeltaError),
}

/// Parses a delta from `origin` and swaps in the table it leads to from the one held, which
/// shares every service the delta does not name (already validated). Counts a refusal.
pub fn swap_delta(store: &TableStore, bytes: &[u8], origin: &str) -> Result<u64, DeltaFailure> {
    let start = Instant::now();
    let delta: TableDelta =
        serde_json::from_slice(bytes).map_err(|e| DeltaFailure::Parse(e.to_string()))?;
    let parsed = start.elapsed();
    let held = store.current();
    match held.apply_delta(&delta) {
        Ok(table) => {
            let applied = start.elapsed();
            let version = table.version;
            let services = table.len();
            store.store(table);
            tracing::info!(
                origin,
                version,
                previous = held.version,
                services,
                changed = delta.changed.len(),
                removed = delta.removed.len(),
                parse_us = micros(parsed),
                apply_us = micros(applied - parsed),
                swap_us = micros(start.elapsed() - applied),
                "Routing table delta applied"
            );
            Ok(version)
        }
        Err(e @ (DeltaError::Base { .. } | DeltaError::UnknownRemoval(_))) => {
            Err(DeltaFailure::Resync(e))
        }
        Err(e) => {
            metrics::register().table_refusals.inc();
            Err(DeltaFailure::Invalid(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, table};

    use super::*;

    #[test]
    fn the_readme_example_table_is_valid() {
        let store = TableStore::new();
        let json = include_bytes!("../../examples/proxy-table.json");
        assert_eq!(
            apply_json(&store, json, "examples/proxy-table.json").unwrap(),
            1
        );
        assert!(store
            .load()
            .http_route(5000, "web.shop.maille.mesh")
            .is_some());
    }

    #[test]
    fn a_bad_table_is_refused_and_the_good_one_stays() {
        let store = TableStore::new();
        let good =
            serde_json::to_vec(&table(3, vec![http("a", "web", 5000, &["10.0.0.1:80"])])).unwrap();
        assert_eq!(apply_json(&store, &good, "test").unwrap(), 3);
        let before = metrics::register().table_refusals.get();
        let bad =
            serde_json::to_vec(&table(4, vec![http("a", "web", 5000, &["10.0.0.1"])])).unwrap();
        let e = apply_json(&store, &bad, "test").unwrap_err().to_string();
        assert!(e.contains("a/web:80"), "{e}");
        assert!(e.contains("endpoints[0].address"), "{e}");
        assert!(e.contains("10.0.0.1"), "{e}");
        assert!(apply_json(&store, b"{not json", "test").is_err());
        assert!(metrics::register().table_refusals.get() >= before + 2);
        assert_eq!(store.load().version, 3);
        assert!(store.load().http_route(5000, "web.a.maille.mesh").is_some());
    }

    #[test]
    fn a_chain_of_ten_thousand_nested_splits_is_refused_and_the_good_table_stays() {
        use config_model::{SplitBackendSpec, SplitSpec};
        let store = TableStore::new();
        let good =
            serde_json::to_vec(&table(3, vec![http("a", "web", 5000, &["10.0.0.1:80"])])).unwrap();
        apply_json(&store, &good, "test").unwrap();
        let services = (0..10_000)
            .map(|i| {
                let mut s = http("a", &format!("s{i}"), 5000, &["10.0.0.1:80"]);
                if i < 9_999 {
                    s.splits = vec![SplitSpec {
                        name: format!("a/split{i}"),
                        matches: vec![],
                        backends: vec![SplitBackendSpec {
                            namespace: "a".into(),
                            name: format!("s{}", i + 1),
                            port: 80,
                            weight: 1,
                        }],
                    }];
                }
                s
            })
            .collect();
        let deep = serde_json::to_vec(&table(4, services)).unwrap();
        // A thread with a small stack, as a Pingora worker's: the check must not recurse.
        let e = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || apply_json(&store, &deep, "test").map(|_| store))
            .unwrap()
            .join()
            .unwrap();
        let e = e.unwrap_err().to_string();
        assert!(e.contains("nested splits"), "{e}");
        assert!(e.contains("a/split9982"), "{e}");
    }

    #[test]
    fn a_megabyte_value_is_cut_in_the_refusal() {
        let store = TableStore::new();
        let huge = "9".repeat(1 << 20);
        let bad = serde_json::to_vec(&table(4, vec![http("a", "web", 5000, &[&huge])])).unwrap();
        let e = apply_json(&store, &bad, "test").unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.contains("[1048576 bytes]"), "{e}");
    }
}
