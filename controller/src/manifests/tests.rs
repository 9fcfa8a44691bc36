//! Tests of the manifests provider: reading, reuse between reads, bounds, hostile input.

use super::*;

#[test]
fn hostile_yaml_is_refused_without_overflow_or_blow_up() {
    // 10,000 levels of nesting as flow style and in a field of an object; 1,000 in block
    // style (its indentation grows quadratically).
    let flow = "[".repeat(10_000) + &"]".repeat(10_000);
    let block: String = (0..1_000)
        .map(|i| format!("{}- \n", " ".repeat(i)))
        .collect();
    let in_object = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {}\n",
        "{a: ".repeat(10_000) + &"}".repeat(10_000)
    );
    // A "billion laughs" document: nine levels of aliases, each repeating the last ten times.
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        laughs += &format!(
            "{cur}: &{cur} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        );
    }
    for (case, text) in [
        ("flow", flow),
        ("block", block),
        ("object", in_object),
        ("laughs", laughs),
    ] {
        let mut snap = Snapshot::default();
        let e = parse_documents(&text, "hostile.yaml", &mut snap).unwrap_err();
        assert!(
            e.starts_with("hostile.yaml: document 1: not valid YAML"),
            "{case}: {e}"
        );
        assert!(
            e.contains("recursion limit") || e.contains("repetition limit"),
            "{case}: {e}"
        );
        assert!(e.len() < 400, "{case}: {} bytes", e.len());
    }
}

const DOCS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
"#;

#[test]
fn reads_known_kinds_defaults_namespace_and_skips_others() {
    let mut s = Snapshot::default();
    parse_documents(DOCS, "a.yaml", &mut s).unwrap();
    assert_eq!(s.services.len(), 1);
    assert_eq!(s.endpoint_slices.len(), 1);
    assert_eq!(
        s.endpoint_slices[0].metadata.namespace.as_deref(),
        Some("default")
    );
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

#[test]
fn bad_object_is_reported_with_file_kind_and_name() {
    let mut s = Snapshot::default();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: eighty}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ok}\n";
    parse_documents(text, "b.yaml", &mut s).unwrap();
    assert_eq!(s.services.len(), 1);
    assert_eq!(s.problems.len(), 1);
    let p = &s.problems[0];
    assert_eq!(p.object, ObjectRef::service("shop", "web"));
    assert!(
        p.message.starts_with("b.yaml: Service shop/web:"),
        "{}",
        p.message
    );
}

#[test]
fn broken_file_keeps_last_good_objects_and_json_lists_work() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.yaml");
    std::fs::write(&f, DOCS).unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"shop"}}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let mut m = ManifestsDir::new(dir.path());
    let s = m.load().unwrap();
    assert_eq!(s.services.len(), 2);
    assert!(!m.changed());
    std::fs::write(&f, "kind: [unclosed").unwrap();
    assert!(m.changed());
    let s = m.load().unwrap();
    assert_eq!(s.services.len(), 2, "a.yaml's last good objects are kept");
    assert_eq!(s.problems.len(), 1);
    assert!(
        s.problems[0].message.contains("still used"),
        "{}",
        s.problems[0].message
    );
    std::fs::remove_file(&f).unwrap();
    let s = m.load().unwrap();
    assert_eq!(s.services.len(), 1);
}

#[test]
fn duplicate_objects_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), DOCS).unwrap();
    std::fs::write(dir.path().join("b.yaml"), DOCS).unwrap();
    let s = ManifestsDir::new(dir.path()).load().unwrap();
    assert_eq!(s.services.len(), 1);
    assert_eq!(s.endpoint_slices.len(), 1);
    let problems: Vec<&str> = s.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        problems,
        [
            "shop/web: Service defined more than once: again in b.yaml; the one in a.yaml is used",
            "default/web-abc: EndpointSlice defined more than once: again in b.yaml; the one in a.yaml is used"
        ]
    );
}

/// A file name with control characters is named escaped: a problem is one line of the log.
#[test]
fn a_duplicate_names_a_hostile_file_name_escaped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), DOCS).unwrap();
    std::fs::write(dir.path().join("b\n\u{1b}[31m.yaml"), DOCS).unwrap();
    let s = ManifestsDir::new(dir.path()).load().unwrap();
    let message = &s.problems[0].message;
    assert!(
        message.contains(r"again in b\n\u{1b}[31m.yaml; the one in a.yaml is used"),
        "{message}"
    );
    assert!(!message.contains(['\n', '\u{1b}']), "{message}");
}

fn service_yaml(name: &str, pad: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: 80}}]}}\n#{}\n",
        "x".repeat(pad)
    )
}

fn service_names(s: &Snapshot) -> Vec<String> {
    let mut v = order(s);
    v.sort();
    v
}

