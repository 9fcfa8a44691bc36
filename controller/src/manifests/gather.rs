//! The folder's objects put together across its files and kept between reads: a read moves
//! only the objects of the files it changed, and objects defined more than once (in one file
//! or in several) are found through an index of every object's name kept the same way, so a
//! change costs in proportion to the files it touched, not to the folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

/// The kinds a [`Snapshot`] holds, in [`each`]'s order (the order duplicates are reported in).
const KINDS: usize = 10;

/// Their names (`Resource::kind`), for the problems.
const KIND_NAMES: [&str; KINDS] = [
    "Service",
    "EndpointSlice",
    "Pod",
    "TrafficTarget",
    "HTTPRouteGroup",
    "TCPRoute",
    "UDPRoute",
    "TrafficSplit",
    "HTTPRoute",
    "GRPCRoute",
];

/// An object the folder may hold.
pub(super) trait Object: kube::Resource<DynamicType = ()> {}
impl<K: kube::Resource<DynamicType = ()>> Object for K {}

/// Something done with one kind's objects of two snapshots: `into`'s and `from`'s.
pub(super) trait Each {
    fn kind<K: Object>(&mut self, kind: usize, into: &mut Vec<Arc<K>>, from: &[Arc<K>]);
}

/// Calls `f` with each kind's objects of `into` and `from`, kind by kind in one fixed order.
pub(super) fn each(into: &mut Snapshot, from: &Snapshot, f: &mut impl Each) {
    f.kind(0, &mut into.services, &from.services);
    f.kind(1, &mut into.endpoint_slices, &from.endpoint_slices);
    f.kind(2, &mut into.pods, &from.pods);
    let (smi, other) = (&mut into.smi, &from.smi);
    f.kind(3, &mut smi.traffic_targets, &other.traffic_targets);
    f.kind(4, &mut smi.http_route_groups, &other.http_route_groups);
    f.kind(5, &mut smi.tcp_routes, &other.tcp_routes);
    f.kind(6, &mut smi.udp_routes, &other.udp_routes);
    f.kind(7, &mut smi.traffic_splits, &other.traffic_splits);
    let (gw, other) = (&mut into.gateway, &from.gateway);
    f.kind(8, &mut gw.http_routes, &other.http_routes);
    f.kind(9, &mut gw.grpc_routes, &other.grpc_routes);
}

/// An object's identity in the folder: its kind (index in [`each`]'s order, and name),
/// namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Name {
    kind: u8,
    namespace: Box<str>,
    name: Box<str>,
}

/// Where an object is defined: its file, and its place among that file's objects of its kind.
/// Definitions order as the files (by path), then the file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Def {
    file: Arc<Path>,
    at: u32,
}

/// The names of a snapshot's objects at the places `keep` (kind, place) takes, with their
/// places.
fn names_of(objects: &Snapshot, keep: impl Fn(usize, usize) -> bool) -> Vec<(Name, u32)> {
    struct Names<F>(Vec<(Name, u32)>, F);
    impl<F: Fn(usize, usize) -> bool> Each for Names<F> {
        fn kind<K: Object>(&mut self, kind: usize, _: &mut Vec<Arc<K>>, from: &[Arc<K>]) {
            debug_assert_eq!(K::kind(&()), KIND_NAMES[kind]);
            for (at, o) in from
                .iter()
                .enumerate()
                .filter(|(at, _)| (self.1)(kind, *at))
            {
                let m = o.meta();
                let name = Name {
                    kind: kind as u8,
                    namespace: m.namespace.as_deref().unwrap_or_default().into(),
                    name: m.name.as_deref().unwrap_or_default().into(),
                };
                self.0.push((name, at as u32));
            }
        }
    }
    let mut names = Names(Vec::new(), keep);
    each(&mut Snapshot::default(), objects, &mut names);
    names.0
}

/// What changed between two reads of a file: the objects no longer at their place, those
/// newly at theirs, and which places hold the very same object (`Arc`) as before.
struct Diff {
    removed: Vec<(Name, u32)>,
    added: Vec<(Name, u32)>,
    same: [Vec<bool>; KINDS],
}

