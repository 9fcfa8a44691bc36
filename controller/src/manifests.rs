//! The manifests provider: every `*.yaml`, `*.yml` and `*.json` file of a folder (multi-document
//! YAML, the objects `kubectl apply` takes) read into a [`Snapshot`], again whenever a file
//! changes. A file that stops parsing keeps its last good objects and is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

/// Why the folder could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder is missing or unreadable.
    #[error("manifests folder {path}: {source}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("manifests folder {path}: cannot watch for changes: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The notify error.
        source: notify::Error,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds one object to the snapshot by its `apiVersion` and `kind`. Returns `Ok(false)` for a
/// kind this build does not read; an error message for an object of a known kind that does not
/// have its shape.
fn add_object(
    snapshot: &mut Snapshot,
    api_version: &str,
    kind: &str,
    value: Value,
) -> Result<bool, String> {
    let e = |e: serde_json::Error| e.to_string();
    match (api_version, kind) {
        ("v1", "Service") => snapshot
            .services
            .push(Arc::new(serde_json::from_value(value).map_err(e)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => snapshot
            .endpoint_slices
            .push(Arc::new(serde_json::from_value(value).map_err(e)?)),
        ("v1", "Pod") => snapshot
            .pods
            .push(Arc::new(serde_json::from_value(value).map_err(e)?)),
        _ => match crate::smi::parse_manifest(&value) {
            Some(Ok(obj)) => snapshot.smi.insert(obj),
            Some(Err(err)) => return Err(err.to_string()),
            None => match crate::gateway::parse_manifest(&value) {
                Some(Ok(obj)) => snapshot.gateway.insert(obj),
                Some(Err(err)) => return Err(err.to_string()),
                None => return Ok(false),
            },
        },
    }
    Ok(true)
}

/// Parses the documents of one file into `out`. `source` names the file in problems. An
/// object that does not parse is reported and skipped; the others are kept. Returns an error
/// when the text is not YAML at all.
pub fn parse_documents(text: &str, source: &str, out: &mut Snapshot) -> Result<(), String> {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("{source}: document {}: not valid YAML: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("{source}: document {}: not an object: {e}", i + 1))?;
        values.push((i + 1, json));
    }
    while let Some((doc, mut value)) = values.pop() {
        let api_version = value["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = value["kind"].as_str().unwrap_or("").to_string();
        if kind == "List" || kind.ends_with("List") && value["items"].is_array() {
            if let Value::Array(items) = value["items"].take() {
                values.extend(items.into_iter().map(|v| (doc, v)));
            }
            continue;
        }
        let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("namespace")
                .or_insert_with(|| Value::String("default".into()));
        }
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let file = ObjectRef::new("File", "", source);
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            out.problems.push(Problem::new(
                file,
                format!(
                    "{source}: document {doc}: an object needs apiVersion, kind and metadata.name"
                ),
            ));
            continue;
        }
        match add_object(out, &api_version, &kind, value) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%source, %api_version, %kind, %name, "Ignoring a kind the controller does not read");
            }
            Err(e) => {
                let prefix = format!("{kind} {ns}/{name}: ");
                let e = e.strip_prefix(&prefix).unwrap_or(&e);
                out.problems.push(Problem::new(
                    ObjectRef::new(&kind, &ns, &name),
                    format!("{source}: {prefix}{e}"),
                ))
            }
        }
    }
    // Documents were popped from the end; keep file order.
    out.services.reverse();
    out.endpoint_slices.reverse();
    out.pods.reverse();
    Ok(())
}

/// A file's identity for change detection: modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// What was last read of one file.
#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// The objects of its last good content; `None` when it never parsed.
    last_good: Option<Snapshot>,
    /// Why its current content could not be used, if it could not.
    problem: Option<Problem>,
}

/// The manifests folder and the last good objects of each file. A load re-reads only the
/// files whose modification time or length changed; the objects of the others are shared
/// (same `Arc`s) with the last snapshot, which is how translation tells what changed.
#[derive(Debug)]
pub struct ManifestsDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    loaded: bool,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && path.is_file()
}

