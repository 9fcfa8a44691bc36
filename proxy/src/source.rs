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

/// [`apply_json`] for the table an upgrade's old process handed over: kept as gzip, as the
/// controller's are, rather than plain (5.8 MB instead of 0.7 MB at 10,000 services), so that
/// a proxy after an upgrade holds no more than before it.
pub fn apply_handed_over(
    store: &TableStore,
    json: Vec<u8>,
    origin: &str,
) -> Result<u64, JsonError> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gzip = gz.write_all(&json).and_then(|()| gz.finish()).ok();
    swap_json_body(store, json, gzip, origin).inspect_err(|e| {
        tracing::error!(
            origin,
            error = %e,
            kept_version = store.load().version,
            "Routing table refused; keeping the last good one"
        );
    })
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
            store.store_delta(table, bytes);
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

    fn delta(
        base: u64,
        version: u64,
        changed: Vec<config_model::ServiceSpec>,
        removed: &[(&str, &str, u16)],
    ) -> Vec<u8> {
        serde_json::to_vec(&TableDelta {
            schema_version: config_model::SCHEMA_VERSION,
            base_version: base,
            version,
            changed,
            removed: removed
                .iter()
                .map(|(ns, name, port)| config_model::ServiceKey {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                    port: *port,
                })
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn gzip(json: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        gz.finish().unwrap()
    }

    /// The table an upgrade would hand over, as the controller's whole table is compared:
    /// parsed, services in key order.
    fn handed_over(store: &TableStore) -> config_model::TableSpec {
        let json = store.json().expect("a table to hand over");
        let mut spec: config_model::TableSpec = serde_json::from_slice(&json).unwrap();
        spec.sort_services();
        spec
    }

    #[test]
    fn after_deltas_the_upgrade_hands_over_the_table_of_the_version_served() {
        let store = TableStore::new();
        let full = serde_json::to_vec(&table(
            1,
            vec![
                http("a", "web", 5000, &["10.0.0.1:80"]),
                http("a", "old", 5000, &["10.0.0.2:80"]),
            ],
        ))
        .unwrap();
        // As the controller sends it: gzip, kept so.
        swap_json_body(&store, full.clone(), Some(gzip(&full)), "test").unwrap();
        let d2 = delta(
            1,
            2,
            vec![
                http("a", "web", 5000, &["10.0.0.9:80"]),
                http("a", "cart", 5000, &["10.0.0.3:80"]),
            ],
            &[],
        );
        assert_eq!(swap_delta(&store, &d2, "test").unwrap(), 2);
        let d3 = delta(2, 3, vec![], &[("a", "old", 80)]);
        assert_eq!(swap_delta(&store, &d3, "test").unwrap(), 3);

        let mut expected = table(
            3,
            vec![
                http("a", "web", 5000, &["10.0.0.9:80"]),
                http("a", "cart", 5000, &["10.0.0.3:80"]),
            ],
        );
        expected.sort_services();
        assert_eq!(handed_over(&store), expected);

        // The new process reads it into the very table the old one serves.
        let new = TableStore::new();
        assert_eq!(apply_json(&new, &store.json().unwrap(), "test").unwrap(), 3);
        let t = new.load();
        let web = &t[t.http_route(5000, "web.a.maille.mesh").unwrap()];
        assert_eq!(web.endpoints[0].addr.to_string(), "10.0.0.9:80");
        assert!(t.http_route(5000, "cart.a.maille.mesh").is_some());
        assert!(t.http_route(5000, "old.a.maille.mesh").is_none());

        // A refused delta changes nothing kept; a whole table replaces the deltas.
        let bad = delta(3, 4, vec![http("a", "web", 5000, &["10.0.0.9"])], &[]);
        assert!(swap_delta(&store, &bad, "test").is_err());
        assert_eq!(handed_over(&store), expected);
        let full5 =
            serde_json::to_vec(&table(5, vec![http("a", "x", 5000, &["10.0.0.5:80"])])).unwrap();
        apply_json(&store, &full5, "test").unwrap();
        assert_eq!(store.kept_deltas().map(|k| k.0), Some(0));
        assert_eq!(&store.json().unwrap()[..], &full5[..]);
        // The new process keeps what it was handed as gzip, and hands the same table on.
        let new = TableStore::new();
        let handed = store.json().unwrap().to_vec();
        apply_handed_over(&new, handed.clone(), "test").unwrap();
        assert!(new.kept_is_gzip());
        assert_eq!(&new.json().unwrap()[..], &handed[..]);
        // A table stored without JSON hands none over.
        store.store(config_model::Table::try_from(table(6, vec![])).unwrap());
        assert!(store.json().is_none());
    }

    #[test]
    fn many_deltas_are_folded_into_the_kept_table_and_stay_bounded() {
        let store = TableStore::new();
        let services: Vec<_> = (0..50)
            .map(|i| http("a", &format!("s{i}"), 5000, &["10.0.0.1:80"]))
            .collect();
        let full = serde_json::to_vec(&table(1, services.clone())).unwrap();
        swap_json_body(&store, full.clone(), Some(gzip(&full)), "test").unwrap();
        let mut expected = table(1, services);
        let mut most = 0;
        for v in 2..=2000u64 {
            let i = (v % 50) as usize;
            let ip = format!("10.0.{}.{}:80", v / 250, v % 250);
            let changed = http("a", &format!("s{i}"), 5000, &[&ip]);
            expected.services[i] = changed.clone();
            swap_delta(&store, &delta(v - 1, v, vec![changed], &[]), "test").unwrap();
            if let Some((bytes, _, _)) = store.kept_deltas() {
                most = most.max(bytes);
            }
        }
        // Let the last fold finish.
        let start = Instant::now();
        while store.kept_deltas().is_some_and(|k| k.1) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fold still running"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let one = delta(1, 2, vec![http("a", "s1", 5000, &["10.0.0.1:80"])], &[]).len();
        let bound = crate::store::fold_bound(full.len());
        // 2,000 deltas of about 300 bytes: 600 KB unfolded. Kept: the bound, plus what comes
        // while a fold runs, never past the hard bound (deltas come here as fast as a loop
        // makes them, faster than a loaded machine may fold them: then they are dropped, and
        // with them the table to hand over).
        assert!(2000 * one > 4 * bound, "{one} bytes a delta, bound {bound}");
        assert!(
            most <= crate::store::KEPT_DELTAS_HARD_BOUND * bound + one,
            "{most} kept at most, bound {bound}"
        );
        match store.kept_deltas() {
            Some((bytes, _, _)) => {
                assert!(
                    bytes <= bound,
                    "{bytes} kept after the folds, bound {bound}"
                );
                expected.version = 2000;
                expected.sort_services();
                assert_eq!(handed_over(&store), expected);
            }
            None => assert!(store.json().is_none(), "dropped: nothing handed over"),
        }
    }
}
