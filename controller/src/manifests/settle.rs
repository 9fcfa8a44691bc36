//! When to read the folder after file events: soon after files that were replaced whole
//! (renamed in) or closed after writing; not while one is still open for writing; a pause
//! while one is gone (an editor's save can remove a file before writing it again).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

/// The pause after the last event when every manifest file touched is complete: gathers the
/// files of one `cp` or deploy into one read.
pub const QUIET: Duration = Duration::from_millis(2);

/// The pause after the last event while a manifest file is gone (removed, renamed away), or
/// being written where the watcher does not tell when a writer closes the file.
pub const SETTLE: Duration = Duration::from_millis(20);

/// The longest a read waits for events to stop or a writer to close its file: a file written
/// to without end is read anyway.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Whether the watcher reports a writer closing a file (inotify does).
const CLOSE_EVENTS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Paths remembered at most; past it the folder counts as unsettled until read.
const MAX_PATHS: usize = 4096;

/// Whether a path is a manifest by its name (`*.yaml`, `*.yml`, `*.json`).
pub fn is_manifest_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// What the file events since the last read say.
#[derive(Debug, Default)]
pub struct Activity {
    /// Manifest files created, truncated or written to and not closed since.
    writing: HashSet<PathBuf>,
    /// Manifest files removed or renamed away, and not back since.
    gone: HashSet<PathBuf>,
    /// Every manifest file an event named: what the next read looks at.
    touched: HashSet<PathBuf>,
    /// More paths than [`MAX_PATHS`], or an event whose files are not known (a watcher
    /// error, a lost event queue).
    overflow: bool,
}

/// What an event says of one manifest file.
enum State {
    Writing,
    Gone,
    Complete,
}

impl Activity {
    /// Takes in one event (or a watcher error). Returns whether it can change what the folder
    /// reads as: events on other files and opening or reading a file (the controller's own
    /// reads among them) do not.
    pub fn record(&mut self, event: &notify::Result<notify::Event>) -> bool {
        let event = match event {
            Ok(e) => e,
            Err(_) => {
                self.overflow = true;
                return true;
            }
        };
        if event.paths.is_empty() {
            // A lost queue (inotify's overflow) or a kind without paths: read after a pause.
            if matches!(event.kind, EventKind::Access(_)) {
                return false;
            }
            self.overflow = true;
            return true;
        }
        let mut relevant = false;
        for (i, path) in event.paths.iter().enumerate() {
            if !is_manifest_name(path) {
                continue;
            }
            let state = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => State::Complete,
                EventKind::Access(_) | EventKind::Create(CreateKind::Folder) => continue,
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => State::Writing,
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => State::Complete,
                // Both: the first path is where it came from, the second where it went.
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if i == 1 => State::Complete,
                EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => State::Gone,
                EventKind::Modify(ModifyKind::Metadata(_)) => State::Complete,
                _ => State::Writing,
            };
            relevant = true;
            self.writing.remove(path);
            self.gone.remove(path);
            if self.touched.len() < MAX_PATHS {
                self.touched.insert(path.clone());
            } else {
                self.overflow = true;
            }
            let set = match state {
                State::Complete => continue,
                State::Writing => &mut self.writing,
                State::Gone => &mut self.gone,
            };
            if set.len() < MAX_PATHS {
                set.insert(path.clone());
            } else {
                self.overflow = true;
            }
        }
        relevant
    }

    /// How long the folder must stay quiet before it is read (the wait is cut short by the
    /// next event, and never longer than [`MAX_WAIT`] in all).
    pub fn pause(&self) -> Duration {
        if CLOSE_EVENTS && !self.writing.is_empty() {
            MAX_WAIT
        } else if self.overflow || !self.gone.is_empty() || !self.writing.is_empty() {
            SETTLE
        } else {
            QUIET
        }
    }

    /// Forgets the events so far (the folder is about to be read) and gives the files they
    /// named; `None` when that is not known (a lost event, too many files): read everything.
    pub fn take(&mut self) -> Option<Vec<PathBuf>> {
        self.writing.clear();
        self.gone.clear();
        let touched = self.touched.drain().collect();
        (!std::mem::take(&mut self.overflow)).then_some(touched)
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{DataChange, RemoveKind};
    use notify::Event;

    use super::*;

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn renamed_in_is_quiet_written_is_settled_until_closed() {
        let mut a = Activity::default();
        // A deploy tool: written under a temporary name, renamed over the manifest.
        assert!(!a.record(&ev(EventKind::Create(CreateKind::File), &["/d/.tmp123"])));
        assert!(a.record(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/d/.tmp123", "/d/a.yaml"]
        )));
        assert_eq!(a.pause(), QUIET);
        // The controller's own read opens the file: nothing to do.
        assert!(!a.record(&ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            &["/d/a.yaml"]
        )));
        // Written in place: wait until closed.
        a.record(&ev(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/d/b.json"],
        ));
        assert_eq!(a.pause(), if CLOSE_EVENTS { MAX_WAIT } else { SETTLE });
        a.record(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/d/b.json"],
        ));
        assert_eq!(a.pause(), QUIET);
        // An editor's save that moves the file away first: settle until it is back.
        a.record(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/d/a.yaml"],
        ));
        a.record(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/d/a.yaml", "/d/a.yaml~"],
        ));
        assert_eq!(a.pause(), SETTLE);
        a.record(&ev(EventKind::Create(CreateKind::File), &["/d/a.yaml"]));
        assert_ne!(a.pause(), QUIET);
        a.record(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/d/a.yaml"],
        ));
        assert_eq!(a.pause(), QUIET);
        a.record(&ev(EventKind::Remove(RemoveKind::File), &["/d/c.yml"]));
        assert_eq!(a.pause(), SETTLE);
        let mut touched = a.take().expect("no event lost");
        touched.sort();
        let expect: Vec<PathBuf> = ["/d/a.yaml", "/d/b.json", "/d/c.yml"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(touched, expect, "the manifests the events named");
        assert_eq!(a.pause(), QUIET);
        assert_eq!(a.take(), Some(vec![]));
        // A watcher error or a lost queue: settle, and read the whole folder.
        assert!(a.record(&Err(notify::Error::generic("lost"))));
        assert_eq!(a.pause(), SETTLE);
        a.record(&ev(EventKind::Remove(RemoveKind::File), &["/d/c.yml"]));
        assert_eq!(a.take(), None);
        assert_eq!(a.take(), Some(vec![]));
    }
}
