//! Span export off the request path: a bounded queue that a finished span enters without
//! waiting (or is dropped from, and counted, when full), and one thread of its own that sends
//! the queue in batches to the OTLP exporter.
//!
//! The SDK's `BatchSpanProcessor` does the same but keeps its drop count to itself; the
//! proxy needs it as a metric, so that a slow or absent collector shows on `/metrics`.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// The span processor: `on_end` only tries to enqueue.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Flush(_) => "Flush",
            Control::Shutdown(_) => "Shutdown",
        })
    }
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
        let (spans, rx) = mpsc::channel(batching.queue_size.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
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
                rt.block_on(run(exporter, rx, control_rx, batching));
            })
            .map_err(|e| format!("export thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "export thread ended at start".to_string())??;
        Ok(QueueProcessor { spans, control })
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
        if self.spans.try_send(span).is_err() {
            crate::metrics::register()
                .spans_dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

/// The export loop: waits for a first span, gathers more until the batch is full or the delay
/// has passed, exports, and again.
async fn run<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    b: Batching,
) {
    let mut failing = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(b.batch_size);
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = control.recv() => {
                // Everything queued so far goes out before the answer.
                while let Ok(s) = spans.try_recv() {
                    batch.push(s);
                    if batch.len() >= b.batch_size {
                        export(&exporter, &mut batch, b.timeout, &mut failing).await;
                    }
                }
                export(&exporter, &mut batch, b.timeout, &mut failing).await;
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
            s = spans.recv() => match s {
                Some(s) => {
                    batch.push(s);
                    deadline.get_or_insert_with(|| Instant::now() + b.delay);
                    if batch.len() >= b.batch_size {
                        export(&exporter, &mut batch, b.timeout, &mut failing).await;
                        deadline = None;
                    }
                }
                None => {
                    export(&exporter, &mut batch, b.timeout, &mut failing).await;
                    return;
                }
            },
            () = wait => {
                export(&exporter, &mut batch, b.timeout, &mut failing).await;
                deadline = None;
            }
        }
    }
}

/// Sends `batch` (emptied) and counts the outcome. A failure is logged once, when the export
/// starts failing, and again when it recovers: a down collector must not flood the log.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::take(batch);
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
