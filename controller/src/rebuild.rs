//! The rebuild loop: every new snapshot from a provider is translated, published to the API
//! and handed to the cluster writer. Snapshots arrive through a `watch` channel, so a burst of
//! changes coalesces into one rebuild of the latest objects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use config_model::TrafficType;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alloc::PortAllocator;
use crate::api::ApiState;
use crate::metrics;
use crate::problem::Problem;
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::translate::{Translation, Translator};

/// Translation state kept between rebuilds.
pub struct Rebuilder {
    settings: Settings,
    alloc: PortAllocator,
    /// Stage results kept between rebuilds: a change re-translates only what it touches.
    translator: Translator,
    api: Arc<ApiState>,
    out: watch::Sender<Option<Arc<Translation>>>,
    reported: BTreeSet<Problem>,
    /// The last translation, as published.
    last: Option<Arc<Translation>>,
    /// Rebuilds that put a table together (not those that found nothing to redo).
    translations: u64,
    /// Kubernetes provider: TCP/UDP ports come from the shadow services of this mesh namespace
    /// at every rebuild, not from this replica's memory.
    ports_from_shadows: Option<String>,
}

impl Rebuilder {
    /// A rebuilder publishing to `api`; translations are also sent on `out` (for the cluster
    /// writer), after the table is published.
    pub fn new(
        settings: Settings,
        api: Arc<ApiState>,
        out: watch::Sender<Option<Arc<Translation>>>,
    ) -> Self {
        let alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
        Rebuilder {
            translator: Translator::new(settings.clone()),
            settings,
            alloc,
            api,
            out,
            reported: BTreeSet::new(),
            last: None,
            translations: 0,
            ports_from_shadows: None,
        }
    }

    /// Takes the TCP/UDP port of each service port from the shadow services in
    /// `mesh_namespace` (what the leader wrote) at every rebuild; a service port without one yet
    /// gets the lowest free port. The ports are then a function of the cluster's objects, the
    /// same on every controller replica.
    pub fn with_ports_from_shadows(mut self, mesh_namespace: &str) -> Self {
        self.ports_from_shadows = Some(mesh_namespace.to_string());
        self
    }

    /// The port allocator, to seed it with the allocations found in the cluster before the
    /// first rebuild.
    pub fn allocator(&mut self) -> &mut PortAllocator {
        &mut self.alloc
    }

    /// What the last rebuild translated again.
    pub fn work(&self) -> crate::translate::Work {
        self.translator.work()
    }

    /// Rebuilds so far that put a table together again (the others found nothing to redo).
    pub fn translations(&self) -> u64 {
        self.translations
    }

    /// Translates, publishes, and returns the translation.
    pub fn rebuild(&mut self, snapshot: &Snapshot) -> Arc<Translation> {
        let m = metrics::register();
        let start = Instant::now();
        if let Some(mesh) = &self.ports_from_shadows {
            self.alloc = PortAllocator::new(self.settings.tcp_ports, self.settings.udp_ports);
            let mut shadows: Vec<&k8s_openapi::api::core::v1::Service> = snapshot
                .services
                .iter()
                .map(Arc::as_ref)
                .filter(|s| crate::kubernetes::is_shadow(s, mesh))
                .collect();
            // Two shadows claiming one port: the first by name keeps it, on every replica.
            shadows.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            crate::kubernetes::seed_from_shadows(shadows, &mut self.alloc, &self.settings);
        }
        for (kind, n) in snapshot.counts() {
            m.objects_watched.with_label_values(&[kind]).set(n as i64);
        }
        let mut t = match self
            .translator
            .translate_if_changed(snapshot, &mut self.alloc)
        {
            Some(t) => t,
            None => {
                // Nothing translation reads changed: the table, its version and the rows
                // stay as published.
                if let Some(last) = &self.last {
                    m.rebuild_duration.observe(start.elapsed().as_secs_f64());
                    m.rebuilds.inc();
                    tracing::debug!(
                        elapsed_us = start.elapsed().as_micros() as u64,
                        "Nothing to rebuild"
                    );
                    return last.clone();
                }
                self.translator.translate(snapshot, &mut self.alloc)
            }
        };
        self.translations += 1;
        m.translations.inc();
        let version = self.api.publish_translation(&t, snapshot.revision);
        t.table.version = version;
        m.rebuild_duration.observe(start.elapsed().as_secs_f64());
        m.rebuilds.inc();
        for tt in [TrafficType::Http, TrafficType::Tcp, TrafficType::Udp] {
            let ports = t
                .table
                .services
                .iter()
                .filter(|s| s.traffic_type == tt)
                .count();
            m.services_meshed
                .with_label_values(&[tt.as_str()])
                .set(ports as i64);
        }
        let faulty: BTreeSet<&crate::problem::ObjectRef> =
            t.problems.iter().map(|p| &p.object).collect();
        m.service_errors.set(faulty.len() as i64);

        // Log each problem once, when it appears, rather than at every rebuild.
        let now: BTreeSet<Problem> = t.problems.iter().cloned().collect();
        for p in now.difference(&self.reported) {
            tracing::warn!(object = %p.object, "{}", p.message);
        }
        for p in self.reported.difference(&now) {
            tracing::info!(object = %p.object, "Problem resolved: {}", p.message);
        }
        self.reported = now;
        tracing::debug!(
            version,
            services = t.table.services.len(),
            problems = t.problems.len(),
            elapsed_ms = start.elapsed().as_millis() as u64,
            "Table rebuilt"
        );
        let t = Arc::new(t);
        self.last = Some(t.clone());
        self.out.send_replace(Some(t.clone()));
        t
    }

    /// Rebuilds on every snapshot until `shutdown` or until the provider goes away. Marks the
    /// API ready after the first rebuild.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let snap = snapshots.borrow_and_update().clone();
            if let Some(snap) = snap {
                self.rebuild(&snap);
                self.api.set_ready();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = snapshots.changed() => if r.is_err() { return },
            }
        }
    }
}
