//! The objects of one manifests file, read document by document (and `List` item by item):
//! a document or item whose bytes did not change since the last read of the file keeps its
//! objects (the same `Arc`s), so a change costs in proportion to what changed in the file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::split::{self, Domain, Key, Uncut, MAX_DOCUMENTS};
use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

/// The most documents and `List` items one file may hold together; past it the file is
/// refused (its last good objects stay) rather than read into memory.
pub const MAX_UNITS: usize = 200_000;

/// The most problems listed for one file; past it one more says how many were left out.
pub const MAX_FILE_PROBLEMS: usize = 100;

/// One object read from a file.
#[derive(Clone, Debug)]
enum Obj {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Pod(Arc<Pod>),
    /// An SMI or Gateway API object (few): a snapshot holding it alone.
    Other(Arc<Snapshot>),
}

impl Obj {
    fn put(&self, out: &mut Snapshot) {
        match self {
            Obj::Service(o) => out.services.push(o.clone()),
            Obj::EndpointSlice(o) => out.endpoint_slices.push(o.clone()),
            Obj::Pod(o) => out.pods.push(o.clone()),
            Obj::Other(s) => out.extend_from(s),
        }
    }
}

/// What a value (a document, or a List item) gave.
#[derive(Debug, Default)]
struct Unit {
    objects: Vec<Obj>,
    problems: Vec<Problem>,
}

/// A document as last read, kept for the next read of its file.
#[derive(Clone, Debug, Default)]
struct Document {
    /// Its fingerprint; `None` when it had problems: such a document is read again every
    /// time, so that its problems name it as it is now.
    key: Option<Key>,
    /// The documents YAML counts in this piece of the file (0 for the comments before the
    /// first `---`; more than 1 after a `...` end marker), for the numbers in messages.
    docs: usize,
    objects: Vec<Obj>,
    problems: Vec<Problem>,
    /// For a List, its items' fingerprints and objects: a changed List reads only the items
    /// that changed.
    items: Vec<(Key, Vec<Obj>)>,
}

/// What was read of a file, to reuse at its next read.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    documents: Vec<Document>,
}

/// How much a read of a file parsed and how much it reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Documents parsed (their bytes changed, or they had problems).
    pub documents_parsed: usize,
    /// Documents whose objects were reused.
    pub documents_reused: usize,
    /// Items of changed Lists parsed.
    pub items_parsed: usize,
    /// Items of changed Lists whose objects were reused.
    pub items_reused: usize,
}

impl std::ops::AddAssign for Reuse {
    fn add_assign(&mut self, o: Reuse) {
        self.documents_parsed += o.documents_parsed;
        self.documents_reused += o.documents_reused;
        self.items_parsed += o.items_parsed;
        self.items_reused += o.items_reused;
    }
}

/// Why a piece of a file was not read on its own.
enum PieceError {
    /// Not valid YAML (or not an object): the file is read whole, as YAML, for the message.
    Invalid,
    /// Past a bound: the file is refused with this message.
    Refused(String),
}

