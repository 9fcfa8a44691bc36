//! Traffic-split selection: which service port's endpoints serve a request (or a TCP
//! connection) addressed to a root service port, by weight, following nested splits.

use config_model::{HttpMatch, ServiceId, Split};
use rand::Rng;

use crate::compiled::CompiledTable;

/// The parts of an HTTP request that split and access matches look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

impl<'a> RequestView<'a> {
    /// Whether the request fits an HTTP match (a header with several values is judged by its
    /// first).
    pub fn fits(&self, m: &HttpMatch) -> bool {
        let headers = self.headers;
        m.matches(self.method, self.path, |name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        })
    }
}

/// Where a request goes after the splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The service port whose endpoints serve it.
    Service(ServiceId),
    /// A split that applies has only zero weights: the request gets no backend (503).
    NoTraffic {
        /// `namespace/name` of the TrafficSplit.
        split: String,
        /// The service port the split is rooted at.
        root: ServiceId,
    },
}

/// Follows the splits from `service`: at each service port the first split whose matches fit
/// (all splits fit when `request` is `None`, except those with matches) picks a backend by
/// weight with its precomputed picker, until a service port with no applicable split.
/// Validation refuses split cycles, so this ends; the loop is bounded by the table size anyway.
pub fn select(
    table: &CompiledTable,
    service: ServiceId,
    request: Option<&RequestView<'_>>,
    rng: &mut impl Rng,
) -> Selection {
    let mut current = service;
    for _ in 0..=table.len() {
        let svc = &table[current];
        let Some((i, split)) = svc
            .splits
            .iter()
            .enumerate()
            .find(|(_, s)| applies(s, request))
        else {
            return Selection::Service(current);
        };
        let compiled = &table.runtime(current).splits[i];
        let Some(pos) = compiled.picker.random(rng) else {
            return Selection::NoTraffic {
                split: split.name.clone(),
                root: current,
            };
        };
        compiled.sent[pos].inc();
        current = table.split_targets(current, i)[pos];
    }
    Selection::Service(current)
}

fn applies(split: &Split, request: Option<&RequestView<'_>>) -> bool {
    if split.matches.is_empty() {
        return true;
    }
    request.is_some_and(|r| split.matches.iter().any(|m| r.fits(m)))
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, service, table};
    use std::sync::Arc;

    use config_model::{SplitBackendSpec, SplitSpec, Table, TrafficType};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn backend(name: &str, weight: u32) -> SplitBackendSpec {
        SplitBackendSpec {
            namespace: "shop".into(),
            name: name.into(),
            port: 80,
            weight,
        }
    }

    fn compiled(t: Table) -> Arc<CompiledTable> {
        let store = crate::store::TableStore::new();
        store.store(t);
        store.current()
    }

    fn table_with(splits: Vec<(usize, SplitSpec)>) -> Arc<CompiledTable> {
        let mut services = vec![
            http("shop", "web", 5000, &["10.0.0.1:80"]),
            http("shop", "v1", 5000, &["10.0.0.2:80"]),
            http("shop", "v2", 5000, &["10.0.0.3:80"]),
            http("shop", "v3", 5000, &["10.0.0.4:80"]),
        ];
        for (i, s) in splits {
            services[i].splits.push(s);
        }
        compiled(Table::try_from(table(1, services)).unwrap())
    }

    fn root(t: &CompiledTable) -> ServiceId {
        t.iter().next().unwrap().0
    }

    fn count(t: &CompiledTable, request: Option<&RequestView<'_>>, n: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut hits = vec![0; t.len()];
        for _ in 0..n {
            match select(t, root(t), request, &mut rng) {
                Selection::Service(i) => hits[i.index()] += 1,
                other => panic!("{other:?}"),
            }
        }
        hits
    }

    #[test]
    fn spreads_by_weight_and_follows_nested_splits() {
        let t = table_with(vec![
            (
                0,
                SplitSpec {
                    name: "shop/a".into(),
                    matches: vec![],
                    backends: vec![backend("v1", 90), backend("v2", 10)],
                },
            ),
            (
                2,
                SplitSpec {
                    name: "shop/b".into(),
                    matches: vec![],
                    backends: vec![backend("v3", 1)],
                },
            ),
        ]);
        let hits = count(&t, None, 10_000);
        assert_eq!(hits[0] + hits[2], 0, "roots never serve: {hits:?}");
        assert!((8_700..=9_300).contains(&hits[1]), "{hits:?}");
        assert!((700..=1_300).contains(&hits[3]), "{hits:?}");
    }

    #[test]
    fn matches_restrict_and_zero_weights_send_nothing() {
        let m = config_model::HttpMatchSpec {
            headers: [("x-canary".to_string(), "true".to_string())].into(),
            ..Default::default()
        };
        let t = table_with(vec![(
            0,
            SplitSpec {
                name: "shop/ab".into(),
                matches: vec![m],
                backends: vec![backend("v1", 0), backend("v2", 0)],
            },
        )]);
        let mut headers = http::HeaderMap::new();
        let plain = RequestView {
            method: "GET",
            path: "/",
            headers: &headers,
        };
        assert_eq!(
            count(&t, Some(&plain), 10),
            [10, 0, 0, 0],
            "no match: the root serves"
        );
        assert_eq!(
            count(&t, None, 10),
            [10, 0, 0, 0],
            "TCP: a split with matches never applies"
        );
        headers.insert("x-canary", "true".parse().unwrap());
        let canary = RequestView {
            method: "GET",
            path: "/",
            headers: &headers,
        };
        assert_eq!(
            select(&t, root(&t), Some(&canary), &mut rand::rng()),
            Selection::NoTraffic {
                split: "shop/ab".into(),
                root: root(&t)
            }
        );
    }

    #[test]
    fn tcp_splits_pick_by_weight() {
        let mut pg = service(
            "db",
            "pg",
            5432,
            10000,
            TrafficType::Tcp,
            &["10.0.0.1:5432"],
        );
        pg.splits.push(SplitSpec {
            name: "db/move".into(),
            matches: vec![],
            backends: vec![SplitBackendSpec {
                namespace: "db".into(),
                name: "pg-new".into(),
                port: 5432,
                weight: 1,
            }],
        });
        let new = service(
            "db",
            "pg-new",
            5432,
            10001,
            TrafficType::Tcp,
            &["10.0.0.2:5432"],
        );
        let t = compiled(Table::try_from(table(1, vec![pg, new])).unwrap());
        let Selection::Service(to) = select(&t, root(&t), None, &mut rand::rng()) else {
            panic!("no traffic")
        };
        assert_eq!(t[to].key.name, "pg-new");
    }
}
