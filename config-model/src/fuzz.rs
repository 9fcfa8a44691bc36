//! Property tests of the hostile inputs config-model reads (bounded case counts, so CI stays
//! fast): table JSON and annotations never panic, and what they report stays bounded.

use std::collections::BTreeMap;

use crate::annotations::{self, AnnotationError};
use crate::testing::{http, table};
use crate::{SplitBackendSpec, SplitSpec, Table, TrafficType};
use proptest::prelude::*;

/// A valid table with splits, as JSON, to mutate.
fn seed_json() -> Vec<u8> {
    let mut web = http("shop", "web", 5000, &["10.0.0.1:80", "[::1]:8080"]);
    web.splits = vec![SplitSpec {
        name: "shop/canary".into(),
        matches: vec![],
        backends: vec![SplitBackendSpec {
            namespace: "shop".into(),
            name: "v2".into(),
            port: 80,
            weight: 10,
        }],
    }];
    web.options.circuit_breaker = Some("NetworkErrorRatio() > 0.5".into());
    serde_json::to_vec(&table(
        3,
        vec![web, http("shop", "v2", 5000, &["10.0.0.2:80"])],
    ))
    .unwrap()
}

const NAMES: [&str; 12] = [
    annotations::TRAFFIC_TYPE,
    annotations::RETRY_ATTEMPTS,
    annotations::RETRY_BUDGET,
    annotations::TIMEOUT,
    annotations::RATELIMIT_AVERAGE,
    annotations::RATELIMIT_BURST,
    annotations::CIRCUIT_BREAKER,
    annotations::CIRCUIT_BREAKER_RECOVERY,
    annotations::SCHEME,
    annotations::TLS_SERVER_NAME,
    annotations::TLS_INSECURE_SKIP_VERIFY,
    annotations::MESH,
];

/// The bound a message keeps whatever the value: each quoted value is cut to 128 bytes before
/// it is quoted with Rust escapes (at most 5 characters per byte, e.g. `\u{e}`), and a message
/// quotes it at most three times (the value, and a duration's or expression's own quote of it).
fn bounded(e: &AnnotationError) -> bool {
    e.to_string().len() < 3 * 128 * 5 + 512
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic_as_a_table(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = Table::from_json(&bytes) {
            prop_assert!(e.to_string().len() < 2048);
        }
    }

    #[test]
    fn mutated_tables_never_panic_and_errors_stay_bounded(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        insert in proptest::option::of(("[a-z0-9:.\\[\\]{}\",-]{0,64}", any::<prop::sample::Index>())),
    ) {
        let mut json = seed_json();
        for (at, byte) in edits {
            let i = at.index(json.len());
            json[i] = byte;
        }
        if let Some((text, at)) = insert {
            let i = at.index(json.len());
            json.splice(i..i, text.bytes());
        }
        if let Err(e) = Table::from_json(&json) {
            prop_assert!(e.to_string().len() < 4096, "{} bytes", e.to_string().len());
        }
    }

    #[test]
    fn annotations_never_panic_and_quote_values_cut(
        values in proptest::collection::vec((0..NAMES.len(), ".{0,40}|[0-9a-zA-Z.() <>=|&!]{0,300}"), 0..8),
        long in proptest::option::of((0..NAMES.len(), 200usize..5000)),
    ) {
        let mut a: BTreeMap<String, String> = values
            .into_iter()
            .map(|(k, v)| (format!("maille.io/{}", NAMES[k]), v))
            .collect();
        if let Some((k, n)) = long {
            a.insert(format!("mesh.traefik.io/{}", NAMES[k]), "9".repeat(n));
        }
        if let Err(e) = annotations::traffic_type(&a) {
            prop_assert!(bounded(&e), "{e}");
        }
        if let Err(e) = annotations::mesh(&a) {
            prop_assert!(bounded(&e), "{e}");
        }
        for tt in [TrafficType::Http, TrafficType::Tcp, TrafficType::Udp] {
            let (_, errors) = annotations::options(&a, tt);
            for e in &errors {
                prop_assert!(bounded(e), "{e}");
            }
        }
    }
}
