//! `prepare` and `cleanup` against the fake API server, one test per case of issue 7.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};

use super::version::Version;
use super::*;
use crate::kubernetes::client as kube_client;
use crate::naming::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::testing::dns::{
    config_volume, configmap, coredns, corefile, deployment, restart_annotation, service, testdata,
};
use crate::testing::FakeApi;

const KS: &str = DNS_NAMESPACE;

fn opts() -> DnsOptions {
    DnsOptions::default()
}

/// prepare, prepare again, cleanup on a kubeadm-style CoreDNS of one version family.
async fn corefile_cycle(image: &str, input: &str, golden: &str, family_version: Version) {
    let api = FakeApi::new();
    let original = testdata(input);
    api.insert(&coredns(image, "coredns"));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));

    let done = prepare(api.client(), &opts()).await.unwrap();
    assert_eq!(
        done,
        Prepared {
            target: Target::Corefile {
                configmap: "coredns".into(),
                version: family_version
            },
            changed: true,
            restarted: true,
            note: None
        }
    );
    assert_eq!(corefile(&api, "coredns"), testdata(golden), "{image}");
    assert_eq!(
        api.writes(),
        [
            "PUT configmaps kube-system/coredns",
            "PATCH deployments kube-system/coredns"
        ]
    );
    let hash = restart_annotation(&api).expect("pods rolled by annotation");

    // Idempotent: nothing written, no restart.
    api.clear_writes();
    let again = prepare(api.client(), &opts()).await.unwrap();
    assert!(!again.changed && !again.restarted);
    assert_eq!(api.writes(), Vec::<String>::new());
    assert_eq!(restart_annotation(&api), Some(hash));

    // Cleanup gives back the original byte for byte and the Deployment as it was.
    let cleaned = cleanup(api.client(), &opts()).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), original, "{image}");
    assert_eq!(restart_annotation(&api), None);
    assert!(cleaned.restarted);
    assert_eq!(cleaned.configmaps, ["kube-system/coredns"]);
}

#[tokio::test]
async fn coredns_1_6_gets_upstream() {
    corefile_cycle(
        "k8s.gcr.io/coredns:1.6.7",
        "coredns-1.6.in.Corefile",
        "coredns-1.6.out.Corefile",
        Version::new(1, 6, 7),
    )
    .await;
}

#[tokio::test]
async fn coredns_1_7_has_no_upstream() {
    corefile_cycle(
        "k8s.gcr.io/coredns:1.7.0",
        "coredns-1.7.in.Corefile",
        "coredns-1.7.out.Corefile",
        Version::new(1, 7, 0),
    )
    .await;
}

#[tokio::test]
async fn coredns_1_11_style_corefile() {
    corefile_cycle(
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "coredns-1.11.in.Corefile",
        "coredns-1.11.out.Corefile",
        Version::new(1, 11, 3),
    )
    .await;
}

#[tokio::test]
async fn corefile_configmap_is_the_one_the_deployment_mounts() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.11.in.Corefile");
    api.insert(&coredns(
        "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/coredns:v1.11.1-eksbuild.4",
        "coredns-config",
    ));
    // A decoy with the usual name must stay untouched.
    api.insert(&configmap("coredns", &[(COREFILE_KEY, ".:53 {\n}\n")]));
    api.insert(&configmap("coredns-config", &[(COREFILE_KEY, &original)]));
    prepare(api.client(), &opts()).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), ".:53 {\n}\n");
    assert_eq!(
        corefile(&api, "coredns-config"),
        testdata("coredns-1.11.out.Corefile")
    );
}

#[tokio::test]
async fn users_own_blocks_and_later_edits_are_kept() {
    let api = FakeApi::new();
    let original = testdata("user-blocks.in.Corefile");
    api.insert(&coredns("coredns/coredns:1.8.6", "coredns"));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    prepare(api.client(), &opts()).await.unwrap();
    let prepared = corefile(&api, "coredns");
    assert_eq!(prepared, testdata("user-blocks.out.Corefile"));

    // The user adds a block after ours; cleanup removes ours only.
    let extra = "\nlab.example:53 {\n\tforward . 10.40.0.53\n}\n";
    api.insert(&configmap(
        "coredns",
        &[(COREFILE_KEY, &format!("{prepared}{extra}"))],
    ));
    cleanup(api.client(), &opts()).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), format!("{original}{extra}"));
}