/// Adds one object by its `apiVersion` and `kind`. `Ok(None)` for a kind this build does not
/// read; an error message for an object of a known kind that does not have its shape.
fn object(api_version: &str, kind: &str, value: Value) -> Result<Option<Obj>, String> {
    let e = |e: serde_json::Error| e.to_string();
    Ok(Some(match (api_version, kind) {
        ("v1", "Service") => Obj::Service(Arc::new(serde_json::from_value(value).map_err(e)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Obj::EndpointSlice(Arc::new(serde_json::from_value(value).map_err(e)?))
        }
        ("v1", "Pod") => Obj::Pod(Arc::new(serde_json::from_value(value).map_err(e)?)),
        _ => {
            let mut one = Snapshot::default();
            match crate::smi::parse_manifest(&value) {
                Some(Ok(obj)) => one.smi.insert(obj),
                Some(Err(err)) => return Err(err.to_string()),
                None => match crate::gateway::parse_manifest(&value) {
                    Some(Ok(obj)) => one.gateway.insert(obj),
                    Some(Err(err)) => return Err(err.to_string()),
                    None => return Ok(None),
                },
            }
            Obj::Other(Arc::new(one))
        }
    }))
}

/// The items of `value` when it is a List (`kind: List`, or a kind ending in `List` with an
/// `items` array); `None` when it is an object.
fn list_items(value: &mut Value) -> Option<Vec<Value>> {
    let kind = value["kind"].as_str().unwrap_or("");
    if kind == "List" || kind.ends_with("List") && value["items"].is_array() {
        return Some(match value["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        });
    }
    None
}

/// The objects of one value of document `doc` (Lists in it included, in file order) into
/// `out`. An object that does not parse is reported and skipped; the others are kept.
fn objects_of_value(value: Value, doc: usize, source: &str, out: &mut Unit) {
    let mut stack = vec![value];
    while let Some(mut value) = stack.pop() {
        if let Some(items) = list_items(&mut value) {
            stack.extend(items.into_iter().rev());
            continue;
        }
        let api_version = value["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = value["kind"].as_str().unwrap_or("").to_string();
        let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("namespace")
                .or_insert_with(|| Value::String("default".into()));
        }
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            out.problems.push(Problem::new(
                ObjectRef::new("File", "", source),
                format!(
                    "{source}: document {doc}: an object needs apiVersion, kind and metadata.name"
                ),
            ));
            continue;
        }
        match object(&api_version, &kind, value) {
            Ok(Some(o)) => out.objects.push(o),
            Ok(None) => {
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
}

/// A JSON text as the value YAML would read: through `serde_yaml::Value`, so that a key given
/// twice is refused as YAML refuses it.
fn json_value(text: &str) -> Option<Value> {
    let yaml: serde_yaml::Value = serde_json::from_str(text).ok()?;
    serde_json::to_value(&yaml).ok()
}

/// The items of a JSON List, as their text; at most [`MAX_UNITS`], the others counted.
struct Items<'a> {
    raw: Vec<&'a RawValue>,
    more: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for Items<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Seq<'a> {
            type Value = Items<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'a>, A::Error> {
                let mut out = Items {
                    raw: Vec::new(),
                    more: 0,
                };
                while let Some(item) = seq.next_element::<&'a RawValue>()? {
                    if out.raw.len() < MAX_UNITS {
                        out.raw.push(item);
                    } else {
                        out.more += 1;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Seq(std::marker::PhantomData))
    }
}

/// What a JSON document is read for first: whether it is a List, and its items' text. The
/// other fields are skipped without being built.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Items<'a>>,
}

/// Reads one piece of a file (a document, from its `---` line to the next): as JSON when it is
/// a JSON object (each item of a List then on its own), else as YAML. Items of a List found in
/// `items` (by fingerprint) are not parsed again.
struct PieceReader<'k> {
    source: &'k str,
    /// Items of the last read's changed or removed documents, by fingerprint.
    items: HashMap<Key, Vec<&'k [Obj]>>,
    reuse: Reuse,
    /// Documents and List items so far.
    units: usize,
}

impl<'k> PieceReader<'k> {
    /// Counts documents or items against [`MAX_UNITS`].
    fn count(&mut self, units: usize, doc: usize) -> Result<(), String> {
        self.units += units;
        if self.units > MAX_UNITS {
            return Err(format!(
                "{}: document {doc}: more than {MAX_UNITS} documents and List items in one file; split it",
                self.source
            ));
        }
        Ok(())
    }

    fn read(&mut self, piece: &str, first_doc: usize) -> Result<Document, PieceError> {
        if let Some(body) = split::json_body(piece) {
            if let Ok(head) = serde_json::from_str::<Head>(body) {
                return self.json(body, head, first_doc);
            }
        }
        self.yaml(piece, first_doc)
    }

    fn json(&mut self, body: &str, head: Head, doc: usize) -> Result<Document, PieceError> {
        let mut d = Document {
            docs: 1,
            ..Document::default()
        };
        self.count(1, doc).map_err(PieceError::Refused)?;
        let kind = head.kind.as_deref().unwrap_or("");
        let list = kind == "List" || kind.ends_with("List") && head.items.is_some();
        if !list {
            let value = json_value(body).ok_or(PieceError::Invalid)?;
            let mut unit = Unit::default();
            objects_of_value(value, doc, self.source, &mut unit);
            d.objects = unit.objects;
            d.problems = unit.problems;
            return Ok(d);
        }
        let Some(items) = head.items else {
            return Ok(d);
        };
        self.count(items.raw.len() + items.more, doc)
            .map_err(PieceError::Refused)?;
        for raw in items.raw {
            let key = Key::of(Domain::JsonItem, raw.get().as_bytes());
            let value = match self.take_item(key) {
                Some(objects) => {
                    d.add_item(key, objects.to_vec());
                    continue;
                }
                None => json_value(raw.get()).ok_or(PieceError::Invalid)?,
            };
            self.item(&mut d, key, value, doc);
        }
        Ok(d)
    }

    fn yaml(&mut self, piece: &str, first_doc: usize) -> Result<Document, PieceError> {
        let mut d = Document::default();
        for (i, de) in serde_yaml::Deserializer::from_str(piece).enumerate() {
            // A document that fails ends the file (the iterator would repeat the failure).
            let value = serde_yaml::Value::deserialize(de).map_err(|_| PieceError::Invalid)?;
            let doc = first_doc + i;
            d.docs += 1;
            self.count(1, doc).map_err(PieceError::Refused)?;
            if value.is_null() {
                continue;
            }
            let mut value = serde_json::to_value(&value).map_err(|_| PieceError::Invalid)?;
            let Some(items) = list_items(&mut value) else {
                let mut unit = Unit::default();
                objects_of_value(value, doc, self.source, &mut unit);
                d.objects.extend(unit.objects);
                d.problems.extend(unit.problems);
                continue;
            };
            self.count(items.len(), doc).map_err(PieceError::Refused)?;
            for item in items {
                let bytes = serde_json::to_vec(&item).unwrap_or_default();
                let key = Key::of(Domain::YamlItem, &bytes);
                match self.take_item(key) {
                    Some(objects) => d.add_item(key, objects.to_vec()),
                    None => self.item(&mut d, key, item, doc),
                }
            }
        }
        Ok(d)
    }

    /// Objects of the last read for an item with this fingerprint, if any are left.
    fn take_item(&mut self, key: Key) -> Option<&'k [Obj]> {
        let found = self.items.get_mut(&key).and_then(Vec::pop);
        if found.is_some() {
            self.reuse.items_reused += 1;
        }
        found
    }

    /// Parses one List item into `d`.
    fn item(&mut self, d: &mut Document, key: Key, value: Value, doc: usize) {
        self.reuse.items_parsed += 1;
        let mut unit = Unit::default();
        objects_of_value(value, doc, self.source, &mut unit);
        if unit.problems.is_empty() {
            d.add_item(key, unit.objects);
        } else {
            d.objects.extend(unit.objects);
            d.problems.extend(unit.problems);
        }
    }
}

