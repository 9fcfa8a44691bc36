//! Span export off the request path: a bounded queue that a finished (sampled) span enters
//! without waiting (or is dropped from, and counted, when full), and one thread of its own that
//! sends the queue in batches to the OTLP exporter.
//!
//! An HTTP request's span enters as the few values it was made of ([`HttpRecord`]); the
//! export thread makes the OpenTelemetry span of it, a batch at a time. A span sampled at 1 %
//! runs code no other request runs, so on the request's thread it ran cold: about 140 us of CPU
//! per sampled request for 10,000 instructions, the SDK span's start, attributes and end
//! (issue 17). Made in batches on the export thread, the same work runs warm.
//!
//! The SDK's `BatchSpanProcessor` does the same but keeps its drop count to itself; the
//! proxy needs it as a metric, so that a slow or absent collector shows on `/metrics`.
//!
//! The export thread sleeps until there is something to send: it is woken by the first span
//! queued after it went idle and by a full batch, never per span, and runs no timer while the
//! queue is empty. The queue grows with what is queued (up to its bound) instead of being
//! allocated at its full size up front.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::HttpRecord;

/// How the queue is drained.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Spans held at most.
    pub queue_size: usize,
    /// Spans per export at most.
    pub batch_size: usize,
    /// Longest wait between the first queued span and its export.
    pub delay: Duration,
    /// Longest time one export may take.
    pub timeout: Duration,
}

enum Control {
    /// Export everything queued, then answer.
    Flush(std_mpsc::SyncSender<()>),
    /// Same, then stop.
    Shutdown(std_mpsc::SyncSender<()>),
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Flush(_) => "Flush",
            Control::Shutdown(_) => "Shutdown",
        })
    }
}

/// A finished span waiting for export.
#[derive(Debug)]
pub enum Finished {
    /// Made by the OpenTelemetry SDK (TCP connections).
    Sdk(Box<SpanData>),
    /// An HTTP request's span, still as the values it is made of.
    Http(Box<HttpRecord>),
}

impl Finished {
    fn into_span_data(self, scope: &InstrumentationScope) -> SpanData {
        match self {
            Finished::Sdk(s) => *s,
            Finished::Http(r) => r.into_span_data(scope),
        }
    }
}