#[tokio::test]
async fn namespace_change_updates_the_block() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.7.in.Corefile");
    api.insert(&coredns("coredns/coredns:1.9.3", "coredns"));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    prepare(api.client(), &opts()).await.unwrap();
    let first_hash = restart_annotation(&api).unwrap();

    let moved = DnsOptions {
        mesh_namespace: "mesh-two".into(),
        ..opts()
    };
    api.clear_writes();
    let done = prepare(api.client(), &moved).await.unwrap();
    assert!(done.changed && done.restarted);
    let text = corefile(&api, "coredns");
    assert!(text.contains(".mesh-two.svc.cluster.local"), "{text}");
    assert!(!text.contains(".maille.svc.cluster.local"), "{text}");
    assert_eq!(text.matches(corefile::BEGIN_MARKER).count(), 1);
    assert_ne!(restart_annotation(&api).unwrap(), first_hash);
    assert_eq!(
        api.writes(),
        [
            "PUT configmaps kube-system/coredns",
            "PATCH deployments kube-system/coredns"
        ]
    );

    cleanup(api.client(), &moved).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), original);
}

fn aks_deployment() -> Deployment {
    deployment(
        "coredns",
        &[(
            "coredns",
            "mcr.microsoft.com/oss/kubernetes/coredns:v1.9.4-hotfix.20240704",
        )],
        vec![
            config_volume("config-volume", "coredns", Some(COREFILE_KEY)),
            config_volume("custom-config-volume", AKS_CUSTOM_CONFIGMAP, None),
        ],
    )
}

/// AKS's Corefile: its own server block imports `*.override` plugins, and `*.server` blocks are
/// imported at the top level.
fn aks_corefile(base: &str) -> String {
    let base = base.trim_end().strip_suffix('}').unwrap_or(base);
    format!("{base}    import custom/*.override\n}}\nimport custom/*.server\n")
}

#[tokio::test]
async fn aks_custom_configmap_gets_the_block() {
    let api = FakeApi::new();
    let corefile_text = aks_corefile(&testdata("coredns-1.11.in.Corefile"));
    api.insert(&aks_deployment());
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &corefile_text)]));
    let user_server = "corp.example:53 {\n    forward . 10.0.0.2\n}\n";
    api.insert(&configmap(
        AKS_CUSTOM_CONFIGMAP,
        &[("corp.server", user_server)],
    ));

    let done = prepare(api.client(), &opts()).await.unwrap();
    assert_eq!(
        done.target,
        Target::AksCustom {
            version: Version::new(1, 9, 4)
        }
    );
    assert!(done.restarted);
    let custom: ConfigMap = api.get(KS, AKS_CUSTOM_CONFIGMAP).unwrap();
    let data = custom.data.unwrap();
    assert_eq!(data["corp.server"], user_server);
    let ours = &data[AKS_CUSTOM_KEY];
    assert!(ours.contains("maille.mesh:53 {"), "{ours}");
    assert!(!ours.contains("upstream"), "{ours}");
    assert_eq!(
        corefile(&api, "coredns"),
        corefile_text,
        "AKS Corefile untouched"
    );
    assert_eq!(
        api.writes(),
        [
            "PUT configmaps kube-system/coredns-custom",
            "PATCH deployments kube-system/coredns"
        ]
    );

    api.clear_writes();
    assert!(!prepare(api.client(), &opts()).await.unwrap().changed);
    assert_eq!(api.writes(), Vec::<String>::new());

    let cleaned = cleanup(api.client(), &opts()).await.unwrap();
    assert_eq!(cleaned.configmaps, ["kube-system/coredns-custom"]);
    assert!(cleaned.restarted);
    let custom: ConfigMap = api.get(KS, AKS_CUSTOM_CONFIGMAP).unwrap();
    assert_eq!(
        custom.data.unwrap(),
        BTreeMap::from([("corp.server".to_string(), user_server.to_string())])
    );
    assert_eq!(restart_annotation(&api), None);
}

