//! Following the mesh CA where it is kept, so that each step of a root rotation takes effect
//! without a restart: the CA Secret (a watch on that one object, by name) or the files of the
//! identity folder (notifications, and a check every second behind them). Each new content is
//! offered to the service once ([`Service::offer_ca`]): a valid CA signs from then on, its
//! roots are served and published, the identity listener's certificate is re-issued; an
//! invalid one is refused with the reason and the CA held stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ca::{read_bounded, Ca, CA_CERT_FILE, CA_KEY_FILE};
use super::secret::{self, SecretRef};
use super::Service;

/// First wait after a failed watch of the Secret; it doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to watch the Secret.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Interval of the identity folder's check when no notification comes.
pub const FOLDER_CHECK: Duration = Duration::from_secs(1);
/// Time a burst of writes to the identity folder (the certificate, then the key) may take
/// before the files are read.
pub const FOLDER_SETTLE: Duration = Duration::from_millis(200);

/// Watches the CA Secret `at` until `shutdown` and offers each new content to `service`. A
/// watch that expires (`410 Gone`) relists at once; other failures retry with a growing delay
/// and are logged once each. A deleted Secret is logged; the CA held keeps signing.
pub async fn follow_secret(
    service: Arc<Service>,
    client: kube::Client,
    at: SecretRef,
    shutdown: CancellationToken,
) {
    let origin = format!("Secret {}/{}", at.namespace, at.name);
    let api: Api<Secret> = Api::namespaced(client, &at.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
    let mut stream = std::pin::pin!(watcher(api, config));
    let mut last = None;
    let mut delay = RETRY_MIN;
    let mut failing: Option<String> = None;
    let mut expired = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => ev,
        };
        let err = match ev {
            None => return,
            Some(Ok(ev)) => {
                (delay, expired) = (RETRY_MIN, false);
                if failing.take().is_some() {
                    tracing::info!(secret = %origin, "Watch of the mesh CA Secret recovered");
                }
                match ev {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        let content = secret::content(&s);
                        if last.as_ref() != Some(&content) {
                            last = Some(content);
                            service.offer_ca(secret::from_secret(&s, &origin), &origin);
                        }
                    }
                    watcher::Event::Delete(_) => {
                        last = None;
                        let next = if at.create {
                            "make a new CA, whose root no proxy trusts yet"
                        } else {
                            "find no CA and issue no certificate"
                        };
                        tracing::warn!(secret = %origin, "The mesh CA Secret was deleted: the CA held keeps signing, but a controller starting now would {next}");
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                continue;
            }
            Some(Err(err)) => err,
        };
        if crate::kubernetes::classify(&err) == crate::kubernetes::Failure::Expired && !expired {
            // The resume point was compacted: the watcher relists at its next poll, now.
            expired = true;
            tracing::debug!(secret = %origin, "Watch of the mesh CA Secret expired (410 Gone); relisting");
            continue;
        }
        let text = err.to_string();
        if failing.as_ref() != Some(&text) {
            tracing::warn!(secret = %origin, error = %text, retry_in = ?delay, "Watch of the mesh CA Secret failed; the CA held stays and changes to the Secret wait for the watch");
            failing = Some(text);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Watches `ca.crt` and `ca.key` of the identity folder `dir` until `shutdown` and offers each
/// new content to `service` (the folder's other files are not read again). Returns at once,
/// with the error, when the folder cannot be watched; the check every [`FOLDER_CHECK`] then
/// still runs.
pub async fn follow_dir(service: Arc<Service>, dir: PathBuf, shutdown: CancellationToken) {
    let origin = dir.display().to_string();
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            w.notify_one();
        }
    })
    .and_then(|mut watcher| {
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %origin, error = %e, "Identity folder not watched; its CA files are checked every second");
            None
        }
    };
    let read = || [CA_CERT_FILE, CA_KEY_FILE].map(|f| read_bounded(&dir.join(f)).ok());
    // Nothing seen yet: the first check offers the files as they are (the CA held when they
    // did not change since the start), so that a change made since is not missed.
    let mut last = [None, None];
    let mut tick = tokio::time::interval(FOLDER_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => tokio::time::sleep(FOLDER_SETTLE).await,
            _ = tick.tick() => {}
        }
        let now = read();
        if now == last {
            continue;
        }
        last = now;
        service.offer_ca(Ca::read_dir(&dir).map_err(|e| e.to_string()), &origin);
    }
}
