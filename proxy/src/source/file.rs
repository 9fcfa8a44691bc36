//! A table from a JSON file, reloaded when the file changes (checked every
//! [`POLL_INTERVAL`] by modification time and size, then by content).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::store::TableStore;

/// How often the file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches one file and swaps in each new valid table it holds.
pub struct FileSource {
    path: PathBuf,
    store: Arc<TableStore>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// What the watcher saw last.
#[derive(Default)]
struct Seen {
    stamp: Option<Stamp>,
    content: Option<Vec<u8>>,
    unreadable: bool,
}

impl Seen {
    /// The file cannot be read (now): warns once until it can be again, and forgets its stamp
    /// so that the next poll reads it afresh. The current table stays.
    fn cannot_read(&mut self, origin: &str, e: &std::io::Error) {
        if !self.unreadable {
            tracing::warn!(path = %origin, error = %e, "Cannot read table file; keeping the current table");
            self.unreadable = true;
        }
        self.stamp = None;
    }
}

impl FileSource {
    /// A source reading `path` into `store`.
    pub fn new(path: PathBuf, store: Arc<TableStore>) -> Self {
        FileSource { path, store }
    }

    /// Reads the file if it changed since last time, and applies it.
    async fn check(&self, seen: &mut Seen) {
        let origin = self.path.display().to_string();
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) => return seen.cannot_read(&origin, &e),
        };
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        // Two writes of the same size within the file system's timestamp granularity leave
        // the same stamp: while the file is fresh, compare its content anyway.
        let fresh = stamp
            .modified
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age < Duration::from_secs(2));
        if seen.stamp == Some(stamp) && !fresh {
            return;
        }
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => return seen.cannot_read(&origin, &e),
        };
        seen.unreadable = false;
        seen.stamp = Some(stamp);
        if seen.content.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        // A refused table is remembered too, so that it is not refused again every poll.
        let _ = super::apply_json(&self.store, &bytes, &origin);
        seen.content = Some(bytes);
    }
}

#[async_trait]
impl BackgroundService for FileSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = Seen::default();
        loop {
            self.check(&mut seen).await;
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, table};

    use super::*;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_last_good_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.json");
        let write = |v: u64, ep: &str| {
            let spec = table(v, vec![http("a", "web", 5000, &[ep])]);
            std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        };
        let store = TableStore::new();
        let src = FileSource::new(path.clone(), store.clone());
        let mut seen = Seen::default();
        src.check(&mut seen).await;
        assert!(!store.is_ready(), "no file yet");

        write(1, "10.0.0.1:80");
        src.check(&mut seen).await;
        assert_eq!(store.load().version, 1);

        write(2, "not-an-address");
        src.check(&mut seen).await;
        assert_eq!(store.load().version, 1, "bad table refused");

        write(3, "10.0.0.3:80");
        src.check(&mut seen).await;
        assert_eq!(store.load().version, 3);
        let t = store.load();
        let svc = &t[t.http_route(5000, "web.a.maille.mesh").unwrap()];
        assert_eq!(svc.endpoints[0].addr.to_string(), "10.0.0.3:80");
    }
}