#[tokio::test]
async fn a_stray_coredns_custom_is_not_used_unless_coredns_reads_it() {
    // kubeadm's CoreDNS, and a coredns-custom someone left (with a block of an earlier
    // prepare in it): the Corefile gets the block, the stray key goes, and the note says why.
    let api = FakeApi::new();
    let original = testdata("coredns-1.11.in.Corefile");
    api.insert(&coredns(
        "registry.k8s.io/coredns/coredns:v1.11.1",
        "coredns",
    ));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    api.insert(&configmap(
        AKS_CUSTOM_CONFIGMAP,
        &[
            (AKS_CUSTOM_KEY, "maille.mesh:53 {\n}\n"),
            ("other.server", "x"),
        ],
    ));
    let done = prepare(api.client(), &opts()).await.unwrap();
    assert!(matches!(done.target, Target::Corefile { .. }), "{done:?}");
    let note = done.note.expect("says why coredns-custom was not used");
    assert!(
        note.contains("has no volume from ConfigMap coredns-custom"),
        "{note}"
    );
    assert!(corefile(&api, "coredns").contains("maille.mesh:53 {"));
    let custom: ConfigMap = api.get(KS, AKS_CUSTOM_CONFIGMAP).unwrap();
    assert_eq!(
        custom.data.unwrap().keys().collect::<Vec<_>>(),
        ["other.server"]
    );

    // Mounted, but the Corefile does not import it: still the Corefile, and the note says so.
    let api = FakeApi::new();
    api.insert(&aks_deployment());
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    api.insert(&configmap(AKS_CUSTOM_CONFIGMAP, &[]));
    let done = prepare(api.client(), &opts()).await.unwrap();
    assert!(matches!(done.target, Target::Corefile { .. }), "{done:?}");
    assert!(done
        .note
        .unwrap()
        .contains("no top-level import of maille.server from /etc/coredns/custom"),);
    assert!(corefile(&api, "coredns").contains("maille.mesh:53 {"));
}

#[tokio::test]
async fn aks_moves_a_section_left_in_the_corefile() {
    let api = FakeApi::new();
    // AKS's Deployment and Corefile, before its coredns-custom ConfigMap exists.
    let original = aks_corefile(&testdata("coredns-1.7.in.Corefile"));
    api.insert(&aks_deployment());
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    prepare(api.client(), &opts()).await.unwrap();
    assert_ne!(corefile(&api, "coredns"), original);

    // coredns-custom appears: the block moves there, and only there.
    api.insert(&configmap(AKS_CUSTOM_CONFIGMAP, &[]));
    api.clear_writes();
    let done = prepare(api.client(), &opts()).await.unwrap();
    assert!(matches!(done.target, Target::AksCustom { .. }) && done.restarted);
    assert_eq!(corefile(&api, "coredns"), original);
    let custom: ConfigMap = api.get(KS, AKS_CUSTOM_CONFIGMAP).unwrap();
    assert!(custom.data.unwrap()[AKS_CUSTOM_KEY].contains("maille.mesh:53 {"));
    assert_eq!(
        api.writes(),
        [
            "PUT configmaps kube-system/coredns-custom",
            "PUT configmaps kube-system/coredns",
            "PATCH deployments kube-system/coredns"
        ]
    );
}

fn kube_dns() -> Deployment {
    deployment(
        "kube-dns",
        &[
            ("kubedns", "gke.gcr.io/k8s-dns-kube-dns:1.23.0-gke.9"),
            ("dnsmasq", "gke.gcr.io/k8s-dns-dnsmasq-nanny:1.23.0-gke.9"),
            ("sidecar", "gke.gcr.io/k8s-dns-sidecar:1.23.0-gke.9"),
        ],
        vec![config_volume("kube-dns-config", KUBE_DNS_CONFIGMAP, None)],
    )
}

