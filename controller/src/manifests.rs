//! The manifests provider: every `*.yaml`, `*.yml` and `*.json` file of a folder (multi-document
//! YAML, the objects `kubectl apply` takes) read into a [`Snapshot`], again whenever a file
//! changes. A file that stops parsing keeps its last good objects and is reported.

mod gather;
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

/// The most manifest files of the folder read: files added beyond it are not read (and
/// reported) until others are removed; the files read before stay.
pub const MAX_FILES: usize = 10_000;

/// The most bytes of manifests held from the whole folder (the last good content of every
/// file): a file that would take the total beyond it is refused (its last good objects stay).
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;

/// The bounds on the folder as a whole.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    files: usize,
    bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            files: MAX_FILES,
            bytes: MAX_TOTAL_BYTES,
        }
    }
}

/// The manifest files not read because the folder holds more than [`MAX_FILES`]: how many,
/// and the first of them by name.
type LeftOut = Option<(usize, PathBuf)>;

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
    snapshot: Arc<Snapshot>,
    kept: parse::Kept,
    /// Bytes of the content it was read from.
    len: u64,
}

/// What was last read of one file.
#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// Its last good content; `None` when it never parsed.
    last_good: Option<Good>,
    /// Why its current content could not be used, if it could not.
    problem: Option<Problem>,
    /// Refused for [`MAX_TOTAL_BYTES`]: read again, unchanged, once the others leave room.
    over_total: bool,
}

/// The manifests folder and the last good objects of each file. A load re-reads only the
/// files whose stamp changed, and in those parses only the documents (and `List` items) whose
/// bytes changed; the objects of the rest are shared (same `Arc`s) with the last snapshot,
/// which is how translation tells what changed. The files' objects are put together into one
/// snapshot incrementally (`gather.rs`): only the changed files' objects move.
#[derive(Debug)]
pub struct ManifestsDir {
    dir: PathBuf,
    files: BTreeMap<Arc<Path>, FileState>,
    gather: gather::Gather,
    loaded: bool,
    reuse: Reuse,
    bounds: Bounds,
    /// Bytes of every file's last good content: what the snapshot holds.
    held: u64,
    /// The files not read for the bound on their number, at the last read.
    left_out: LeftOut,
}

/// The stamp of `path` when it is a manifest file (by name, and a file), else `None`: one
/// `stat`.
fn manifest_stamp(path: &Path) -> Option<Stamp> {
    if !settle::is_manifest_name(path) {
        return None;
    }
    let md = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some(Stamp::of(Some(&md)))
}