/// More manifest files than the bound: the files read before stay, new ones are taken in name
/// order while there is room, the others are reported (how many, the first by name) until
/// files are removed.
#[test]
fn files_beyond_the_bound_on_their_number_are_left_out_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(format!("{n}.yaml"));
    for n in ["a", "b", "c", "d", "e"] {
        std::fs::write(path(n), service_yaml(n, 0)).unwrap();
    }
    let mut m = ManifestsDir::with_bounds(dir.path(), 3, MAX_TOTAL_BYTES);
    let s = m.refresh(None).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a", "b", "c"]);
    let said =
        |s: &Snapshot| -> Vec<String> { s.problems.iter().map(|p| p.message.clone()).collect() };
    let expect = |n: usize, first: &str| {
        format!(
            "{}: more than 3 manifest files; {n} added last are not read (the first by name: {first}.yaml); remove files to make room",
            dir.path().display()
        )
    };
    assert_eq!(said(&s), [expect(2, "d")]);
    assert_eq!(s.problems[0].object.kind, "File");
    // Nothing changed: no new snapshot, at the event of a left-out file or the whole check.
    std::fs::write(path("e"), service_yaml("e", 1)).unwrap();
    assert!(m.refresh(Some(&[path("e")])).unwrap().is_none());
    assert!(m.refresh(None).unwrap().is_none());
    // One removed: the first left out by name is read.
    std::fs::remove_file(path("b")).unwrap();
    let s = m.refresh(Some(&[path("b")])).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a", "c", "d"]);
    assert_eq!(said(&s), [expect(1, "e")]);
    // A new file first by name does not push out a file read before.
    std::fs::write(path("0"), service_yaml("z", 0)).unwrap();
    let s = m.refresh(Some(&[path("0")])).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a", "c", "d"]);
    assert_eq!(said(&s), [expect(2, "0")]);
    // A file read before still changes as usual.
    std::fs::write(path("a"), service_yaml("a2", 0)).unwrap();
    let s = m.refresh(Some(&[path("a")])).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a2", "c", "d"]);
    // Room for all: nothing left out, nothing said.
    for n in ["c", "d"] {
        std::fs::remove_file(path(n)).unwrap();
    }
    let s = m.refresh(Some(&[path("c"), path("d")])).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a2", "e", "z"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

/// A file that would take what the folder's files hold beyond the bound is refused, naming
/// the bound; its previous content stays, and so does every other file's.
#[test]
fn a_file_beyond_the_bound_on_the_folder_bytes_is_refused_and_the_rest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, service_yaml("a", 500)).unwrap();
    std::fs::write(&b, service_yaml("b", 500)).unwrap();
    let mut m = ManifestsDir::with_bounds(dir.path(), MAX_FILES, 1000);
    let s = m.refresh(None).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a"]);
    let message = &s.problems[0].message;
    assert!(message.contains("b.yaml: with its 5"), "{message}");
    assert!(
        message.ends_with("would hold more than 1000 bytes; not read"),
        "{message}"
    );
    // a shrinks: b fits and is read.
    std::fs::write(&a, service_yaml("a", 100)).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&a))).unwrap().unwrap();
    assert_eq!(
        service_names(&s),
        ["a"],
        "only the files events name are looked at"
    );
    let s = m
        .refresh(None)
        .unwrap()
        .expect("b is read at the whole check");
    assert_eq!(service_names(&s), ["a", "b"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert!(m.refresh(None).unwrap().is_none(), "b is read once");
    // a grows beyond what is left: refused, its previous content and b stay.
    std::fs::write(&a, service_yaml("a-grown", 700)).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&a))).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a", "b"]);
    let message = &s.problems[0].message;
    assert!(message.contains("a.yaml: with its"), "{message}");
    assert!(message.contains("still used"), "{message}");
    // b removed: a's new content fits.
    std::fs::remove_file(&b).unwrap();
    m.refresh(Some(std::slice::from_ref(&b))).unwrap();
    std::fs::write(&a, service_yaml("a-grown", 701)).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&a))).unwrap().unwrap();
    assert_eq!(service_names(&s), ["a-grown"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

/// A file that stops parsing and an object defined twice reach `/api/services` (as rows
/// of the translation) and keep the last good objects.
#[test]
fn file_and_duplicate_problems_reach_the_service_list() {
    let dir = tempfile::tempdir().unwrap();
    let split = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: canary, namespace: shop}\nspec: {service: web, backends: [{service: web, weight: 1}]}\n";
    std::fs::write(dir.path().join("a.yaml"), format!("{DOCS}\n---\n{split}")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), split).unwrap();
    let mut m = ManifestsDir::new(dir.path());
    m.load().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "kind: [unclosed").unwrap();
    let snap = m.load().unwrap();
    assert_eq!(snap.smi.traffic_splits.len(), 1, "defined twice: one kept");
    assert_eq!(
        snap.services.len(),
        1,
        "a.yaml's last good objects are kept"
    );
    let settings = crate::settings::Settings::default();
    let mut alloc = crate::alloc::PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = crate::translate::translate(&snap, &settings, &mut alloc);
    let file = t
        .objects
        .iter()
        .find(|o| o.kind == "File")
        .expect("the broken file is listed");
    assert!(file.name.ends_with("a.yaml"), "{file:?}");
    assert!(file.errors[0].contains("still used"), "{file:?}");
    let dup = t
        .objects
        .iter()
        .find(|o| o.kind == "TrafficSplit")
        .expect("the duplicate is listed");
    assert_eq!(
        (dup.namespace.as_str(), dup.name.as_str()),
        ("shop", "canary")
    );
    assert!(dup.errors[0].contains("defined more than once"), "{dup:?}");
    assert!(t.table.services.iter().any(|s| s.name == "web"));
}