#[tokio::test]
async fn kube_dns_with_its_configmap() {
    let api = FakeApi::new();
    api.insert(&kube_dns());
    api.insert(&service("maille", "maille-coredns", &[], "10.96.0.53"));
    let stubs = "{\"corp.example\": [\"10.0.0.2\"]}";
    let upstream = "[\"8.8.8.8\"]";
    api.insert(&configmap(
        KUBE_DNS_CONFIGMAP,
        &[(STUB_DOMAINS_KEY, stubs), ("upstreamNameservers", upstream)],
    ));

    let done = prepare(api.client(), &opts()).await.unwrap();
    assert_eq!(
        done,
        Prepared {
            target: Target::KubeDnsStub {
                nameserver: "10.96.0.53".into()
            },
            changed: true,
            restarted: false,
            note: None
        }
    );
    let cm: ConfigMap = api.get(KS, KUBE_DNS_CONFIGMAP).unwrap();
    let data = cm.data.unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&data[STUB_DOMAINS_KEY]).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"corp.example": ["10.0.0.2"], "maille.mesh": ["10.96.0.53"]})
    );
    assert_eq!(data["upstreamNameservers"], upstream);
    assert_eq!(api.writes(), ["PUT configmaps kube-system/kube-dns"]);

    api.clear_writes();
    assert!(!prepare(api.client(), &opts()).await.unwrap().changed);
    assert_eq!(api.writes(), Vec::<String>::new());

    let cleaned = cleanup(api.client(), &opts()).await.unwrap();
    assert_eq!(cleaned.configmaps, ["kube-system/kube-dns"]);
    assert!(!cleaned.restarted);
    let cm: ConfigMap = api.get(KS, KUBE_DNS_CONFIGMAP).unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data[STUB_DOMAINS_KEY], stubs, "byte for byte");
    assert_eq!(data["upstreamNameservers"], upstream);
}

#[tokio::test]
async fn kube_dns_without_configmap_creates_then_deletes_it() {
    let api = FakeApi::new();
    api.insert(&kube_dns());
    api.insert(&service("maille", "maille-coredns", &[], "10.96.0.53"));

    let done = prepare(api.client(), &opts()).await.unwrap();
    assert!(done.changed);
    assert_eq!(api.writes(), ["POST configmaps kube-system/kube-dns"]);
    let cm: ConfigMap = api.get(KS, KUBE_DNS_CONFIGMAP).unwrap();
    assert_eq!(
        cm.data.unwrap()[STUB_DOMAINS_KEY],
        r#"{"maille.mesh":["10.96.0.53"]}"#
    );

    api.clear_writes();
    assert!(!prepare(api.client(), &opts()).await.unwrap().changed);
    assert_eq!(api.writes(), Vec::<String>::new());

    cleanup(api.client(), &opts()).await.unwrap();
    assert!(api.get::<ConfigMap>(KS, KUBE_DNS_CONFIGMAP).is_none());
    assert_eq!(api.writes(), ["DELETE configmaps kube-system/kube-dns"]);
}

#[tokio::test]
async fn kube_dns_follows_a_reinstall_in_another_namespace() {
    let api = FakeApi::new();
    api.insert(&kube_dns());
    api.insert(&service("maille", "maille-coredns", &[], "10.96.0.53"));
    api.insert(&service("mesh-two", "maille-coredns", &[], "10.96.7.7"));
    prepare(api.client(), &opts()).await.unwrap();
    let moved = DnsOptions {
        mesh_namespace: "mesh-two".into(),
        ..opts()
    };
    assert!(prepare(api.client(), &moved).await.unwrap().changed);
    let cm: ConfigMap = api.get(KS, KUBE_DNS_CONFIGMAP).unwrap();
    assert_eq!(
        cm.data.unwrap()[STUB_DOMAINS_KEY],
        r#"{"maille.mesh":["10.96.7.7"]}"#
    );
}

