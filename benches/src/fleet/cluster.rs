//! The manifests folder the controller reads: the objects of [`crate::objects`] written one
//! file per namespace and kind (`services-ns-K.json`, `endpoints-ns-K.json`, each a `List`),
//! and the churn: one EndpointSlice changed per step, its namespace's file rewritten
//! atomically (written in a staging folder beside, then renamed over the old one: the
//! controller never reads half a file, and sees one file event at the moment measured).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::fixtures::{self, NAMESPACES};
use crate::objects;

/// The objects in the folder and which endpoint of each service is not ready now.
pub struct Cluster {
    dir: PathBuf,
    services: usize,
    endpoints: usize,
    /// Per service: its first endpoint is not ready.
    first_not_ready: Vec<bool>,
    /// Changes made so far.
    changes: usize,
}

/// One change of the churn: what a proxy's table shows once it has it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The service whose EndpointSlice changed.
    pub service: usize,
    /// Its mesh host name.
    pub host: String,
    /// How many of its endpoints are ready after the change.
    pub ready: usize,
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// A file written next to the folder (no file event in it), renamed into it by
/// [`Pending::publish`].
#[must_use = "the change is only seen once published"]
pub struct Pending {
    staged: PathBuf,
    path: PathBuf,
}

impl Pending {
    /// Renames the staged file over the folder's: the moment the change happens.
    pub fn publish(self) -> std::io::Result<()> {
        std::fs::rename(&self.staged, &self.path)
    }
}

/// The staging folder of `dir`: a sibling, on the same file system, that nobody watches.
fn staging(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".staging");
    dir.with_file_name(name)
}

fn stage(dir: &Path, name: &str, value: &Value) -> std::io::Result<Pending> {
    let staged = staging(dir).join(name);
    std::fs::write(&staged, serde_json::to_vec(value)?)?;
    Ok(Pending {
        staged,
        path: dir.join(name),
    })
}

impl Cluster {
    /// Writes `services` Services and their EndpointSlices (`endpoints` ready endpoints each)
    /// into `dir`, which is created and must hold no other manifests.
    pub fn write(dir: &Path, services: usize, endpoints: usize) -> std::io::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(staging(dir))?;
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            services,
            endpoints,
            first_not_ready: vec![false; services],
            changes: 0,
        };
        for ns in 0..NAMESPACES.min(services) {
            let items = (ns..services)
                .step_by(NAMESPACES)
                .map(|i| serde_json::to_value(objects::service(i)))
                .collect::<Result<Vec<_>, _>>()?;
            stage(dir, &format!("services-ns-{ns}.json"), &list(items))?.publish()?;
            cluster.stage_endpoints(ns)?.publish()?;
        }
        Ok(cluster)
    }

    fn stage_endpoints(&self, ns: usize) -> std::io::Result<Pending> {
        let items = (ns..self.services)
            .step_by(NAMESPACES)
            .map(|i| {
                let not_ready = usize::from(self.first_not_ready[i]);
                serde_json::to_value(objects::endpoint_slice(i, self.endpoints, not_ready, 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        stage(&self.dir, &format!("endpoints-ns-{ns}.json"), &list(items))
    }

    /// The next change: the first endpoint of an HTTP service turns not ready (or ready again,
    /// when it was not), spread over the services so that consecutive changes touch different
    /// namespaces (files). Stages that service's namespace file: the change happens when the
    /// returned [`Pending`] is published.
    pub fn change(&mut self) -> std::io::Result<(Change, Pending)> {
        // Namespace after namespace; within one, a slot that moves on at each round.
        let spaces = NAMESPACES.min(self.services);
        let ns = self.changes % spaces;
        let in_ns = (self.services - ns).div_ceil(NAMESPACES);
        let mut slot = (self.changes / spaces * 7 + 3) % in_ns;
        let mut service = ns + slot * NAMESPACES;
        for _ in 0..in_ns {
            if fixtures::tcp_slot(service).is_none() {
                break;
            }
            slot = (slot + 1) % in_ns;
            service = ns + slot * NAMESPACES;
        }
        self.changes += 1;
        self.first_not_ready[service] = !self.first_not_ready[service];
        let pending = self.stage_endpoints(service % NAMESPACES)?;
        let change = Change {
            service,
            host: fixtures::host(service),
            ready: self.endpoints - usize::from(self.first_not_ready[service]),
        };
        Ok((change, pending))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the folder and its staging folder.
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(staging(dir));
    }
}

#[cfg(test)]
mod tests {
    use maille_controller::manifests::ManifestsDir;
    use maille_controller::Snapshot;

    use super::*;

    fn slice_of(snapshot: &Snapshot, service: usize) -> usize {
        let name = format!("{}-abcde", fixtures::name(service));
        let slice = snapshot
            .endpoint_slices
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap();
        slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count()
    }

    #[test]
    fn the_folder_reads_back_as_the_objects_and_a_change_flips_one_endpoint() {
        let dir = std::env::temp_dir().join(format!("fleet-cluster-{}", std::process::id()));
        Cluster::remove(&dir);
        let mut cluster = Cluster::write(&dir, 120, 3).unwrap();
        let mut provider = ManifestsDir::new(&dir);
        let snap = provider.load().unwrap();
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        assert_eq!(
            (snap.services.len(), snap.endpoint_slices.len()),
            (120, 120)
        );

        let (first, pending) = cluster.change().unwrap();
        assert!(!provider.changed(), "staged, not published yet");
        pending.publish().unwrap();
        assert!(fixtures::tcp_slot(first.service).is_none());
        assert_eq!(first.ready, 2);
        assert!(provider.changed());
        let snap = provider.load().unwrap();
        assert_eq!(slice_of(&snap, first.service), 2);
        let (second, pending) = cluster.change().unwrap();
        pending.publish().unwrap();
        assert_ne!(second.service % NAMESPACES, first.service % NAMESPACES);
        assert_eq!(slice_of(&provider.load().unwrap(), second.service), 2);
        // Nothing else is in the folder for the controller to see.
        let names: Vec<String> = std::fs::read_dir(cluster.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
        assert_eq!(names.len(), 2 * NAMESPACES);
        Cluster::remove(&dir);
        assert!(!staging(&dir).exists());
    }
}
