//! The chart's SMI CRDs are the ones generated from the controller's types, every supported
//! version is served, and the schemas are structural (what a real API server demands).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use maille_controller::smi::crd::{chart_files, definitions};
use maille_controller::smi::SUPPORTED;
use serde_json::Value;

fn chart_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/maille/crds")
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect()
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let generated = chart_files().unwrap();
    let regenerate =
        "regenerate with `cargo run -p maille-controller --bin crdgen -- --out charts/maille/crds`";
    let names: BTreeSet<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        yaml_files(&chart_crds()),
        names,
        "charts/maille/crds holds other files: {regenerate}"
    );
    for (name, text) in generated {
        let chart = std::fs::read_to_string(chart_crds().join(&name)).unwrap();
        assert!(
            chart == text,
            "charts/maille/crds/{name} differs from the types: {regenerate}"
        );
    }
}

#[test]
fn crdgen_writes_the_chart_files_and_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_crdgen");
    let status = Command::new(bin)
        .arg("--out")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let expected = chart_files().unwrap();
    assert_eq!(yaml_files(dir.path()).len(), expected.len());
    for (name, text) in &expected {
        assert_eq!(
            &std::fs::read_to_string(dir.path().join(name)).unwrap(),
            text,
            "{name}"
        );
    }

    let out = Command::new(bin).output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&printed)
        .map(|d| {
            let v = <Value as serde::Deserialize>::deserialize(d).unwrap();
            v["spec"]["names"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "TrafficTarget",
            "HTTPRouteGroup",
            "TCPRoute",
            "UDPRoute",
            "TrafficSplit"
        ]
    );
}

#[test]
fn every_supported_version_is_served_and_one_is_stored() {
    let crds = definitions();
    for (group, kind, versions) in SUPPORTED {
        let crd = crds
            .iter()
            .find(|c| c.spec.group == *group && c.spec.names.kind == *kind)
            .unwrap_or_else(|| panic!("no CRD for {group} {kind}"));
        let served: BTreeSet<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(served, versions.iter().copied().collect(), "{kind}");
        assert_eq!(crd.spec.versions.len(), versions.len(), "{kind}");
        let stored: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            stored,
            [*versions.last().unwrap()],
            "{kind}: the newest version is stored"
        );
        assert_eq!(crd.spec.conversion.as_ref().unwrap().strategy, "None");
        assert_eq!(
            crd.metadata.labels.as_ref().unwrap()["app.kubernetes.io/part-of"],
            "maille"
        );
        assert_eq!(
            crd.spec.names.short_names.as_ref().map(Vec::len),
            Some(1),
            "{kind}"
        );
    }
}

/// Kubernetes' structural-schema rule: every node names its type, except where unknown fields
/// are preserved (then it may have none); no `anyOf`/`oneOf`/`allOf` carrying types.
fn structural_problems(path: &str, schema: &Value, problems: &mut Vec<String>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if schema.get("type").is_none()
        && !preserve
        && schema.get("x-kubernetes-int-or-string").is_none()
    {
        problems.push(format!("{path}: no type"));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if branch.get("type").is_some() || branch.get("properties").is_some() {
                problems.push(format!("{path}.{key}[{i}]: carries a type or properties"));
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            structural_problems(&format!("{path}.{name}"), sub, problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
            structural_problems(&format!("{path}.{key}"), sub, problems);
        }
    }
}

#[test]
fn the_schemas_are_structural_and_headers_keep_both_shapes() {
    let mut problems = Vec::new();
    for crd in definitions() {
        for version in &crd.spec.versions {
            let schema =
                serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let path = format!("{} {}", crd.spec.names.kind, version.name);
            structural_problems(&path, &schema, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    let hrg = definitions()
        .into_iter()
        .find(|c| c.spec.names.kind == "HTTPRouteGroup")
        .unwrap();
    let schema = serde_json::to_value(&hrg.spec.versions[0].schema).unwrap();
    let headers = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["matches"]
        ["items"]["properties"]["headers"];
    assert_eq!(
        headers["x-kubernetes-preserve-unknown-fields"], true,
        "{headers}"
    );
}