/// The objects of a snapshot as text, in order, and its problems sorted: what two reads of the
/// same folder must agree on.
fn listing(s: &Snapshot) -> (Vec<String>, Vec<String>) {
    let j = |v: &dyn erased::Ser| v.json();
    let mut objects: Vec<String> = Vec::new();
    objects.extend(s.services.iter().map(|o| j(o.as_ref())));
    objects.extend(s.endpoint_slices.iter().map(|o| j(o.as_ref())));
    objects.extend(s.pods.iter().map(|o| j(o.as_ref())));
    objects.extend(s.smi.traffic_targets.iter().map(|o| j(o.as_ref())));
    objects.extend(s.smi.http_route_groups.iter().map(|o| j(o.as_ref())));
    objects.extend(s.smi.tcp_routes.iter().map(|o| j(o.as_ref())));
    objects.extend(s.smi.udp_routes.iter().map(|o| j(o.as_ref())));
    objects.extend(s.smi.traffic_splits.iter().map(|o| j(o.as_ref())));
    objects.extend(s.gateway.http_routes.iter().map(|o| j(o.as_ref())));
    objects.extend(s.gateway.grpc_routes.iter().map(|o| j(o.as_ref())));
    let mut problems: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
    problems.sort();
    (objects, problems)
}

mod erased {
    /// Any object as JSON, to compare objects of different kinds in one list.
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

/// Services of a namespace as a multi-document YAML file, the `i`-th with `port(i)`.
fn yaml_services(n: usize, port: impl Fn(usize) -> u16) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\nspec: {{ports: [{{port: {}}}]}}\n",
                port(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The same services as one JSON `List` (the fleet bench's layout: one line).
fn json_list(n: usize, port: impl Fn(usize) -> u16) -> String {
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{i}"), "namespace": "shop"},
                "spec": {"ports": [{"port": port(i)}]}})
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn port_of(s: &Snapshot, name: &str) -> i32 {
    let svc = s
        .services
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} is read"));
    svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
}

/// Which services of `b` are the very objects (same `Arc`) of `a`, by name.
fn shared(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = b
        .services
        .iter()
        .filter(|o| a.services.iter().any(|p| Arc::ptr_eq(o, p)))
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    names
}

/// The names of a snapshot's services, in its order.
fn order(s: &Snapshot) -> Vec<String> {
    s.services
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect()
}

/// A folder holding one file `name` with `text`, its provider, and the provider's first read.
fn folder(name: &str, text: &str) -> (tempfile::TempDir, PathBuf, ManifestsDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(name);
    std::fs::write(&f, text).unwrap();
    let mut m = ManifestsDir::new(dir.path());
    let first = m.load().unwrap();
    (dir, f, m, first)
}

fn names(n: usize, except: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .filter(|i| !except.contains(i))
        .map(|i| format!("s{i}"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_changed_document_is_the_only_one_parsed_the_others_keep_their_objects() {
    let (_dir, f, mut m, one) = folder("a.yaml", &yaml_services(20, |_| 80));
    assert_eq!(m.reuse().documents_parsed, 20);
    std::fs::write(&f, yaml_services(20, |i| if i == 7 { 81 } else { 80 })).unwrap();
    let two = m.load().unwrap();
    assert_eq!(
        (m.reuse().documents_parsed, m.reuse().documents_reused),
        (1, 19),
        "{:?}",
        m.reuse()
    );
    assert_eq!(port_of(&two, "s7"), 81);
    assert_eq!(shared(&one, &two), names(20, &[7]));
    assert_eq!(order(&two)[..3], ["s0", "s1", "s2"], "file order");
    assert!(two.problems.is_empty(), "{:?}", two.problems);
}

#[test]
fn a_reordered_file_reuses_every_document_in_its_new_order() {
    let docs: Vec<String> = yaml_services(5, |_| 80)
        .split("---\n")
        .map(String::from)
        .collect();
    let (_dir, f, mut m, one) = folder("a.yaml", &docs.join("---\n"));
    let mut reordered = docs.clone();
    reordered.reverse();
    // The first piece has no `---` line before it: put it back with one.
    std::fs::write(&f, format!("---\n{}", reordered.join("---\n"))).unwrap();
    let two = m.load().unwrap();
    assert_eq!(order(&two), ["s4", "s3", "s2", "s1", "s0"]);
    // s0 was the piece without a `---` line: its bytes changed, the others moved whole.
    assert_eq!(m.reuse().documents_parsed, 1, "{:?}", m.reuse());
    assert_eq!(shared(&one, &two), names(5, &[0]));
}

#[test]
fn a_removed_document_takes_its_object_away_and_only_it() {
    let (_dir, f, mut m, one) = folder("a.yaml", &yaml_services(6, |_| 80));
    let docs: Vec<String> = yaml_services(6, |_| 80)
        .split("---\n")
        .map(String::from)
        .collect();
    let kept: Vec<String> = docs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, d)| d.clone())
        .collect();
    std::fs::write(&f, kept.join("---\n")).unwrap();
    let two = m.load().unwrap();
    assert_eq!(m.reuse().documents_parsed, 0, "{:?}", m.reuse());
    assert_eq!(shared(&one, &two), names(6, &[3]));
    assert_eq!(two.services.len(), 5);
}

#[test]
fn a_broken_document_among_good_ones_keeps_the_last_good_file_and_is_reported() {
    let good = yaml_services(4, |_| 80);
    let (_dir, f, mut m, one) = folder("a.yaml", &good);
    // The third document stops parsing: lines are counted from the file's start.
    let docs: Vec<&str> = good.split("---\n").collect();
    let broken = format!(
        "{}---\n{}---\nkind: [unclosed\n---\n{}",
        docs[0], docs[1], docs[3]
    );
    std::fs::write(&f, &broken).unwrap();
    let two = m.load().unwrap();
    assert_eq!(
        shared(&one, &two),
        names(4, &[]),
        "the last good objects stay"
    );
    assert_eq!(two.problems.len(), 1, "{:?}", two.problems);
    let message = &two.problems[0].message;
    assert!(message.contains("document 3: not valid YAML"), "{message}");
    assert!(message.contains("line 11"), "{message}");
    assert!(message.contains("still used"), "{message}");
    // A document with a bad object among good ones: that object is reported, the others read
    // (and reused).
    let bad = format!(
        "{}---\n{}---\n{}---\n{}",
        docs[0],
        docs[1],
        docs[2].replace("port: 80", "port: eighty"),
        docs[3]
    );
    std::fs::write(&f, &bad).unwrap();
    let three = m.load().unwrap();
    assert_eq!(shared(&one, &three), names(4, &[2]));
    assert_eq!(three.problems.len(), 1, "{:?}", three.problems);
    assert_eq!(three.problems[0].object, ObjectRef::service("shop", "s2"));
    assert_eq!(m.reuse().documents_parsed, 1, "{:?}", m.reuse());
}

#[test]
fn a_json_list_reads_only_its_changed_items() {
    let (dir, f, mut m, one) = folder("a.json", &json_list(50, |_| 80));
    assert_eq!(one.services.len(), 50);
    std::fs::write(&f, json_list(50, |i| if i == 30 { 81 } else { 80 })).unwrap();
    let two = m.load().unwrap();
    let r = m.reuse();
    assert_eq!((r.items_parsed, r.items_reused), (1, 49), "{r:?}");
    assert_eq!(port_of(&two, "s30"), 81);
    assert_eq!(shared(&one, &two), names(50, &[30]));
    // The same objects as YAML: one List document.
    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        (0..10)
            .map(|i| format!("- {{apiVersion: v1, kind: Service, metadata: {{name: s{i}, namespace: shop}}, spec: {{ports: [{{port: {}}}]}}}}\n", if i == 4 { 81 } else { 80 }))
            .collect::<String>()
    );
    std::fs::write(dir.path().join("b.yaml"), yaml.replace("81", "80")).unwrap();
    let three = m.load().unwrap();
    assert_eq!(
        three.problems.len(),
        10,
        "b.yaml defines s0-s9 again: {:?}",
        three.problems
    );
    std::fs::write(dir.path().join("b.yaml"), &yaml).unwrap();
    m.load().unwrap();
    let r = m.reuse();
    assert_eq!((r.items_parsed, r.items_reused), (1, 9), "{r:?}");
}

#[test]
fn json_is_read_as_yaml_reads_it() {
    // A key given twice: refused, as YAML refuses it.
    let twice =
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"metadata":{"name":"b"}}"#;
    let mut s = Snapshot::default();
    let e = parse_documents(twice, "t.json", &mut s).unwrap_err();
    assert!(e.contains("duplicate"), "{e}");
    let item_twice = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","name":"b"}}]}"#;
    let e = parse_documents(item_twice, "t.json", &mut s).unwrap_err();
    assert!(e.contains("duplicate"), "{e}");
    // JSON documents in a YAML stream, a comment after one: as YAML reads them.
    let mixed = "--- {\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"a\"}} # one\n---\n{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"b\",\"namespace\":\"x\"}}\n";
    parse_documents(mixed, "m.yaml", &mut s).unwrap();
    assert_eq!(
        listing(&s),
        listing(&parse::read_whole(mixed, "m.yaml").unwrap())
    );
    assert_eq!(s.services.len(), 2);
    assert_eq!(s.services[0].metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn hostile_files_are_refused_within_bounds() {
    let (_dir, f, mut m, _) = folder("a.yaml", &yaml_services(2, |_| 80));
    let check = |m: &mut ManifestsDir, what: &str, text: &[u8], expect: &str| {
        std::fs::write(&f, text).unwrap();
        let s = m.load().unwrap();
        assert_eq!(s.services.len(), 2, "{what}: the last good objects stay");
        assert_eq!(s.problems.len(), 1, "{what}: {:?}", s.problems);
        let message = &s.problems[0].message;
        assert!(message.contains(expect), "{what}: {message}");
        assert!(message.contains("still used"), "{what}: {message}");
        assert!(message.len() < 400, "{what}: {} bytes", message.len());
    };
    // Larger than the bound (not read past it).
    let huge = vec![b'#'; MAX_FILE_BYTES as usize + 1];
    check(&mut m, "huge", &huge, "larger than 32 MiB");
    // More documents than the bound: refused before any is parsed.
    check(
        &mut m,
        "documents",
        "---\n".repeat(MAX_DOCUMENTS + 1).as_bytes(),
        "more than 100000 documents",
    );
    // A JSON List of more items than the bound.
    let items = format!(
        "{{\"kind\":\"List\",\"items\":[{}{{}}]}}",
        "{},".repeat(MAX_UNITS)
    );
    check(
        &mut m,
        "items",
        items.as_bytes(),
        "documents and List items",
    );
    // Deep nesting in a JSON document and in a List item: refused by the recursion limit.
    let deep = format!(
        "{{\"kind\":\"Service\",\"spec\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    check(&mut m, "deep", deep.as_bytes(), "recursion limit");
    let deep_item = format!(
        "{{\"kind\":\"List\",\"items\":[{}1{}]}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    check(&mut m, "deep item", deep_item.as_bytes(), "recursion limit");
    check(&mut m, "not UTF-8", b"kind: \xff\n", "valid UTF-8");
    // Many objects without names: a bounded list of problems, the others counted.
    let nameless = format!(
        "{{\"kind\":\"List\",\"items\":[{}{{}}]}}",
        "{},".repeat(150)
    );
    std::fs::write(&f, &nameless).unwrap();
    let s = m.load().unwrap();
    assert_eq!(s.problems.len(), MAX_FILE_PROBLEMS + 1);
    assert!(
        s.problems[MAX_FILE_PROBLEMS]
            .message
            .contains("51 more problems"),
        "{:?}",
        s.problems.last()
    );
}

#[test]
fn a_file_renamed_over_with_the_same_length_and_time_is_read_again() {
    let (dir, f, mut m, _) = folder("a.yaml", &yaml_services(1, |_| 80));
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    let staged = dir.path().join("a.tmp");
    std::fs::write(&staged, yaml_services(1, |_| 81)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&staged, &f).unwrap();
    assert!(m.changed());
    assert_eq!(port_of(&m.load_if_changed().unwrap().unwrap(), "s0"), 81);
    assert!(m.load_if_changed().unwrap().is_none());
}

/// Waits (at most [`crate::testing::PATIENCE`]) for a published snapshot that passes `ok`.
async fn published(
    rx: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    ok: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                if ok(&s) {
                    return s;
                }
            }
            rx.changed().await.unwrap();
        }
    };
    tokio::time::timeout(crate::testing::PATIENCE, wait)
        .await
        .expect("the snapshot within the test's patience")
}

fn service_doc(name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: 80}}]}}\n")
}