impl Diff {
    fn same(&self, kind: u8, at: u32) -> bool {
        self.same[kind as usize].get(at as usize) == Some(&true)
    }
}

fn diff(old: &Snapshot, new: &Snapshot) -> Diff {
    /// Each kind's object pointers.
    struct Pointers([Vec<usize>; KINDS]);
    impl Each for Pointers {
        fn kind<K: Object>(&mut self, kind: usize, _: &mut Vec<Arc<K>>, from: &[Arc<K>]) {
            self.0[kind] = from.iter().map(|o| Arc::as_ptr(o) as usize).collect();
        }
    }
    let (mut was, mut now) = (Pointers(Default::default()), Pointers(Default::default()));
    each(&mut Snapshot::default(), old, &mut was);
    each(&mut Snapshot::default(), new, &mut now);
    let mut same: [Vec<bool>; KINDS] = Default::default();
    for (kind, s) in same.iter_mut().enumerate() {
        *s = (now.0[kind].iter().enumerate())
            .map(|(i, p)| was.0[kind].get(i) == Some(p))
            .collect();
    }
    let changed = |snap: &Snapshot| names_of(snap, |kind, at| same[kind].get(at) != Some(&true));
    Diff {
        removed: changed(old),
        added: changed(new),
        same,
    }
}

/// What one file puts into the gathered snapshot.
#[derive(Debug)]
struct Part {
    /// The file's objects (and the problems found reading them).
    objects: Arc<Snapshot>,
    /// Objects of it that are defined earlier (in it or in a file before it): left out.
    /// Sorted by kind, then place.
    later: Vec<(u8, u32)>,
    /// Changes whenever what the file puts in does.
    version: u64,
}

impl Part {
    /// How many objects of each kind the file puts in.
    fn counts(&self) -> [usize; KINDS] {
        struct Count([usize; KINDS]);
        impl Each for Count {
            fn kind<K: Object>(&mut self, kind: usize, _: &mut Vec<Arc<K>>, from: &[Arc<K>]) {
                self.0[kind] = from.len();
            }
        }
        let mut c = Count([0; KINDS]);
        each(&mut Snapshot::default(), &self.objects, &mut c);
        for &(kind, _) in &self.later {
            c.0[kind as usize] -= 1;
        }
        c.0
    }
}

/// A gathered snapshot and where each file's objects are in it.
#[derive(Debug)]
struct Buffer {
    snapshot: Arc<Snapshot>,
    /// In file order: the file, the version of its part placed, how many objects of each kind.
    placed: Vec<(Arc<Path>, u64, [usize; KINDS])>,
}

/// Replaces the objects one file put in a snapshot with what it puts in now.
struct Splice<'a> {
    /// Where the file's objects start, per kind.
    at: &'a mut [usize; KINDS],
    /// How many objects of each kind it had in the snapshot.
    had: [usize; KINDS],
    /// Its objects left out, sorted.
    later: &'a [(u8, u32)],
}

impl Each for Splice<'_> {
    fn kind<K: Object>(&mut self, kind: usize, into: &mut Vec<Arc<K>>, from: &[Arc<K>]) {
        let start = self.at[kind];
        let left_out = |i: usize| self.later.binary_search(&(kind as u8, i as u32)).is_ok();
        let new = from
            .iter()
            .enumerate()
            .filter(|(i, _)| self.later.is_empty() || !left_out(*i))
            .map(|(_, o)| o.clone());
        let before = into.len();
        into.splice(start..start + self.had[kind], new);
        self.at[kind] = start + (into.len() + self.had[kind] - before);
    }
}

/// The objects of every file, put together into one snapshot, incrementally.
#[derive(Debug, Default)]
pub(super) struct Gather {
    parts: BTreeMap<Arc<Path>, Part>,
    /// Every object's definitions, in order: the first is the one used.
    index: HashMap<Name, Vec<Def>>,
    /// The names defined more than once.
    twice: HashSet<Name>,
    versions: u64,
    /// The snapshot last handed out, and the one before it: a read updates the older one in
    /// place when nobody holds it any more (the provider's channel gave it back), so the
    /// objects of unchanged files are neither copied nor touched.
    current: Option<Buffer>,
    spare: Option<Buffer>,
}