impl Document {
    fn add_item(&mut self, key: Key, objects: Vec<Obj>) {
        self.objects.extend(objects.iter().cloned());
        self.items.push((key, objects));
    }
}

/// Reads a file's text into a snapshot, reusing the objects of `last` (the same file's last
/// good read) for every document and List item whose bytes did not change. Objects are in file
/// order; an object that does not parse is reported and skipped. Returns an error message when
/// the text is not YAML at all, or past a bound.
pub(super) fn read(
    text: &str,
    source: &str,
    last: Option<&Kept>,
) -> Result<(Snapshot, Kept, Reuse), String> {
    let pieces = match split::documents(text) {
        Ok(pieces) => pieces,
        Err(Uncut::Directives) => return whole(text, source),
        Err(Uncut::TooMany) => {
            return Err(format!(
                "{source}: more than {MAX_DOCUMENTS} documents; split it into several files"
            ))
        }
    };
    let keys: Vec<Key> = pieces
        .iter()
        .map(|p| Key::of(Domain::Document, p.as_bytes()))
        .collect();
    let old: &[Document] = last.map(|k| k.documents.as_slice()).unwrap_or_default();
    // Documents unchanged (anywhere in the file) are taken whole; the items of the others are
    // there for the Lists that changed.
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, d) in old.iter().enumerate().rev() {
        if let Some(k) = d.key {
            by_key.entry(k).or_default().push(i);
        }
    }
    let same: Vec<Option<usize>> = keys
        .iter()
        .map(|k| by_key.get_mut(k).and_then(Vec::pop))
        .collect();
    let mut taken = vec![false; old.len()];
    for &i in same.iter().flatten() {
        taken[i] = true;
    }
    let mut reader = PieceReader {
        source,
        items: HashMap::new(),
        reuse: Reuse::default(),
        units: 0,
    };
    for (d, _) in old.iter().zip(&taken).filter(|(_, t)| !**t) {
        for (k, objects) in d.items.iter().rev() {
            reader.items.entry(*k).or_default().push(objects);
        }
    }

    let mut documents = Vec::with_capacity(pieces.len());
    let mut doc = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let d = match same[i] {
            Some(j) => {
                reader.reuse.documents_reused += 1;
                let d = old[j].clone();
                reader.count(d.docs + d.items.len(), doc + 1)?;
                d
            }
            None if i == 0 && split::is_blank(piece) => Document {
                key: Some(keys[i]),
                ..Document::default()
            },
            None => {
                reader.reuse.documents_parsed += 1;
                match reader.read(piece, doc + 1) {
                    Ok(mut d) => {
                        d.key = d.problems.is_empty().then_some(keys[i]);
                        d
                    }
                    Err(PieceError::Refused(message)) => return Err(message),
                    // Read whole for YAML's own message (lines counted from the file's start);
                    // also right, if slower, should cutting at `---` lines ever misread a file.
                    Err(PieceError::Invalid) => return whole(text, source),
                }
            }
        };
        doc += d.docs;
        documents.push(d);
    }
    let mut out = Snapshot::default();
    for d in &documents {
        for o in &d.objects {
            o.put(&mut out);
        }
        out.problems.extend(d.problems.iter().cloned());
    }
    bound_problems(&mut out.problems, source);
    Ok((out, Kept { documents }, reader.reuse))
}

