//! Simulated proxies: each a [`TableStore`] fed by the proxy's own controller client
//! ([`ControllerSource::poll_once`]: the same request, body bounds, gzip, delta application
//! and validation as `maille-proxy`), polling again at once after every answer as the proxy's
//! loop does, and reporting each table it applies. They run on a runtime of their own, whose
//! threads are named [`THREAD_NAME`] so that their CPU is told apart from the controller's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maille_proxy::source::controller::{ControllerSource, Poll};
use maille_proxy::TableStore;

use super::Delivery;

/// Name of the simulated proxies' threads (at most 15 bytes: Linux cuts thread names there).
pub const THREAD_NAME: &str = "fleet-sim";

/// A table applied by a simulated proxy.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    /// Which proxy.
    pub proxy: usize,
    /// The version it now holds.
    pub version: u64,
    /// When `poll_once` returned with it.
    pub at: Instant,
}

/// N simulated proxies; dropping it stops them and closes their connections.
pub struct Fleet {
    runtime: Option<tokio::runtime::Runtime>,
    /// Each proxy's table.
    pub stores: Vec<Arc<TableStore>>,
    /// Every applied table, as it happens.
    pub applied: mpsc::Receiver<Applied>,
    /// Failed polls (transport, status, refusal), all proxies together.
    pub errors: Arc<AtomicU64>,
    /// Deltas that did not fit the table held (each costs a full table).
    pub resyncs: Arc<AtomicU64>,
}

/// A first table fetched once, to seed many simulated proxies with
/// ([`Fleet::start_seeded`]): the store that applied it, its ETag and the controller process
/// it came from.
pub struct Seed {
    store: Arc<TableStore>,
    etag: Option<String>,
    origin: Option<http::HeaderValue>,
}

impl Seed {
    /// Fetches the table `url` serves with this delivery, as one simulated proxy's first poll.
    pub fn fetch(url: &str, delivery: Delivery) -> anyhow::Result<Seed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = TableStore::new();
        let source = source(url, store.clone(), delivery)?;
        let mut etag = None;
        let polled = runtime.block_on(source.poll_once(&mut etag))?;
        anyhow::ensure!(
            matches!(polled, Poll::Swapped(_)),
            "the seed's first poll brought {polled:?}, not a table"
        );
        Ok(Seed {
            store,
            etag,
            origin: source.origin(),
        })
    }

    /// The version of the seed's table.
    pub fn version(&self) -> u64 {
        self.store.load().version
    }
}

/// A simulated proxy's controller client, as `maille-proxy` makes it for this delivery.
fn source(
    url: &str,
    store: Arc<TableStore>,
    delivery: Delivery,
) -> anyhow::Result<ControllerSource> {
    Ok(ControllerSource::new(url, store)?
        .deltas(delivery == Delivery::Delta)
        .gzip(delivery != Delivery::Full))
}

impl Fleet {
    /// Starts `n` proxies polling `url` (`http://127.0.0.1:PORT`) with this delivery, each
    /// fetching the first table itself.
    pub fn start(url: &str, n: usize, delivery: Delivery) -> anyhow::Result<Fleet> {
        Fleet::spawn(url, n, delivery, None)
    }

    /// Starts `n` proxies that hold `seed`'s table already ([`TableStore::seeded_from`]: the
    /// same decoded and compiled table, not a copy) and ask the controller what changed since,
    /// as a proxy that had fetched it itself would. Each applies every later change on its
    /// own and holds only what the changes make new.
    pub fn start_seeded(
        url: &str,
        n: usize,
        delivery: Delivery,
        seed: &Seed,
    ) -> anyhow::Result<Fleet> {
        Fleet::spawn(url, n, delivery, Some(seed))
    }

    fn spawn(
        url: &str,
        n: usize,
        delivery: Delivery,
        seed: Option<&Seed>,
    ) -> anyhow::Result<Fleet> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(THREAD_NAME)
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (tx, applied) = mpsc::channel();
        let errors = Arc::new(AtomicU64::new(0));
        let resyncs = Arc::new(AtomicU64::new(0));
        let mut stores = Vec::with_capacity(n);
        for proxy in 0..n {
            let (store, mut etag, source) = match seed {
                Some(seed) => {
                    let store = TableStore::seeded_from(&seed.store);
                    let source =
                        source(url, store.clone(), delivery)?.with_origin(seed.origin.clone());
                    (store, seed.etag.clone(), source)
                }
                None => {
                    let store = TableStore::new();
                    (store.clone(), None, source(url, store, delivery)?)
                }
            };
            stores.push(store);
            let (tx, errors, resyncs) = (tx.clone(), errors.clone(), resyncs.clone());
            runtime.spawn(async move {
                loop {
                    match source.poll_once(&mut etag).await {
                        Ok(Poll::Swapped(version) | Poll::Delta(version)) => {
                            let at = Instant::now();
                            if tx.send(Applied { proxy, version, at }).is_err() {
                                return;
                            }
                        }
                        Ok(Poll::Resync) => {
                            resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Poll::Unchanged | Poll::Older(_)) => {}
                        Err(_) => {
                            // The proxy backs off from 100 ms; so does the simulation.
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        Ok(Fleet {
            runtime: Some(runtime),
            stores,
            applied,
            errors,
            resyncs,
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
