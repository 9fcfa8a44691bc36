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

impl Fleet {
    /// Starts `n` proxies polling `url` (`http://127.0.0.1:PORT`) with this delivery.
    pub fn start(url: &str, n: usize, delivery: Delivery) -> anyhow::Result<Fleet> {
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
            let store = TableStore::new();
            let source = ControllerSource::new(url, store.clone())?
                .deltas(delivery == Delivery::Delta)
                .gzip(delivery != Delivery::Full);
            stores.push(store);
            let (tx, errors, resyncs) = (tx.clone(), errors.clone(), resyncs.clone());
            runtime.spawn(async move {
                let mut etag = None;
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