/// The folder followed for real (file notifications only: the periodic check is set beyond
/// the test): a file renamed in is read; a file written in place in two steps, with a pause
/// between them, is read only once its writer closed it.
#[tokio::test]
async fn files_are_read_once_renamed_in_or_closed_never_half_written() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service_doc("a")).unwrap();
    let (tx, mut rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(follow(
        dir.path().to_path_buf(),
        tx,
        stop.clone(),
        Duration::from_secs(3600),
    ));
    published(&mut rx, |s| s.services.len() == 1).await;

    let staged = dir.path().join(".b.tmp");
    std::fs::write(&staged, service_doc("b")).unwrap();
    std::fs::rename(&staged, dir.path().join("b.yaml")).unwrap();
    published(&mut rx, |s| s.services.len() == 2).await;

    let mut file = std::fs::File::create(dir.path().join("c.yaml")).unwrap();
    let text = service_doc("c");
    let (head, tail) = text.split_at(text.find("metadata").unwrap());
    file.write_all(head.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "read half written: {:?}",
        rx.borrow().as_ref().map(|s| s.problems.clone())
    );
    file.write_all(tail.as_bytes()).unwrap();
    drop(file);
    let s = published(&mut rx, |s| s.services.len() == 3).await;
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    stop.cancel();
    task.await.unwrap().unwrap();
}