/// What the request threads and the export thread share.
#[derive(Debug)]
struct Queue {
    spans: Mutex<VecDeque<Finished>>,
    /// Woken when the queue goes from empty to one span, and when it holds a full batch.
    wake: Notify,
    batching: Batching,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Finished>> {
        // A panic while holding the lock leaves a plain queue: still usable.
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Up to one batch, oldest first; a queue that grew large during a burst is given back
    /// down to one batch of room once it is drained.
    fn take_batch(&self) -> Vec<Finished> {
        let mut q = self.lock();
        let n = q.len().min(self.batching.batch_size);
        let batch: Vec<Finished> = q.drain(..n).collect();
        if q.is_empty() && q.capacity() > self.batching.batch_size {
            q.shrink_to(self.batching.batch_size);
        }
        batch
    }

    /// Queues `span` without waiting, or drops and counts it when the queue is full.
    fn push(&self, span: Finished) {
        let b = &self.batching;
        let mut q = self.lock();
        if q.len() >= b.queue_size {
            drop(q);
            crate::metrics::register()
                .spans_dropped
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        q.push_back(span);
        let n = q.len();
        drop(q);
        if n == 1 || n == b.batch_size {
            self.wake.notify_one();
        }
    }
}

/// Queues finished spans for export (cheap to clone).
#[derive(Debug, Clone)]
pub struct Sender(Arc<Queue>);

impl Sender {
    /// Queues an HTTP request's span (see [`Queue::push`]).
    pub fn send(&self, span: HttpRecord) {
        self.0.push(Finished::Http(Box::new(span)));
    }
}

/// The span processor: `on_end` only tries to enqueue.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: Arc<Queue>,
    control: mpsc::UnboundedSender<Control>,
}

impl QueueProcessor {
    /// Starts the export thread. `make_exporter` runs on that thread, inside its Tokio
    /// runtime (the gRPC client needs one); its error is returned here.
    pub fn start<E, F>(
        batching: Batching,
        resource: Resource,
        make_exporter: F,
    ) -> Result<QueueProcessor, String>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let batching = Batching {
            queue_size: batching.queue_size.max(1),
            batch_size: batching.batch_size.clamp(1, batching.queue_size.max(1)),
            ..batching
        };
        let queue = Arc::new(Queue {
            spans: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            batching,
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let shared = queue.clone();
        std::thread::Builder::new()
            .name("maille-trace-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("export runtime: {e}")));
                        return;
                    }
                };
                let exporter = rt.block_on(async { make_exporter() });
                let mut exporter = match exporter {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                rt.block_on(run(exporter, &shared, control_rx));
            })
            .map_err(|e| format!("export thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "export thread ended at start".to_string())??;
        Ok(QueueProcessor { queue, control })
    }

    /// Where HTTP request spans are queued, past the SDK.
    pub fn sender(&self) -> Sender {
        Sender(self.queue.clone())
    }

    fn ask(
        &self,
        make: fn(std_mpsc::SyncSender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.control
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.queue.push(Finished::Sdk(Box::new(span)));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

/// The export loop: sleeps until a span is queued, then until the batch is full or the delay
/// has passed, exports one batch, and again.
async fn run<E: SpanExporter>(
    exporter: E,
    queue: &Queue,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let b = queue.batching;
    let scope = InstrumentationScope::builder(super::TRACER_NAME).build();
    let mut failing = false;
    // When the oldest span still queued must be sent; `None` while nothing is queued.
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && queue.len() > 0 {
            deadline = Some(Instant::now() + b.delay);
        }
        let full = queue.len() >= b.batch_size;
        let due = deadline.is_some_and(|d| d <= Instant::now());
        if full || due {
            let batch = queue.take_batch();
            export(&exporter, &scope, batch, b.timeout, &mut failing).await;
            // What is left waits a new delay at most (it waited less than one so far).
            deadline = None;
            continue;
        }
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = control.recv() => {
                // Everything queued so far goes out before the answer.
                loop {
                    let batch = queue.take_batch();
                    if batch.is_empty() {
                        break;
                    }
                    export(&exporter, &scope, batch, b.timeout, &mut failing).await;
                }
                deadline = None;
                match c {
                    Some(Control::Flush(done)) => { let _ = done.send(()); }
                    Some(Control::Shutdown(done)) => {
                        let _ = exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            () = queue.wake.notified() => {}
            () = wait => {}
        }
    }
}

/// Sends `spans` and counts the outcome. A failure is logged once, when the export
/// starts failing, and again when it recovers: a down collector must not flood the log.
async fn export<E: SpanExporter>(
    exporter: &E,
    scope: &InstrumentationScope,
    spans: Vec<Finished>,
    timeout: Duration,
    failing: &mut bool,
) {
    if spans.is_empty() {
        return;
    }
    let n = spans.len() as u64;
    let spans: Vec<SpanData> = spans.into_iter().map(|s| s.into_span_data(scope)).collect();
    let result = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(r) => r,
        Err(_) => Err(OTelSdkError::Timeout(timeout)),
    };
    match result {
        Ok(()) => {
            crate::metrics::register().spans_exported.inc_by(n);
            if std::mem::take(failing) {
                tracing::info!("Span export works again");
            }
        }
        Err(e) => {
            crate::metrics::register()
                .spans_dropped
                .with_label_values(&["export_failed"])
                .inc_by(n);
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, spans = n, "Span export failed; spans dropped until it works");
            } else {
                tracing::debug!(error = %e, spans = n, "Span export failed");
            }
        }
    }
}