/// Keeps the first [`MAX_FILE_PROBLEMS`] problems of a file and says how many more there were.
fn bound_problems(problems: &mut Vec<Problem>, source: &str) {
    if problems.len() > MAX_FILE_PROBLEMS {
        let more = problems.len() - MAX_FILE_PROBLEMS;
        problems.truncate(MAX_FILE_PROBLEMS);
        problems.push(Problem::new(
            ObjectRef::new("File", "", source),
            format!("{source}: {more} more problems in this file are not listed"),
        ));
    }
}

/// Reads a file as one YAML stream, document after document, nothing reused: for a file with
/// directives, and for the message of one that is not YAML.
fn whole(text: &str, source: &str) -> Result<(Snapshot, Kept, Reuse), String> {
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
        if values.len() > MAX_UNITS {
            return Err(format!(
                "{source}: more than {MAX_UNITS} documents; split it into several files"
            ));
        }
    }
    let mut unit = Unit::default();
    for (doc, value) in values {
        objects_of_value(value, doc, source, &mut unit);
        if unit.objects.len() + unit.problems.len() > MAX_UNITS {
            return Err(format!(
                "{source}: document {doc}: more than {MAX_UNITS} documents and List items in one file; split it"
            ));
        }
    }
    let mut out = Snapshot::default();
    for o in &unit.objects {
        o.put(&mut out);
    }
    out.problems = unit.problems;
    bound_problems(&mut out.problems, source);
    let reuse = Reuse {
        documents_parsed: 1,
        ..Reuse::default()
    };
    Ok((out, Kept::default(), reuse))
}

/// Parses the documents of one file into `out` (appended, in file order). `source` names the
/// file in problems. An object that does not parse is reported and skipped; the others are
/// kept. Returns an error when the text is not YAML at all.
pub fn parse_documents(text: &str, source: &str, out: &mut Snapshot) -> Result<(), String> {
    let (snap, _, _) = read(text, source, None)?;
    out.extend_from(&snap);
    Ok(())
}

#[cfg(test)]
pub(super) fn read_whole(text: &str, source: &str) -> Result<Snapshot, String> {
    whole(text, source).map(|(s, _, _)| s)
}