mod fuzz {
    //! Property tests of the manifests reader (issue 13, "Also"): arbitrary and mutated
    //! YAML never panics, and what it reports stays bounded.
    use super::*;
    use proptest::prelude::*;

    /// The demo's manifests and an SMI split: every kind the folder reader knows, to mutate.
    fn seed() -> String {
        let mut text = String::new();
        for f in ["services.yaml", "endpoints.yaml"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo/");
            text += &std::fs::read_to_string(format!("{path}{f}")).unwrap();
            text += "\n---\n";
        }
        text + "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
                metadata: {name: canary, namespace: demo}\n\
                spec: {service: whoami, backends: [{service: whoami, weight: 90}]}\n\
                ---\nkind: List\napiVersion: v1\nitems: [{kind: List, apiVersion: v1, items: []}]\n"
    }

    /// Runs the reader; checks that every message it gives is bounded.
    fn read_bounded(text: &str) -> Result<(), TestCaseError> {
        let mut out = Snapshot::default();
        match parse_documents(text, "fuzz.yaml", &mut out) {
            Ok(()) => {}
            Err(e) => prop_assert!(e.len() <= 4 * MAX_MESSAGE, "{} bytes", e.len()),
        }
        for p in &out.problems {
            prop_assert!(p.message.len() <= MAX_MESSAGE + 64, "{}", p.message.len());
        }
        Ok(())
    }

