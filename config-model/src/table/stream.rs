//! Reading a table from JSON one service at a time: each service port is validated as soon as
//! it is read and its wire form dropped, so a proxy loading a large table never holds the
//! whole wire form ([`TableSpec`](crate::TableSpec), several times the JSON's size) next to the
//! validated table. The result is the table [`Table::try_from`] gives for the same JSON.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::build::Builder;
use super::{Error, JsonError, Result, Service, Table};
use crate::mesh::{MtlsMode, NodeSpec, Nodes, WorkloadSpec, Workloads};
use crate::wire::ServiceSpec;
use crate::SCHEMA_VERSION;

/// The table's fields other than its services, as read.
#[derive(Default)]
struct Head {
    schema_version: Option<u32>,
    version: Option<u64>,
    acl: Option<bool>,
    mtls: Option<MtlsMode>,
    nodes: Option<Vec<NodeSpec>>,
    workloads: Option<Vec<WorkloadSpec>>,
}

/// What the reader found: the head, the services validated one by one up to the first that
/// is not valid, and that one's error. The rest of the JSON is still read (a syntax error
/// anywhere is a parse error, as for the wire form), without validating, and the error comes
/// in its turn: after the schema version, the node proxies and workloads, and the services
/// before it put together ([`Read::finish`]), the order of [`Table::try_from`].
#[derive(Default)]
struct Read {
    head: Head,
    services: Option<Vec<Arc<Service>>>,
    invalid: Option<Error>,
}

impl Table {
    /// Reads and validates a JSON table one service port at a time (see the module): the
    /// same table and the same errors as parsing the wire form and validating it.
    pub(super) fn from_json_streamed(bytes: &[u8]) -> std::result::Result<Table, JsonError> {
        let mut read = Read::default();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        (&mut de)
            .deserialize_map(TableVisitor { read: &mut read })
            .and_then(|()| de.end())
            .map_err(|e| JsonError::Parse(e.to_string()))?;
        Ok(read.finish()?)
    }
}

impl Read {
    fn finish(self) -> Result<Table> {
        let head = self.head;
        let schema_version = head.schema_version.unwrap_or_default();
        if schema_version != SCHEMA_VERSION {
            return Err(Error::SchemaVersion {
                found: schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        let services = self.services.unwrap_or_default();
        let mut builder = Builder::new(
            head.version.unwrap_or_default(),
            head.acl.unwrap_or_default(),
            services.len(),
        );
        builder.mesh(
            head.mtls.unwrap_or_default(),
            Arc::new(Nodes::from_specs(&head.nodes.unwrap_or_default())?),
            Arc::new(Workloads::from_specs(&head.workloads.unwrap_or_default())?),
        );
        for svc in services {
            builder.push(svc)?;
        }
        if let Some(e) = self.invalid {
            return Err(e);
        }
        builder.finish()
    }
}

struct TableVisitor<'r> {
    read: &'r mut Read,
}

/// Sets a field once, refusing a second occurrence as the wire form's derive does.
fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for TableVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a routing table (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let read = self.read;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let head = &mut read.head;
            match &*key {
                "schemaVersion" => {
                    let v = map.next_value()?;
                    once(&mut head.schema_version, "schemaVersion", v)?;
                }
                "version" => {
                    let v = map.next_value()?;
                    once(&mut head.version, "version", v)?;
                }
                "acl" => {
                    let v = map.next_value()?;
                    once(&mut head.acl, "acl", v)?;
                }
                "mtls" => {
                    let v = map.next_value()?;
                    once(&mut head.mtls, "mtls", v)?;
                }
                "nodes" => {
                    let v = map.next_value()?;
                    once(&mut head.nodes, "nodes", v)?;
                }
                "workloads" => {
                    let v = map.next_value()?;
                    once(&mut head.workloads, "workloads", v)?;
                }
                "services" => {
                    if read.services.is_some() {
                        return Err(de::Error::duplicate_field("services"));
                    }
                    // Another schema's services need not validate under this one.
                    let validate = head.schema_version.is_none_or(|v| v == SCHEMA_VERSION);
                    let invalid = RefCell::new(None);
                    let services = map.next_value_seed(ServicesSeed {
                        validate,
                        invalid: &invalid,
                    })?;
                    read.services = Some(services);
                    read.invalid = invalid.into_inner();
                }
                // Unknown fields are tolerated (a newer controller), skipped without recursion.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if read.head.schema_version.is_none() {
            return Err(de::Error::missing_field("schemaVersion"));
        }
        Ok(())
    }
}

/// The `services` array: each element read as a [`ServiceSpec`], validated, and dropped; after
/// the first that is not valid (its error kept), the others are only read.
struct ServicesSeed<'r> {
    validate: bool,
    invalid: &'r RefCell<Option<Error>>,
}