#[tokio::test]
async fn kube_dns_without_the_charts_dns_service_is_a_clear_error() {
    let api = FakeApi::new();
    api.insert(&kube_dns());
    let err = prepare(api.client(), &opts()).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("service maille/maille-coredns: not found"),
        "{err}"
    );
    assert_eq!(api.writes(), Vec::<String>::new());
}

#[tokio::test]
async fn image_without_version_needs_the_flag() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.7.in.Corefile");
    api.insert(&coredns(
        "registry.local/coredns@sha256:0123abcd",
        "coredns",
    ));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    let err = prepare(api.client(), &opts()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("deployment kube-system/coredns")
            && msg.contains("containers[coredns].image")
            && msg.contains("registry.local/coredns@sha256:0123abcd")
            && msg.contains("--coredns-version"),
        "{msg}"
    );
    assert_eq!(api.writes(), Vec::<String>::new());

    let pinned = DnsOptions {
        coredns_version: Some(Version::new(1, 6, 7)),
        ..opts()
    };
    prepare(api.client(), &pinned).await.unwrap();
    assert!(corefile(&api, "coredns").contains("        upstream\n"));
}

#[tokio::test]
async fn too_old_coredns_is_refused_without_writing() {
    let api = FakeApi::new();
    api.insert(&coredns("coredns/coredns:1.5.2", "coredns"));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, ".:53 {\n}\n")]));
    let err = prepare(api.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("CoreDNS 1.5.2 is older than 1.6.0"),
        "{err}"
    );
    assert_eq!(api.writes(), Vec::<String>::new());
}

#[tokio::test]
async fn no_cluster_dns_is_reported() {
    let api = FakeApi::new();
    let err = prepare(api.client(), &opts()).await.unwrap_err();
    assert!(matches!(err, Error::NoDnsServer), "{err}");
}

#[tokio::test]
async fn damaged_markers_stop_prepare_without_writing() {
    let api = FakeApi::new();
    api.insert(&coredns("coredns/coredns:1.11.1", "coredns"));
    let damaged = format!(
        ".:53 {{\n}}\n{}\nmaille.mesh:53 {{\n}}\n",
        corefile::BEGIN_MARKER
    );
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &damaged)]));
    let err = prepare(api.client(), &opts()).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("configmap kube-system/coredns: field data.Corefile: line 3"),
        "{err}"
    );
    assert_eq!(api.writes(), Vec::<String>::new());
    assert_eq!(corefile(&api, "coredns"), damaged);
}

#[tokio::test]
async fn a_concurrent_edit_is_kept_and_ours_retried() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.7.in.Corefile");
    api.insert(&coredns("coredns/coredns:1.10.1", "coredns"));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    let theirs = "\nteam.example:53 {\n    forward . 10.5.5.5\n}\n";
    let with_theirs = format!("{original}{theirs}");
    let edited = with_theirs.clone();
    api.race_next_write::<ConfigMap>(KS, "coredns", move |obj| {
        obj["data"][COREFILE_KEY] = serde_json::Value::String(edited);
    });
    prepare(api.client(), &opts()).await.unwrap();
    let text = corefile(&api, "coredns");
    assert!(text.starts_with(&with_theirs), "{text}");
    assert!(text.contains("maille.mesh:53 {"), "{text}");
    assert_eq!(
        api.writes(),
        [
            "PUT configmaps kube-system/coredns",
            "PUT configmaps kube-system/coredns",
            "PATCH deployments kube-system/coredns"
        ]
    );
    cleanup(api.client(), &opts()).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), with_theirs);
}

