//! The chart's Gateway API route CRDs (`charts/maille/gateway-crds/`) are the ones generated from
//! the controller's types, serve the versions the specification serves (HTTPRoute v1 stored and
//! v1beta1; GRPCRoute v1) with the status subresource, keep the list bounds of the
//! specification, and are structural.

use std::path::{Path, PathBuf};
use std::process::Command;

use maille_controller::gateway::crd::{chart_files, definitions};
use serde_json::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/maille/gateway-crds")
}

#[test]
fn the_charts_gateway_crds_are_the_generated_ones_and_crdgen_writes_them() {
    let generated = chart_files().unwrap();
    let regenerate = "regenerate with `cargo run -p maille-controller --bin crdgen -- --gateway-out charts/maille/gateway-crds`";
    let mut names: Vec<String> = std::fs::read_dir(chart_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want, "{regenerate}");
    for (name, text) in &generated {
        let chart = std::fs::read_to_string(chart_dir().join(name)).unwrap();
        assert!(&chart == text, "gateway-crds/{name} differs: {regenerate}");
    }

    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg("--gateway-out")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for (name, text) in &generated {
        assert_eq!(
            &std::fs::read_to_string(dir.path().join(name)).unwrap(),
            text
        );
    }
}

fn structural_problems(path: &str, schema: &Value, problems: &mut Vec<String>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if schema.get("type").is_none() && !preserve {
        problems.push(format!("{path}: no type"));
    }
    for key in ["anyOf", "oneOf", "allOf", "$ref"] {
        if schema.get(key).is_some() {
            problems.push(format!("{path}: {key}"));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            structural_problems(&format!("{path}.{name}"), sub, problems);
        }
    }
    if let Some(sub) = schema.get("items").filter(|s| s.is_object()) {
        structural_problems(&format!("{path}[]"), sub, problems);
    }
}

#[test]
fn versions_status_bounds_and_structure_follow_the_specification() {
    let mut problems = Vec::new();
    for crd in definitions() {
        let kind = crd.spec.names.kind.clone();
        let versions: Vec<(String, bool, bool)> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.served, v.storage))
            .collect();
        let want: Vec<(String, bool, bool)> = match kind.as_str() {
            "HTTPRoute" => vec![("v1".into(), true, true), ("v1beta1".into(), true, false)],
            "GRPCRoute" => vec![("v1".into(), true, true)],
            other => panic!("unexpected {other}"),
        };
        assert_eq!(versions, want, "{kind}");
        assert_eq!(crd.spec.group, "gateway.networking.k8s.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        for version in &crd.spec.versions {
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{kind} {}: status subresource",
                version.name
            );
            let schema =
                serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            structural_problems(&format!("{kind} {}", version.name), &schema, &mut problems);
            let spec = &schema["properties"]["spec"]["properties"];
            assert_eq!(spec["parentRefs"]["maxItems"], 32, "{kind}");
            assert_eq!(spec["rules"]["maxItems"], 16, "{kind}");
            let rule = &spec["rules"]["items"]["properties"];
            assert_eq!(rule["matches"]["maxItems"], 64, "{kind}");
            assert_eq!(rule["backendRefs"]["maxItems"], 16, "{kind}");
            assert_eq!(rule["filters"]["maxItems"], 16, "{kind}");
            assert_eq!(
                rule["matches"]["items"]["properties"]["headers"]["maxItems"], 16,
                "{kind}"
            );
            let status = &schema["properties"]["status"]["properties"]["parents"];
            assert_eq!(status["maxItems"], 32, "{kind}");
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