impl<'de> DeserializeSeed<'de> for ServicesSeed<'_> {
    type Value = Vec<Arc<Service>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ServicesSeed<'_> {
    type Value = Vec<Arc<Service>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of service ports")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        // A size hint is the input's word: reserve no more than a bounded amount up front.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        let mut validate = self.validate;
        while let Some(spec) = seq.next_element::<ServiceSpec>()? {
            if !validate {
                continue;
            }
            match spec.validate_local() {
                Ok(svc) => out.push(Arc::new(svc)),
                Err(e) => {
                    *self.invalid.borrow_mut() = Some(e);
                    validate = false;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::TableSpec;

    /// A table with something of every kind: HTTP, TCP and UDP ports, a cluster IP, options,
    /// a split with a match, access rules, a route entry, node proxies and workloads.
    fn rich() -> Value {
        json!({
            "schemaVersion": 1, "version": 7, "acl": true, "mtls": "strict",
            "nodes": [{"name": "node-a", "tunnel": "10.0.9.1:15008"}],
            "workloads": [{"ip": "10.1.0.1", "node": "node-a", "namespace": "shop",
                           "serviceAccount": "web"}],
            "services": [
                {"namespace": "shop", "name": "web", "port": 80, "meshPort": 5000,
                 "trafficType": "http", "clusterIp": "10.96.0.1",
                 "endpoints": [{"address": "10.1.0.1:8080", "weight": 2, "node": "node-a"}],
                 "options": {"retryAttempts": 2, "circuitBreaker": "NetworkErrorRatio() > 0.5"},
                 "splits": [{"name": "shop/canary",
                             "matches": [{"pathRegex": "/api/.*", "methods": ["GET"]}],
                             "backends": [{"namespace": "shop", "name": "web-v2", "port": 80,
                                           "weight": 10}]}],
                 "access": [{"name": "shop/allow", "sources": ["10.1.0.1"],
                             "identities": ["shop/web"]}],
                 "routes": [{"route": "shop/r", "match": {"path": {"value": "/x"}},
                             "backends": [{"namespace": "shop", "name": "web-v2", "port": 80,
                                           "weight": 1}]}]},
                {"namespace": "shop", "name": "web-v2", "port": 80, "meshPort": 5000,
                 "trafficType": "http", "endpoints": [{"address": "10.1.0.2:8080"}]},
                {"namespace": "db", "name": "pg", "port": 5432, "meshPort": 10000,
                 "trafficType": "tcp", "endpoints": [{"address": "10.1.0.3:5432"}]},
                {"namespace": "dns", "name": "ns", "port": 53, "meshPort": 15000,
                 "trafficType": "udp", "endpoints": [{"address": "10.1.0.4:53"}]}
            ]
        })
    }

    /// The table as the wire form and its validation give it.
    fn by_spec(bytes: &[u8]) -> std::result::Result<Table, JsonError> {
        let spec: TableSpec =
            serde_json::from_slice(bytes).map_err(|e| JsonError::Parse(e.to_string()))?;
        Ok(Table::try_from(spec)?)
    }

    /// Everything a proxy reads of a table, in a comparable form.
    fn view(t: &Table) -> String {
        let mut out = format!(
            "{} {} {:?} {:?} {:?}\n",
            t.version,
            t.acl,
            t.mtls(),
            t.nodes(),
            t.index_sizes()
        );
        let mut workloads: Vec<String> = t.workloads().iter().map(|w| format!("{w:?}")).collect();
        workloads.sort();
        out.push_str(&format!("{workloads:?}\n"));
        for (id, s) in t.iter() {
            out.push_str(&format!("{s:?}\n"));
            for i in 0..s.splits.len() {
                out.push_str(&format!("split {i} {:?}\n", t.split_targets(id, i)));
            }
            for i in 0..s.routes.len() {
                out.push_str(&format!("route {i} {:?}\n", t.route_targets(id, i)));
            }
            assert_eq!(t.service(&s.key), Some(id));
        }
        out
    }

    fn outcome(r: std::result::Result<Table, JsonError>) -> std::result::Result<String, String> {
        r.map(|t| view(&t)).map_err(|e| match e {
            // serde's messages name positions the two readers reach differently; the kind of
            // error is what must agree.
            JsonError::Parse(_) => "not valid JSON".to_string(),
            e => e.to_string(),
        })
    }

    fn agree(bytes: &[u8]) -> std::result::Result<String, String> {
        let streamed = outcome(Table::from_json(bytes));
        assert_eq!(
            streamed,
            outcome(by_spec(bytes)),
            "{}",
            String::from_utf8_lossy(bytes)
        );
        streamed
    }

    #[test]
    fn the_streamed_table_is_the_validated_wire_form() {
        let text = serde_json::to_vec(&rich()).unwrap();
        assert!(agree(&text).is_ok());
        // The services before the schema version, and an unknown field between them.
        let text = br#"{"services":[{"namespace":"a","name":"x","port":80,"meshPort":5000,
            "trafficType":"http","endpoints":[{"address":"127.0.0.1:1"}]}],"future":[[[]]],
            "version":3,"schemaVersion":1}"#;
        assert!(agree(text).is_ok());
        // Another schema, named after services that would not validate under this one.
        let text = br#"{"services":[{"namespace":"A","name":"x","port":80,"meshPort":5000,
            "trafficType":"http"}],"schemaVersion":9}"#;
        assert_eq!(
            agree(text).unwrap_err(),
            "table schema version 9 is not supported (this build reads version 1)"
        );
        // The first bad service is named, even with a later one bad too.
        let mut t = rich();
        t["services"][1]["endpoints"][0]["address"] = json!("nowhere");
        t["services"][3]["name"] = json!("UPPER");
        let e = agree(&serde_json::to_vec(&t).unwrap()).unwrap_err();
        assert!(
            e.contains("shop/web-v2:80") && e.contains("endpoints[0].address"),
            "{e}"
        );
        // A duplicate before the bad service is what the wire form's validation names too.
        let mut t = rich();
        let dup = t["services"][2].clone();
        t["services"].as_array_mut().unwrap().insert(3, dup);
        t["services"][4]["name"] = json!("UPPER");
        let e = agree(&serde_json::to_vec(&t).unwrap()).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        // A syntax error after a bad service is a parse error, as for the wire form.
        let mut text = serde_json::to_vec(&t).unwrap();
        text.pop();
        assert_eq!(agree(&text).unwrap_err(), "not valid JSON");
        for bad in [
            &br#"{"schemaVersion":1,"services":[],"services":[]}"#[..],
            br#"{"services":[]}"#,
            br#"[]"#,
            br#"{"schemaVersion":1,"version":-1}"#,
            br#"{"schemaVersion":1,"services":{}}"#,
        ] {
            assert_eq!(agree(bad).unwrap_err(), "not valid JSON");
        }
    }

    /// Paths to every value of a JSON document.
    fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    at.push(json!(k));
                    paths(x, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    at.push(json!(i));
                    paths(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match k {
            Value::String(k) => &mut v[k.as_str()],
            k => &mut v[k.as_u64().unwrap() as usize],
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any few values of the rich table replaced (or removed) by odd ones: the streamed
        /// reader gives the same table, or the same refusal, as the wire form's validation.
        #[test]
        fn any_mutation_gives_the_same_table_or_refusal(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..14), 1..4)
        ) {
            let mut t = rich();
            for (which, value) in edits {
                let mut all = Vec::new();
                paths(&t, &mut Vec::new(), &mut all);
                let path = which.get(&all[1..]).clone();
                let odd = [
                    json!(null), json!(0), json!(-1), json!(70000), json!(""), json!("x"),
                    json!("10.1.0.2:8080"), json!("shop"), json!([]), json!({}), json!(true),
                    json!("web-v2"), json!(2),
                ];
                if value == odd.len() {
                    // Remove the key or element.
                    let (last, parent) = path.split_last().unwrap();
                    match (at(&mut t, parent), last) {
                        (Value::Object(m), Value::String(k)) => { m.remove(k); }
                        (Value::Array(a), i) => { a.remove(i.as_u64().unwrap() as usize); }
                        _ => {}
                    }
                } else {
                    *at(&mut t, &path) = odd[value].clone();
                }
            }
            let _ = agree(&serde_json::to_vec(&t).unwrap());
        }
    }
}