    use config_model::cut::MAX_MESSAGE;

    /// The seed written as JSON: one document per object, then the services again as a List.
    fn seed_json() -> String {
        let mut s = Snapshot::default();
        parse_documents(&seed(), "seed.yaml", &mut s).unwrap();
        let mut text = String::new();
        for o in &s.endpoint_slices {
            let mut v = serde_json::to_value(o.as_ref()).unwrap();
            v["apiVersion"] = "discovery.k8s.io/v1".into();
            v["kind"] = "EndpointSlice".into();
            text += &format!("---\n{v}\n");
        }
        let services: Vec<serde_json::Value> = s
            .services
            .iter()
            .map(|o| {
                let mut v = serde_json::to_value(o.as_ref()).unwrap();
                v["apiVersion"] = "v1".into();
                v["kind"] = "Service".into();
                v
            })
            .collect();
        text + &format!(
            "---\n{}\n",
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": services})
        )
    }

    /// Applies mutations to a text.
    fn mutate(mut text: String, edits: &[(prop::sample::Index, usize, String)]) -> String {
        for (at, op, piece) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match op {
                0 => text.insert_str(i, piece),
                1 => {
                    let mut end = (i + piece.len()).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(i..end, "");
                }
                2 => text.truncate(i),
                3 => text.insert_str(i, &"x".repeat(100_000)),
                _ => text.insert_str(i, "\n---\n"),
            }
        }
        text
    }

    /// Reading a text document by document, with or without the objects of an earlier read of
    /// another text to reuse, gives what reading it whole gives.
    fn same_as_whole(text: &str, last: Option<&str>) -> Result<(), TestCaseError> {
        let kept = last
            .and_then(|l| parse::read(l, "fuzz.yaml", None).ok())
            .map(|(_, k, _)| k);
        let cut = parse::read(text, "fuzz.yaml", kept.as_ref()).map(|(s, _, _)| listing(&s));
        let whole = parse::read_whole(text, "fuzz.yaml").map(|s| listing(&s));
        if cut.is_ok() && whole.is_err() {
            // A document written as JSON is read as JSON, which takes a few texts YAML refuses
            // (a key longer than 1,024 characters): every document YAML refuses must be one.
            for piece in split::documents(text).unwrap() {
                if parse::read_whole(piece, "piece.yaml").is_err() {
                    let body = split::json_body(piece);
                    prop_assert!(
                        body.is_some_and(|b| serde_json::from_str::<serde_json::Value>(b).is_ok()),
                        "YAML refuses a document that is not JSON: {piece:?}"
                    );
                }
            }
            return Ok(());
        }
        prop_assert_eq!(cut, whole);
        Ok(())
    }

    fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, usize, String)>> {
        proptest::collection::vec(
            (
                any::<prop::sample::Index>(),
                0usize..5,
                "[-:{}\\[\\]&*!|>'\"#% \n\t.a-z0-9]{0,8}",
            ),
            1..6,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,1024}") {
            read_bounded(&text)?;
        }

        #[test]
        fn mutated_manifests_never_panic(edits in edits()) {
            read_bounded(&mutate(seed(), &edits))?;
        }

        #[test]
        fn cut_reads_agree_with_whole_reads(text in "\\PC{0,512}") {
            same_as_whole(&text, None)?;
        }

        #[test]
        fn mutated_reads_reusing_the_last_agree_with_whole_reads(
            first in edits(),
            second in edits(),
            json in any::<bool>(),
        ) {
            let seed = if json { seed_json() } else { seed() };
            let one = mutate(seed.clone(), &first);
            let two = mutate(one.clone(), &second);
            same_as_whole(&seed, None)?;
            same_as_whole(&one, Some(&seed))?;
            same_as_whole(&two, Some(&one))?;
        }
    }
}

/// Services `{prefix}0..n` of namespace shop as a JSON `List`, the `i`-th with `port(i)`.
fn named_list(prefix: &str, n: usize, port: impl Fn(usize) -> u16) -> String {
    json_list(n, port).replace("\"name\":\"s", &format!("\"name\":\"{prefix}"))
}