impl Gather {
    fn version(&mut self) -> u64 {
        self.versions += 1;
        self.versions
    }

    /// Sets what `file` holds now (`None`: nothing, it is gone). Objects at the same place in
    /// the file as before, the very same `Arc`s, keep their entries in the index: a change
    /// costs in proportion to the objects that changed, and a look at each one's pointer.
    pub(super) fn set(&mut self, file: &Arc<Path>, objects: Option<Arc<Snapshot>>) {
        let old = self.parts.remove(file);
        let empty = Snapshot::default();
        let mut diff = diff(
            old.as_ref().map_or(&empty, |p| &p.objects),
            objects.as_deref().unwrap_or(&empty),
        );
        // The first definition, before this change, of every name the file held or holds.
        let mut first: HashMap<Name, Option<Def>> = HashMap::new();
        for (name, at) in std::mem::take(&mut diff.removed) {
            let defs = self.index.get_mut(&name).expect("indexed when set");
            first.entry(name).or_insert_with(|| defs.first().cloned());
            let def = Def {
                file: file.clone(),
                at,
            };
            if let Ok(i) = defs.binary_search(&def) {
                defs.remove(i);
            }
        }
        for (name, at) in &diff.added {
            let defs = self.index.entry(name.clone()).or_default();
            first
                .entry(name.clone())
                .or_insert_with(|| defs.first().cloned());
            let def = Def {
                file: file.clone(),
                at: *at,
            };
            if let Err(i) = defs.binary_search(&def) {
                defs.insert(i, def);
            }
        }
        // Where the first definition moved, the file that had it and the one that has it now
        // put in something else.
        let mut touched = Vec::with_capacity(first.len());
        for (name, was) in first {
            let defs = self.index.get(&name).map(Vec::as_slice).unwrap_or_default();
            let now = defs.first().cloned();
            if defs.len() > 1 {
                self.twice.insert(name.clone());
            } else {
                self.twice.remove(&name);
            }
            if defs.is_empty() {
                self.index.remove(&name);
                continue;
            }
            let kind = name.kind;
            touched.push(name);
            if was == now {
                continue;
            }
            for (def, later) in [(was, true), (now, false)] {
                let Some(def) = def.filter(|d| d.file != *file) else {
                    continue;
                };
                let version = self.version();
                let part = self
                    .parts
                    .get_mut(&def.file)
                    .expect("a part per indexed file");
                let key = (kind, def.at);
                match (part.later.binary_search(&key), later) {
                    (Err(i), true) => part.later.insert(i, key),
                    (Ok(i), false) => {
                        part.later.remove(i);
                    }
                    _ => continue,
                }
                part.version = version;
            }
        }
        let Some(objects) = objects else {
            return;
        };
        // Left out: the unchanged objects left out before, the new ones not first, and any
        // unchanged one whose name's first definition moved.
        let is_first = |index: &HashMap<Name, Vec<Def>>, name: &Name, at: u32| {
            index[name]
                .first()
                .is_some_and(|d| d.file == *file && d.at == at)
        };
        let mut later: Vec<(u8, u32)> = old
            .iter()
            .flat_map(|p| p.later.iter().copied())
            .filter(|&(kind, at)| diff.same(kind, at))
            .chain(
                diff.added
                    .iter()
                    .filter(|(name, at)| !is_first(&self.index, name, *at))
                    .map(|(name, at)| (name.kind, *at)),
            )
            .collect();
        later.sort_unstable();
        for name in &touched {
            for d in &self.index[name] {
                if d.file != *file || !diff.same(name.kind, d.at) {
                    continue;
                }
                let key = (name.kind, d.at);
                match (later.binary_search(&key), is_first(&self.index, name, d.at)) {
                    (Err(i), false) => later.insert(i, key),
                    (Ok(i), true) => {
                        later.remove(i);
                    }
                    _ => {}
                }
            }
        }
        let version = self.version();
        self.parts.insert(
            file.clone(),
            Part {
                objects,
                later,
                version,
            },
        );
    }