#[tokio::test]
async fn cleanup_deletes_only_shadow_services() {
    let api = FakeApi::new();
    api.insert(&coredns("coredns/coredns:1.11.1", "coredns"));
    api.insert(&configmap(
        "coredns",
        &[(COREFILE_KEY, &testdata("coredns-1.11.in.Corefile"))],
    ));
    let managed = [(MANAGED_BY_LABEL, MANAGED_BY_VALUE)];
    let shadow_labels = |ns: &'static str, name: &'static str| {
        [
            (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
            (naming::SOURCE_NAMESPACE_LABEL, ns),
            (naming::SOURCE_NAME_LABEL, name),
        ]
    };
    let web = naming::shadow_name("shop", "web").unwrap();
    let db = naming::shadow_name("data", "db").unwrap();
    api.insert(&service(
        "maille",
        &web,
        &shadow_labels("shop", "web"),
        "10.96.1.1",
    ));
    api.insert(&service(
        "maille",
        &db,
        &shadow_labels("data", "db"),
        "10.96.1.2",
    ));
    // Labelled but not a shadow name, a shadow name labelled as Maille's but without the
    // source labels Maille writes, a shadow-looking name without the label, and a shadow in
    // another namespace: all stay.
    api.insert(&service("maille", "maille-coredns", &managed, "10.96.0.53"));
    let foreign = naming::shadow_name("shop", "api").unwrap();
    api.insert(&service("maille", &foreign, &managed, "10.96.1.5"));
    api.insert(&service(
        "maille",
        &naming::shadow_name("x", "y").unwrap(),
        &[],
        "10.96.1.3",
    ));
    api.insert(&service("other", &web, &managed, "10.96.1.4"));

    let cleaned = cleanup(api.client(), &opts()).await.unwrap();
    let mut deleted = cleaned.services_deleted.clone();
    deleted.sort();
    let mut want = vec![format!("maille/{db}"), format!("maille/{web}")];
    want.sort();
    assert_eq!(deleted, want);
    assert!(api.get::<Service>("maille", &web).is_none());
    assert!(api.get::<Service>("maille", &db).is_none());
    assert!(api.get::<Service>("maille", "maille-coredns").is_some());
    assert!(api
        .get::<Service>("maille", &naming::shadow_name("x", "y").unwrap())
        .is_some());
    assert!(api.get::<Service>("other", &web).is_some());
    assert!(api.get::<Service>("maille", &foreign).is_some());
    // Nothing of ours in the Corefile: cleanup neither writes it nor restarts CoreDNS.
    assert!(!cleaned.restarted);
    assert!(api
        .writes()
        .iter()
        .all(|w| w.starts_with("DELETE services maille/")));
}

#[tokio::test]
async fn bad_options_are_refused_before_any_call() {
    let api = FakeApi::new();
    for (o, flag) in [
        (
            DnsOptions {
                mesh_namespace: "Mesh_NS".into(),
                ..opts()
            },
            "--namespace \"Mesh_NS\"",
        ),
        (
            DnsOptions {
                cluster_domain: "cluster..local".into(),
                ..opts()
            },
            "--cluster-domain",
        ),
    ] {
        let err = prepare(api.client(), &o).await.unwrap_err();
        assert!(err.to_string().starts_with(flag), "{err}");
    }
    assert_eq!(api.writes(), Vec::<String>::new());
}

#[tokio::test]
async fn over_http_with_a_kubeconfig_file() {
    let api = FakeApi::new();
    let original = testdata("coredns-1.11.in.Corefile");
    api.insert(&coredns(
        "registry.k8s.io/coredns/coredns:v1.11.1",
        "coredns",
    ));
    api.insert(&configmap("coredns", &[(COREFILE_KEY, &original)]));
    let dir = tempfile::tempdir().unwrap();
    let (path, server) = api.serve_kubeconfig(dir.path()).await.unwrap();

    let client = kube_client(Some(&path)).await.unwrap();
    let done = prepare(client.clone(), &opts()).await.unwrap();
    assert!(done.changed && done.restarted);
    assert_eq!(
        corefile(&api, "coredns"),
        testdata("coredns-1.11.out.Corefile")
    );
    cleanup(client, &opts()).await.unwrap();
    assert_eq!(corefile(&api, "coredns"), original);
    server.abort();

    let missing = dir.path().join("nope");
    let Err(err) = kube_client(Some(&missing)).await else {
        panic!("a missing kubeconfig must fail");
    };
    assert!(
        err.to_string()
            .starts_with("cannot configure the Kubernetes client"),
        "{err}"
    );
    assert!(err.to_string().contains("nope"), "{err}");
}