impl ManifestsDir {
    /// A provider for this folder; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            loaded: false,
        }
    }

    /// The manifest files of the folder, with their stamps, sorted.
    fn stamps(&self) -> Result<BTreeMap<PathBuf, Stamp>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| Error::Dir {
            path: self.dir.clone(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest(p))
            .map(|p| {
                let md = std::fs::metadata(&p).ok();
                let stamp = (
                    md.as_ref().and_then(|m| m.modified().ok()),
                    md.map(|m| m.len()).unwrap_or(0),
                );
                (p, stamp)
            })
            .collect())
    }

    /// Whether a file was added, removed or modified since the last [`ManifestsDir::load`].
    pub fn changed(&self) -> bool {
        match self.stamps() {
            Ok(now) => {
                !self.loaded
                    || now.len() != self.files.len()
                    || now
                        .iter()
                        .zip(&self.files)
                        .any(|((p, st), (q, f))| p != q || *st != f.stamp)
            }
            Err(_) => true,
        }
    }

    /// Reads the files added or changed since the last load into one snapshot with the
    /// objects of the others. A file that does not parse keeps its previous objects (if it had
    /// any) and is reported; an object defined twice is reported and the first kept.
    pub fn load(&mut self) -> Result<Snapshot> {
        let stamps = self.stamps()?;
        self.files.retain(|p, _| stamps.contains_key(p));
        for (path, stamp) in stamps {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let source = path.display().to_string();
            let file = ObjectRef::new("File", "", &source);
            let previous = self.files.remove(&path).and_then(|f| f.last_good);
            let state = match std::fs::read_to_string(&path) {
                Err(e) => FileState {
                    stamp,
                    last_good: previous,
                    problem: Some(Problem::new(file, format!("{source}: cannot read: {e}"))),
                },
                Ok(text) => {
                    let mut snap = Snapshot::default();
                    match parse_documents(&text, &source, &mut snap) {
                        Ok(()) => FileState {
                            stamp,
                            last_good: Some(snap),
                            problem: None,
                        },
                        Err(message) => {
                            let kept = if previous.is_some() {
                                "; its previous content is still used"
                            } else {
                                ""
                            };
                            FileState {
                                stamp,
                                last_good: previous,
                                problem: Some(Problem::new(file, format!("{message}{kept}"))),
                            }
                        }
                    }
                }
            };
            self.files.insert(path, state);
        }
        let mut out = Snapshot::default();
        for f in self.files.values() {
            if let Some(snap) = &f.last_good {
                out.extend_from(snap);
            }
        }
        out.problems
            .extend(self.files.values().filter_map(|f| f.problem.clone()));
        dedup_objects(&mut out);
        self.loaded = true;
        Ok(out)
    }
}

/// Keeps the first definition of each object of a kind; every later one is reported.
fn dedup_kind<K>(items: &mut Vec<Arc<K>>, problems: &mut Vec<Problem>)
where
    K: kube::Resource<DynamicType = ()>,
{
    let mut seen: std::collections::HashSet<(&str, &str)> =
        std::collections::HashSet::with_capacity(items.len());
    let mut twice = Vec::new();
    for (i, o) in items.iter().enumerate() {
        let m = o.meta();
        let k = (
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        );
        if !seen.insert(k) {
            twice.push(i);
        }
    }
    if twice.is_empty() {
        return;
    }
    let kind = K::kind(&());
    for &i in twice.iter().rev() {
        let o = items.remove(i);
        let m = o.meta();
        let (ns, name) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        problems.push(Problem::new(
            ObjectRef::new(&kind, &ns, &name),
            format!("{ns}/{name}: {kind} defined more than once; the first definition is used"),
        ));
    }
}

fn dedup_objects(s: &mut Snapshot) {
    let mut problems = Vec::new();
    dedup_kind(&mut s.services, &mut problems);
    dedup_kind(&mut s.endpoint_slices, &mut problems);
    dedup_kind(&mut s.pods, &mut problems);
    let smi = &mut s.smi;
    dedup_kind(&mut smi.traffic_targets, &mut problems);
    dedup_kind(&mut smi.http_route_groups, &mut problems);
    dedup_kind(&mut smi.tcp_routes, &mut problems);
    dedup_kind(&mut smi.udp_routes, &mut problems);
    dedup_kind(&mut smi.traffic_splits, &mut problems);
    dedup_kind(&mut s.gateway.http_routes, &mut problems);
    dedup_kind(&mut s.gateway.grpc_routes, &mut problems);
    s.problems.extend(problems);
}

/// Reads the folder, publishes the snapshot, then publishes a new one after every change until
/// `shutdown`. Changes are seen through file notifications, with a periodic check behind them
/// (some file systems do not notify); a burst of changes gives one snapshot.
pub async fn run(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut provider = ManifestsDir::new(&dir);
    tx.send_replace(Some(Arc::new(provider.load()?)));

    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            w.notify_one();
        }
    })
    .map_err(|source| Error::Watch {
        path: dir.clone(),
        source,
    })?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive).map_err(
        |source| Error::Watch {
            path: dir.clone(),
            source,
        },
    )?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => {
                // Let a burst of writes (an editor saving, a `cp` of several files) settle.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tick.tick() => {}
        }
        if !provider.changed() {
            continue;
        }
        match provider.load() {
            Ok(snap) => {
                tracing::info!(dir = %dir.display(), "Manifests changed");
                tx.send_replace(Some(Arc::new(snap)));
            }
            Err(err) => {
                tracing::error!(%err, "Cannot read the manifests folder; keeping the last objects")
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let mut s = Snapshot::default();
        parse_documents(DOCS, "a.yaml", &mut s).unwrap();
        parse_documents(DOCS, "b.yaml", &mut s).unwrap();
        dedup_objects(&mut s);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.problems.len(), 2);
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

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,1024}") {
                read_bounded(&text)?;
            }

            #[test]
            fn mutated_manifests_never_panic(
                edits in proptest::collection::vec(
                    (any::<prop::sample::Index>(), 0usize..5, "[-:{}\\[\\]&*!|>'\"#% \n\t.a-z0-9]{0,8}"),
                    1..6,
                )
            ) {
                let mut text = seed();
                for (at, op, piece) in edits {
                    let mut i = at.index(text.len() + 1);
                    while !text.is_char_boundary(i) {
                        i -= 1;
                    }
                    match op {
                        0 => text.insert_str(i, &piece),
                        1 => {
                            let end = (i + piece.len()).min(text.len());
                            let mut end = end;
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
                read_bounded(&text)?;
            }
        }
    }
}
