//! Fixtures of the cluster DNS tests (unit tests of `dns` and the `prepare`/`cleanup` tests of
//! the binary): CoreDNS and kube-dns Deployments, their ConfigMaps, the Corefiles of
//! `src/dns/testdata`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, KeyToPath, PodSpec, PodTemplateSpec, Service,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;

use super::FakeApi;
use crate::dns::{AKS_CUSTOM_CONFIGMAP, COREFILE_KEY, DNS_NAMESPACE as KS, RESTART_ANNOTATION};

/// A file of `controller/src/dns/testdata` (Corefiles as CoreDNS versions ship them).
pub fn testdata(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/dns/testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metadata with a namespace, a name and labels (none when `labels` is empty).
pub fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..Default::default()
    }
}

/// A volume of ConfigMap `configmap` (only `key` of it, when given); AKS's
/// `coredns-custom` optional, as AKS mounts it.
pub fn config_volume(name: &str, configmap: &str, key: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.into(),
            items: key.map(|k| {
                vec![KeyToPath {
                    key: k.into(),
                    path: k.into(),
                    ..Default::default()
                }]
            }),
            optional: (configmap == AKS_CUSTOM_CONFIGMAP).then_some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A cluster DNS Deployment (`k8s-app=kube-dns`) in kube-system: `containers` as (name, image),
/// each mounting every volume where CoreDNS images expect it.
pub fn deployment(name: &str, containers: &[(&str, &str)], volumes: Vec<Volume>) -> Deployment {
    Deployment {
        metadata: meta(KS, name, &[("k8s-app", "kube-dns")]),
        spec: Some(DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(meta(KS, "", &[("k8s-app", "kube-dns")])),
                spec: Some(PodSpec {
                    // Each volume mounted where CoreDNS images expect it: the Corefile's in
                    // /etc/coredns, AKS's coredns-custom in /etc/coredns/custom.
                    containers: containers
                        .iter()
                        .map(|(n, image)| Container {
                            name: n.to_string(),
                            image: Some(image.to_string()),
                            volume_mounts: Some(
                                volumes
                                    .iter()
                                    .map(|v| VolumeMount {
                                        name: v.name.clone(),
                                        mount_path: match &v.config_map {
                                            Some(cm) if cm.name == AKS_CUSTOM_CONFIGMAP => {
                                                "/etc/coredns/custom".into()
                                            }
                                            _ => "/etc/coredns".into(),
                                        },
                                        ..Default::default()
                                    })
                                    .collect(),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A kubeadm-style CoreDNS Deployment reading its Corefile from ConfigMap `configmap`.
pub fn coredns(image: &str, configmap: &str) -> Deployment {
    deployment(
        "coredns",
        &[("coredns", image)],
        vec![config_volume(
            "config-volume",
            configmap,
            Some(COREFILE_KEY),
        )],
    )
}

/// A ConfigMap in kube-system.
pub fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta(KS, name, &[]),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A Service with a cluster IP.
pub fn service(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Service {
    Service {
        metadata: meta(ns, name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Corefile held by ConfigMap kube-system/`name`.
pub fn corefile(api: &FakeApi, name: &str) -> String {
    let cm: ConfigMap = api.get(KS, name).expect("corefile configmap");
    cm.data.unwrap()[COREFILE_KEY].clone()
}

/// The annotation `prepare` sets on the CoreDNS pod template to roll the pods, if any.
pub fn restart_annotation(api: &FakeApi) -> Option<String> {
    let d: Deployment = api.get(KS, "coredns").unwrap();
    d.spec?
        .template
        .metadata?
        .annotations?
        .get(RESTART_ANNOTATION)
        .cloned()
}