/// A change in one file leaves the objects of the others where they were, the very same
/// `Arc`s; a snapshot handed out never changes afterwards, and the one before the last is
/// updated in place once nobody holds it.
#[test]
fn a_change_in_one_file_leaves_the_other_files_objects_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(format!("{f}.json"));
    for f in ["a", "b", "c"] {
        std::fs::write(path(f), named_list(f, 5, |_| 80)).unwrap();
    }
    let mut m = ManifestsDir::new(dir.path());
    let one = m.refresh(None).unwrap().unwrap();
    assert_eq!(one.services.len(), 15);
    // (A new length: a rewrite within the file system's clock tick is seen by it.)
    std::fs::write(
        path("b"),
        named_list("b", 5, |i| if i == 2 { 8081 } else { 80 }),
    )
    .unwrap();
    let two = m.refresh(Some(&[path("b")])).unwrap().unwrap();
    assert_eq!(order(&two), order(&one));
    for (i, (x, y)) in one.services.iter().zip(&two.services).enumerate() {
        assert_eq!(Arc::ptr_eq(x, y), i != 7, "{}", order(&one)[i]);
    }
    assert_eq!(port_of(&two, "b2"), 8081);
    // `one` is still held: a new snapshot is made, and `one` keeps its objects.
    std::fs::write(path("c"), named_list("c", 4, |_| 80)).unwrap();
    let three = m.refresh(Some(&[path("c")])).unwrap().unwrap();
    assert_eq!(port_of(&one, "b2"), 80);
    assert_eq!(three.services.len(), 14);
    assert!(Arc::ptr_eq(&three.services[7], &two.services[7]));
    // Nobody holds `two` now: the next snapshot is `two`'s, updated in place.
    let (at, kept) = (Arc::as_ptr(&two), three.clone());
    drop((one, two, three));
    std::fs::write(path("a"), named_list("a", 6, |_| 80)).unwrap();
    let four = m.refresh(Some(&[path("a")])).unwrap().unwrap();
    assert_eq!(Arc::as_ptr(&four), at, "updated in place");
    assert_eq!(order(&kept).len(), 14, "a snapshot held does not change");
    assert_eq!(four.services.len(), 15);
    assert_eq!(
        order(&four)[..7],
        ["a0", "a1", "a2", "a3", "a4", "a5", "b0"]
    );
    assert!(four.services[6..]
        .iter()
        .zip(&kept.services[5..])
        .all(|(x, y)| Arc::ptr_eq(x, y)));
    // Nothing touched changed: no snapshot.
    assert!(m.refresh(Some(&[path("b")])).unwrap().is_none());
}

/// An object defined in two files: the first file's is used and the other reported; when the
/// first file goes, the other is used, and when it comes back, it is first again.
#[test]
fn a_duplicate_across_files_appears_and_goes_as_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    let svc = |name: &str, port: u16| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: {port}}}]}}\n")
    };
    std::fs::write(&a, svc("web", 80)).unwrap();
    std::fs::write(&b, svc("api", 80)).unwrap();
    let mut m = ManifestsDir::new(dir.path());
    let s = m.refresh(None).unwrap().unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    let twice =
        "shop/web: Service defined more than once: again in b.yaml; the one in a.yaml is used";
    let messages =
        |s: &Snapshot| -> Vec<String> { s.problems.iter().map(|p| p.message.clone()).collect() };
    std::fs::write(&b, format!("{}---\n{}", svc("api", 80), svc("web", 81))).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&b))).unwrap().unwrap();
    assert_eq!(
        (order(&s), port_of(&s, "web")),
        (vec!["web".into(), "api".into()], 80)
    );
    assert_eq!(messages(&s), [twice]);
    assert_eq!(s.problems[0].object, ObjectRef::service("shop", "web"));
    std::fs::remove_file(&a).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&a))).unwrap().unwrap();
    assert_eq!(
        (order(&s), port_of(&s, "web")),
        (vec!["api".into(), "web".into()], 81)
    );
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    std::fs::write(&a, svc("web", 82)).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&a))).unwrap().unwrap();
    assert_eq!(
        (order(&s), port_of(&s, "web")),
        (vec!["web".into(), "api".into()], 82)
    );
    assert_eq!(messages(&s), [twice]);
    // Defined twice in b as well: each later definition is reported, the last first.
    std::fs::write(
        &b,
        format!(
            "{}---\n{}---\n{}",
            svc("web", 83),
            svc("api", 80),
            svc("web", 84)
        ),
    )
    .unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&b))).unwrap().unwrap();
    assert_eq!(port_of(&s, "web"), 82);
    assert_eq!(
        messages(&s),
        [twice, twice],
        "each later definition names its file"
    );
    std::fs::write(&b, svc("api", 80)).unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&b))).unwrap().unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(order(&s), ["web", "api"]);
    // Within one file: the first definition changes, the later one (the same object, at the
    // same place) is used from then on.
    std::fs::write(
        &b,
        format!(
            "{}---
{}",
            svc("api", 80),
            svc("api", 81)
        ),
    )
    .unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&b))).unwrap().unwrap();
    assert_eq!(port_of(&s, "api"), 80);
    let api_twice =
        "shop/api: Service defined more than once in b.yaml; the first definition is used";
    assert_eq!(messages(&s), [api_twice]);
    let kept = s.services[1].clone();
    std::fs::write(
        &b,
        format!(
            "{}---
{}",
            svc("cart", 8080),
            svc("api", 81)
        ),
    )
    .unwrap();
    let s = m.refresh(Some(std::slice::from_ref(&b))).unwrap().unwrap();
    assert_eq!(m.reuse().documents_reused, 1, "{:?}", m.reuse());
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(order(&s), ["web", "cart", "api"]);
    assert_eq!(port_of(&s, "api"), 81);
    assert!(
        !Arc::ptr_eq(&kept, &s.services[2]),
        "the api of port 81 now"
    );
}