/// `bytes` as said in a problem: MiB when whole.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
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
            "{source}: larger than {}; split it into several files",
            size(MAX_FILE_BYTES)
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        cannot(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// A file whose stamp differs from the last read: its stamp now, `None` when it is gone.
type Update = (PathBuf, Option<Stamp>);

impl ManifestsDir {
    /// A provider for this folder; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            gather: gather::Gather::default(),
            loaded: false,
            reuse: Reuse::default(),
            bounds: Bounds::default(),
            held: 0,
            left_out: None,
        }
    }

    /// A provider whose folder bounds are `files` and `bytes` instead of [`MAX_FILES`] and
    /// [`MAX_TOTAL_BYTES`] (tests).
    #[cfg(test)]
    fn with_bounds(dir: impl Into<PathBuf>, files: usize, bytes: u64) -> Self {
        let mut m = ManifestsDir::new(dir);
        m.bounds = Bounds { files, bytes };
        m
    }

    /// The manifest files of the folder, with their stamps, sorted.
    fn stamps(&self) -> Result<BTreeMap<PathBuf, Stamp>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| Error::Dir {
            path: self.dir.clone(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| manifest_stamp(&p).map(|st| (p, st)))
            .collect())
    }

    /// The files whose stamps in `now` (the whole folder) differ from the last read, and the
    /// new files left out for the bound on their number: the files read before stay, new ones
    /// are taken in name order while there is room.
    fn updates(&self, now: BTreeMap<PathBuf, Stamp>) -> (Vec<Update>, LeftOut) {
        let mut updates: Vec<Update> = self
            .files
            .keys()
            .filter(|p| !now.contains_key(p.as_ref()))
            .map(|p| (p.to_path_buf(), None))
            .collect();
        let mut room = self
            .bounds
            .files
            .saturating_sub(self.files.len() - updates.len());
        let mut left_out: LeftOut = None;
        for (p, st) in now {
            match self.files.get(p.as_path()) {
                // Unchanged; but one refused for the bytes held is tried again when it fits.
                Some(f)
                    if f.stamp == st
                        && !(f.over_total
                            && self.held - f.last_good.as_ref().map_or(0, |g| g.len) + st.len
                                <= self.bounds.bytes) => {}
                Some(_) => updates.push((p, Some(st))),
                None if room > 0 => {
                    room -= 1;
                    updates.push((p, Some(st)));
                }
                None => match &mut left_out {
                    Some((n, _)) => *n += 1,
                    None => left_out = Some((1, p)),
                },
            }
        }
        (updates, left_out)
    }

    /// Whether a file was added, removed or modified since the last [`ManifestsDir::load`].
    pub fn changed(&self) -> bool {
        match self.stamps() {
            Ok(now) => {
                let (updates, left_out) = self.updates(now);
                !self.loaded || !updates.is_empty() || left_out != self.left_out
            }
            Err(_) => true,
        }
    }

    /// What the last [`ManifestsDir::load`] parsed and reused, over the files it read again.
    pub fn reuse(&self) -> Reuse {
        self.reuse
    }

    /// [`ManifestsDir::load`] when a file was added, removed or modified since the last one.
    pub fn load_if_changed(&mut self) -> Result<Option<Snapshot>> {
        Ok(self.refresh(None)?.map(|s| (*s).clone()))
    }

    /// Reads the files added or changed since the last load into one snapshot with the
    /// objects of the others. A file that does not parse keeps its previous objects (if it had
    /// any) and is reported; an object defined twice is reported and the first kept.
    pub fn load(&mut self) -> Result<Snapshot> {
        let (updates, left_out) = self.updates(self.stamps()?);
        self.left_out = left_out;
        Ok((*self.apply(updates)).clone())
    }

    /// The new snapshot when a file was added, removed or modified since the last read, as
    /// [`ManifestsDir::load`] reads it, shared: it is what [`run`] publishes. With `touched`
    /// (the paths file events named since the last read), only those are looked at (one `stat`
    /// each), unless one of them is gone: then, as without `touched`, the whole folder is (so
    /// a folder that went away is an error, not a folder emptied). Other files are assumed
    /// unchanged: [`run`] looks at the whole folder every second besides, so a missed event
    /// cannot leave a change unread.
    pub fn refresh(&mut self, touched: Option<&[PathBuf]>) -> Result<Option<Arc<Snapshot>>> {
        let partial = touched.filter(|_| self.loaded).and_then(|paths| {
            let mut updates = Vec::with_capacity(paths.len());
            let mut added = 0;
            for p in paths {
                let Some(name) = p.file_name() else { continue };
                let p = self.dir.join(name);
                let now = manifest_stamp(&p);
                let was = self.files.get(p.as_path()).map(|f| f.stamp);
                if now != was {
                    // A file gone: the folder itself may be (see above).
                    now?;
                    added += usize::from(was.is_none());
                    updates.push((p, now));
                }
            }
            // New files beyond the bound on their number: which are read is the whole
            // folder's question (a file gone has sent every read there already).
            if self.files.len() + added > self.bounds.files {
                return None;
            }
            Some((updates, self.left_out.clone()))
        });
        let (updates, left_out) = match partial {
            Some(partial) => partial,
            None => self.updates(self.stamps()?),
        };
        if updates.is_empty() && self.loaded && left_out == self.left_out {
            return Ok(None);
        }
        self.left_out = left_out;
        Ok(Some(self.apply(updates)))
    }

    /// Reads the files of `updates` again (or drops them, when gone) and puts the folder's
    /// objects together.
    fn apply(&mut self, updates: Vec<Update>) -> Arc<Snapshot> {
        self.reuse = Reuse::default();
        for (path, stamp) in updates {
            let Some(stamp) = stamp else {
                if let Some((path, f)) = self.files.remove_entry(path.as_path()) {
                    self.held -= f.last_good.as_ref().map_or(0, |g| g.len);
                    self.gather.set(&path, None);
                }
                continue;
            };
            let path: Arc<Path> = match self.files.remove_entry(path.as_path()) {
                Some((p, f)) => {
                    let source = p.display().to_string();
                    let state = self.read_file(&p, &source, stamp, f.last_good);
                    self.files.insert(p.clone(), state);
                    p
                }
                None => {
                    let p: Arc<Path> = path.into();
                    let source = p.display().to_string();
                    let state = self.read_file(&p, &source, stamp, None);
                    self.files.insert(p.clone(), state);
                    p
                }
            };
            let f = &self.files[&path];
            if f.problem.is_none() {
                let objects = f.last_good.as_ref().map(|g| g.snapshot.clone());
                self.gather.set(&path, objects);
            }
        }
        self.loaded = true;
        let left_out = self.left_out.as_ref().map(|(n, first)| {
            let dir = self.dir.display().to_string();
            Problem::new(
                ObjectRef::new("File", "", &dir),
                format!(
                    "{dir}: more than {} manifest files; {n} added last are not read (the first by name: {}); remove files to make room",
                    self.bounds.files,
                    gather::file_name(first)
                ),
            )
        });
        let problems = self.files.values().filter_map(|f| f.problem.clone());
        self.gather.snapshot(problems.chain(left_out))
    }

    /// Reads one file: its new state, with `previous` (its last good content) kept when it
    /// does not parse or would take the folder beyond [`MAX_TOTAL_BYTES`].
    fn read_file(
        &mut self,
        path: &Path,
        source: &str,
        stamp: Stamp,
        previous: Option<Good>,
    ) -> FileState {
        // What the other files hold: this one's previous content is replaced or kept.
        let others = self.held - previous.as_ref().map_or(0, |g| g.len);
        let bound = self.bounds.bytes;
        let mut over_total = false;
        let read = read_bounded(path, source).and_then(|text| {
            let len = text.len() as u64;
            if others + len > bound {
                over_total = true;
                return Err(format!(
                    "{source}: with its {len} bytes the folder's manifest files would hold more than {}; not read",
                    size(bound)
                ));
            }
            parse::read(&text, source, previous.as_ref().map(|g| &g.kept))
                .map(|read| (read, len))
        });
        match read {
            Ok(((snapshot, kept, reuse), len)) => {
                self.reuse += reuse;
                self.held = others + len;
                FileState {
                    stamp,
                    last_good: Some(Good {
                        snapshot: Arc::new(snapshot),
                        kept,
                        len,
                    }),
                    problem: None,
                    over_total: false,
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
                        ObjectRef::new("File", "", source),
                        format!("{message}{kept}"),
                    )),
                    over_total,
                }
            }
        }
    }
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
    tx.send_replace(provider.refresh(None)?);

    let pause = || activity.lock().map(|a| a.pause()).unwrap_or(SETTLE);
    let mut tick = tokio::time::interval(period);
    loop {
        // After file events, only the files they named are looked at; at the periodic check,
        // the whole folder (some file systems do not notify; an event can be lost).
        let whole = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => false,
            _ = tick.tick() => true,
        };
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
        let touched = activity.lock().ok().and_then(|mut a| a.take());
        let started = Instant::now();
        match provider.refresh(touched.as_deref().filter(|_| !whole)) {
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
                // The snapshot before it comes back and is dropped: the provider updates it in
                // place at the next change once the rebuild let go of it too.
                tx.send_replace(Some(snap));
            }
            Err(err) => {
                tracing::error!(%err, "Cannot read the manifests folder; keeping the last objects")
            }
        }
    }
}

#[cfg(test)]
mod tests;