    /// The snapshot of every file's objects, in file order then the order in the file, each
    /// object defined more than once kept at its first definition (and the others reported);
    /// its problems: the files' own, then `problems`, then the objects defined twice.
    pub(super) fn snapshot(
        &mut self,
        problems: impl IntoIterator<Item = Problem>,
    ) -> Arc<Snapshot> {
        let mut buf = self
            .spare
            .take()
            .filter(|b| Arc::strong_count(&b.snapshot) == 1 && Arc::weak_count(&b.snapshot) == 0)
            .unwrap_or_else(|| Buffer {
                snapshot: Arc::default(),
                placed: Vec::new(),
            });
        let placed = std::mem::take(&mut buf.placed);
        let snap = Arc::get_mut(&mut buf.snapshot).expect("a buffer nobody else holds");
        let mut at = [0; KINDS];
        let mut old = placed.into_iter().peekable();
        let empty = Snapshot::default();
        let remove = |snap: &mut Snapshot, at: &mut [usize; KINDS], had| {
            let mut s = Splice {
                at,
                had,
                later: &[],
            };
            each(snap, &empty, &mut s);
        };
        for (file, part) in &self.parts {
            while let Some((_, _, had)) = old.next_if(|(f, _, _)| f < file) {
                remove(snap, &mut at, had);
            }
            let counts = part.counts();
            match old.next_if(|(f, _, _)| f == file) {
                Some((_, version, had)) if version == part.version => {
                    for (a, n) in at.iter_mut().zip(had) {
                        *a += n;
                    }
                }
                placed => {
                    let had = placed.map(|(_, _, had)| had).unwrap_or_default();
                    let mut s = Splice {
                        at: &mut at,
                        had,
                        later: &part.later,
                    };
                    each(snap, &part.objects, &mut s);
                }
            }
            buf.placed.push((file.clone(), part.version, counts));
        }
        for (_, _, had) in old {
            remove(snap, &mut at, had);
        }
        snap.problems.clear();
        for part in self.parts.values() {
            snap.problems.extend(part.objects.problems.iter().cloned());
        }
        snap.problems.extend(problems);
        snap.problems.extend(self.defined_twice());
        self.spare = self.current.replace(buf);
        self.current.as_ref().expect("just set").snapshot.clone()
    }

    /// A problem for each definition of an object after its first, kind by kind, the last
    /// definition first.
    fn defined_twice(&self) -> Vec<Problem> {
        let mut later: Vec<(u8, &Def, &Name)> = self
            .twice
            .iter()
            .flat_map(|name| {
                self.index[name][1..]
                    .iter()
                    .map(move |d| (name.kind, d, name))
            })
            .collect();
        later.sort_unstable_by(|a, b| (a.0, b.1).cmp(&(b.0, a.1)));
        later
            .into_iter()
            .map(|(kind, def, n)| {
                let kind = KIND_NAMES[kind as usize];
                let (ns, name) = (&n.namespace, &n.name);
                let first = &self.index[n][0].file;
                let message = if *first == def.file {
                    format!(
                        "{ns}/{name}: {kind} defined more than once in {}; the first definition is used",
                        file_name(first)
                    )
                } else {
                    format!(
                        "{ns}/{name}: {kind} defined more than once: again in {}; the one in {} is used",
                        file_name(&def.file),
                        file_name(first)
                    )
                };
                Problem::new(ObjectRef::new(kind, ns, name), message)
            })
            .collect()
    }
}

/// A manifests file as a problem names it: its name in the folder, control characters escaped.
pub(super) fn file_name(file: &Path) -> String {
    let name = file
        .file_name()
        .unwrap_or(file.as_os_str())
        .to_string_lossy();
    name.escape_debug().to_string()
}