/// A file event that names a file gone sends the read to the whole folder: a folder that went
/// away is an error (the last objects are kept), not a folder emptied.
#[test]
fn a_folder_gone_is_an_error_not_an_empty_folder() {
    let (dir, f, mut m, _) = folder("a.yaml", &yaml_services(2, |_| 80));
    let moved = dir.path().with_extension("moved");
    std::fs::rename(dir.path(), &moved).unwrap();
    assert!(matches!(m.refresh(Some(&[f])), Err(Error::Dir { .. })));
    std::fs::rename(&moved, dir.path()).unwrap();
}

mod incremental {
    //! Any sequence of file edits read incrementally gives what reading the folder afresh
    //! gives, and what the rule (files in name order, first definition kept) says.
    use super::*;
    use proptest::prelude::*;

    /// One object: kind (Service or Pod), name, and a port or a label that changes its bytes.
    type Obj = (bool, u8, u8);

    fn text(objects: &[Obj], json: bool) -> String {
        let value = |&(pod, name, v): &Obj| {
            if pod {
                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("o{name}"), "namespace": "shop", "labels": {"v": v.to_string()}}})
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("o{name}"), "namespace": "shop"},
                    "spec": {"ports": [{"port": 80 + u16::from(v)}]}})
            }
        };
        let values: Vec<serde_json::Value> = objects.iter().map(value).collect();
        if json {
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values}).to_string()
        } else {
            values
                .iter()
                .map(|v| serde_yaml::to_string(v).unwrap())
                .collect::<Vec<_>>()
                .join("---\n")
        }
    }

    /// What the rule says: every file's objects in name order, each name's first definition.
    fn expected(files: &BTreeMap<usize, String>) -> Vec<String> {
        let mut all = Snapshot::default();
        for (i, t) in files {
            parse_documents(t, &format!("f{i}"), &mut all).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for s in &all.services {
            if seen.insert(("Service", s.metadata.name.clone())) {
                out.push(serde_json::to_string(s.as_ref()).unwrap());
            }
        }
        for p in &all.pods {
            if seen.insert(("Pod", p.metadata.name.clone())) {
                out.push(serde_json::to_string(p.as_ref()).unwrap());
            }
        }
        out
    }

    /// The problems that are not about a file.
    fn object_problems(s: &Snapshot) -> Vec<String> {
        s.problems
            .iter()
            .filter(|p| p.object.kind != "File")
            .map(|p| p.to_string())
            .collect()
    }

    fn edit() -> impl Strategy<Value = (usize, u8, Vec<Obj>, bool, bool, bool)> {
        (
            0usize..3,
            0u8..8,
            proptest::collection::vec((any::<bool>(), 0u8..4, 0u8..3), 0..5),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn incremental_reads_equal_fresh_reads(edits in proptest::collection::vec(edit(), 1..12)) {
            let dir = tempfile::tempdir().unwrap();
            let path = |i: usize| dir.path().join(format!("f{i}.yaml"));
            let mut m = ManifestsDir::new(dir.path());
            let mut last = m.refresh(None).unwrap().unwrap();
            let mut held = Vec::new();
            // The last good text of each file there.
            let mut good: BTreeMap<usize, String> = BTreeMap::new();
            for (file, action, objects, json, whole, hold) in edits {
                match action {
                    0 => {
                        let _ = std::fs::remove_file(path(file));
                        good.remove(&file);
                    }
                    1 => std::fs::write(path(file), "kind: [unclosed").unwrap(),
                    _ => {
                        let t = text(&objects, json);
                        std::fs::write(path(file), &t).unwrap();
                        good.insert(file, t);
                    }
                }
                let touched = [path(file)];
                let read = m.refresh((!whole).then_some(&touched[..])).unwrap();
                if hold {
                    held.push((last.clone(), listing(&last)));
                }
                if let Some(s) = read {
                    last = s;
                }
                // Afresh, from the last good texts.
                let fresh_dir = tempfile::tempdir().unwrap();
                for (i, t) in &good {
                    std::fs::write(fresh_dir.path().join(format!("f{i}.yaml")), t).unwrap();
                }
                let fresh = ManifestsDir::new(fresh_dir.path()).load().unwrap();
                let (objects, _) = listing(&last);
                prop_assert_eq!(&objects, &listing(&fresh).0);
                prop_assert_eq!(&objects, &expected(&good));
                prop_assert_eq!(object_problems(&last), object_problems(&fresh));
            }
            // Snapshots handed out and held did not change under their holders.
            for (s, then) in held {
                prop_assert_eq!(listing(&s), then);
            }
        }
    }
}
