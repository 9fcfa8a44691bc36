//! The manifests provider: every `*.yaml`, `*.yml` and `*.json` file of a folder (multi-document
//! YAML, the objects `kubectl apply` takes) read into a [`Snapshot`], again whenever a file
//! changes. A file that stops parsing keeps its last good objects and is reported.

mod parse;
mod settle;
mod split;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

pub use parse::{parse_documents, Reuse, MAX_FILE_PROBLEMS, MAX_UNITS};
pub use settle::{MAX_WAIT, QUIET, SETTLE};
pub use split::MAX_DOCUMENTS;

/// The largest manifests file read; a larger one is refused (its last good objects stay).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

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

/// A file's identity for change detection: modification and change times, length and inode
/// (a file renamed over another with the same times and length is still seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    changed: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(md: Option<&std::fs::Metadata>) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            modified: md.and_then(|m| m.modified().ok()),
            len: md.map(|m| m.len()).unwrap_or(0),
            #[cfg(unix)]
            changed: md.map(|m| (m.ctime(), m.ctime_nsec())).unwrap_or_default(),
            #[cfg(unix)]
            inode: md.map(|m| m.ino()).unwrap_or(0),
            #[cfg(not(unix))]
            changed: (0, 0),
            #[cfg(not(unix))]
            inode: 0,
        }
    }
}

/// The last good read of a file: its objects, and what to reuse at its next read.
#[derive(Debug)]
struct Good {
    snapshot: Snapshot,
    kept: parse::Kept,
}

/// What was last read of one file.
#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// Its last good content; `None` when it never parsed.
    last_good: Option<Good>,
    /// Why its current content could not be used, if it could not.
    problem: Option<Problem>,
}

/// The manifests folder and the last good objects of each file. A load re-reads only the
/// files whose stamp changed, and in those parses only the documents (and `List` items) whose
/// bytes changed; the objects of the rest are shared (same `Arc`s) with the last snapshot,
/// which is how translation tells what changed.
#[derive(Debug)]
pub struct ManifestsDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    loaded: bool,
    reuse: Reuse,
}

fn is_manifest(path: &Path) -> bool {
    settle::is_manifest_name(path) && path.is_file()
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8; the error says why not.
fn read_bounded(path: &Path, source: &str) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("{source}: cannot read: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len.min(MAX_FILE_BYTES) as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{source}: larger than {} MiB; split it into several files",
            MAX_FILE_BYTES >> 20
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        cannot(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

impl ManifestsDir {
    /// A provider for this folder; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            loaded: false,
            reuse: Reuse::default(),
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
                let stamp = Stamp::of(std::fs::metadata(&p).ok().as_ref());
                (p, stamp)
            })
            .collect())
    }

    /// Whether a file was added, removed or modified since the last [`ManifestsDir::load`].
    pub fn changed(&self) -> bool {
        match self.stamps() {
            Ok(now) => self.differs(&now),
            Err(_) => true,
        }
    }

    fn differs(&self, now: &BTreeMap<PathBuf, Stamp>) -> bool {
        !self.loaded
            || now.len() != self.files.len()
            || now
                .iter()
                .zip(&self.files)
                .any(|((p, st), (q, f))| p != q || *st != f.stamp)
    }

    /// What the last [`ManifestsDir::load`] parsed and reused, over the files it read again.
    pub fn reuse(&self) -> Reuse {
        self.reuse
    }

    /// [`ManifestsDir::load`] when a file was added, removed or modified since the last one.
    pub fn load_if_changed(&mut self) -> Result<Option<Snapshot>> {
        let stamps = self.stamps()?;
        if !self.differs(&stamps) {
            return Ok(None);
        }
        self.load_stamped(stamps).map(Some)
    }

    /// Reads the files added or changed since the last load into one snapshot with the
    /// objects of the others. A file that does not parse keeps its previous objects (if it had
    /// any) and is reported; an object defined twice is reported and the first kept.
    pub fn load(&mut self) -> Result<Snapshot> {
        let stamps = self.stamps()?;
        self.load_stamped(stamps)
    }

    fn load_stamped(&mut self, stamps: BTreeMap<PathBuf, Stamp>) -> Result<Snapshot> {
        self.files.retain(|p, _| stamps.contains_key(p));
        self.reuse = Reuse::default();
        for (path, stamp) in stamps {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let source = path.display().to_string();
            let previous = self.files.remove(&path).and_then(|f| f.last_good);
            let read = read_bounded(&path, &source)
                .and_then(|text| parse::read(&text, &source, previous.as_ref().map(|g| &g.kept)));
            let state = match read {
                Ok((snapshot, kept, reuse)) => {
                    self.reuse += reuse;
                    FileState {
                        stamp,
                        last_good: Some(Good { snapshot, kept }),
                        problem: None,
                    }
                }
                Err(message) => {
                    let kept = if previous.is_some() {
                        "; its previous content is still used"
                    } else {
                        ""
                    };
                    FileState {
                        stamp,
                        last_good: previous,
                        problem: Some(Problem::new(
                            ObjectRef::new("File", "", &source),
                            format!("{message}{kept}"),
                        )),
                    }
                }
            };
            self.files.insert(path, state);
        }
        let mut out = Snapshot::default();
        for f in self.files.values() {
            if let Some(good) = &f.last_good {
                out.extend_from(&good.snapshot);
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
/// `shutdown`. Changes are seen through file notifications, with a once-a-second check behind
/// them (some file systems do not notify). Before a read the folder must be quiet for
/// [`QUIET`] when every manifest file touched was renamed in or closed after writing; while
/// one is still open for writing, until it is closed; for [`SETTLE`] while one is gone (an
/// editor's save may be half done); never longer than [`MAX_WAIT`]. A burst of changes gives
/// one snapshot.
pub async fn run(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
) -> Result<()> {
    follow(dir, tx, shutdown, Duration::from_secs(1)).await
}

/// [`run`], with the period of the check behind the notifications.
async fn follow(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
    period: Duration,
) -> Result<()> {
    let mut provider = ManifestsDir::new(&dir);
    // A missing folder is said as such, not as a watch that failed.
    provider.stamps()?;
    let wake = Arc::new(Notify::new());
    let activity = Arc::new(Mutex::new(settle::Activity::default()));
    let (w, a) = (wake.clone(), activity.clone());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = a.lock().is_ok_and(|mut a| a.record(&res));
        if relevant {
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

    // Watched before the first read, so that no change after it goes unseen.
    tx.send_replace(Some(Arc::new(provider.load()?)));

    let pause = || activity.lock().map(|a| a.pause()).unwrap_or(SETTLE);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tick.tick() => {}
        }
        // Wait for the folder to be quiet (a burst of writes, an editor saving, a `cp` of
        // several files gives one read) and for files being written to be closed.
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause().min(left)) => break,
                _ = wake.notified() => {}
            }
        }
        if let Ok(mut a) = activity.lock() {
            a.clear();
        }
        let started = Instant::now();
        match provider.load_if_changed() {
            Ok(None) => {}
            Ok(Some(snap)) => {
                let r = provider.reuse();
                tracing::info!(
                    dir = %dir.display(),
                    read_us = started.elapsed().as_micros() as u64,
                    documents_parsed = r.documents_parsed,
                    documents_reused = r.documents_reused,
                    items_parsed = r.items_parsed,
                    items_reused = r.items_reused,
                    "Manifests changed"
                );
                tx.send_replace(Some(Arc::new(snap)));
            }
            Err(err) => {
                tracing::error!(%err, "Cannot read the manifests folder; keeping the last objects")
            }
        }
    }
}

#[cfg(test)]
mod tests;
