use super::*;
use std::path::PathBuf;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/dns/testdata")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(testdata(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares with a golden file; `MAILLE_UPDATE_GOLDEN=1` rewrites it (then review the diff).
fn golden(name: &str, got: &str) {
    if std::env::var_os("MAILLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(testdata(name), got).unwrap();
        return;
    }
    let want = read(name);
    assert!(
        got == want,
        "{name} differs from the golden file (MAILLE_UPDATE_GOLDEN=1 to rewrite it)\n--- got\n{got}\n--- want\n{want}"
    );
}

fn params(family: Family) -> BlockParams<'static> {
    BlockParams {
        mesh_namespace: "maille",
        cluster_domain: "cluster.local",
        family,
    }
}

#[test]
fn golden_corefiles_per_version_family() {
    for (input, family, output) in [
        (
            "coredns-1.6.in.Corefile",
            Family::V1_6,
            "coredns-1.6.out.Corefile",
        ),
        (
            "coredns-1.7.in.Corefile",
            Family::V1_7,
            "coredns-1.7.out.Corefile",
        ),
        (
            "coredns-1.11.in.Corefile",
            Family::V1_7,
            "coredns-1.11.out.Corefile",
        ),
        (
            "user-blocks.in.Corefile",
            Family::V1_7,
            "user-blocks.out.Corefile",
        ),
    ] {
        let original = read(input);
        let prepared = apply(&original, &managed_section(&params(family))).unwrap();
        golden(output, &prepared);
        // Idempotent: a second apply is the identity.
        let again = apply(&prepared, &managed_section(&params(family))).unwrap();
        assert_eq!(again, prepared, "{input}: second apply changed the text");
        // Cleanup restores the original byte for byte.
        assert_eq!(
            remove(&prepared).unwrap(),
            original,
            "{input}: remove did not restore"
        );
        assert!(prepared.starts_with(&original), "{input}: user text moved");
    }
}

#[test]
fn upstream_only_before_1_7() {
    let old = server_block(&params(Family::V1_6));
    let new = server_block(&params(Family::V1_7));
    assert!(old.contains("\n        upstream\n"), "{old}");
    assert!(!new.contains("upstream"), "{new}");
}

#[test]
fn block_uses_the_shared_shadow_separator_and_options() {
    let block = server_block(&BlockParams {
        mesh_namespace: "mesh-system",
        cluster_domain: "corp.example",
        family: Family::V1_7,
    });
    let sep = crate::naming::SHADOW_SEPARATOR;
    assert!(
        block.contains(&format!(
            r"name regex ^([a-z0-9-]+)\.([a-z0-9-]+)\.maille\.mesh\.$ {{1}}{sep}{{2}}.mesh-system.svc.corp.example"
        )),
        "{block}"
    );
    assert!(
        block.contains(&format!(
            r"answer name ^([a-z0-9-]+){sep}([a-z0-9-]+)\.mesh-system\.svc\.corp\.example\.$ {{1}}.{{2}}.maille.mesh"
        )),
        "{block}"
    );
    assert!(block.contains("    kubernetes corp.example\n"), "{block}");
}

#[test]
fn namespace_change_rewrites_only_the_section() {
    let original = read("user-blocks.in.Corefile");
    let first = apply(&original, &managed_section(&params(Family::V1_7))).unwrap();
    let moved = BlockParams {
        mesh_namespace: "mesh2",
        ..params(Family::V1_7)
    };
    let second = apply(&first, &managed_section(&moved)).unwrap();
    assert_ne!(first, second);
    assert!(second.contains(".mesh2.svc.cluster.local"), "{second}");
    assert!(!second.contains(".maille.svc.cluster.local"), "{second}");
    assert_eq!(second.matches(BEGIN_MARKER).count(), 1);
    assert_eq!(remove(&second).unwrap(), original);
}

#[test]
fn user_edits_around_the_section_are_kept() {
    let original = read("coredns-1.7.in.Corefile");
    let prepared = apply(&original, &managed_section(&params(Family::V1_7))).unwrap();
    let user_block = "\nextra.example:53 {\n    forward . 10.9.9.9\n}\n";
    let edited = format!("{prepared}{user_block}");
    assert_eq!(remove(&edited).unwrap(), format!("{original}{user_block}"));
}

#[test]
fn original_without_final_newline_or_empty_round_trips() {
    for original in ["", ".:53 {\n    whoami\n}", ".:53 {\n    whoami\n}\n\n\n"] {
        let prepared = apply(original, &managed_section(&params(Family::V1_7))).unwrap();
        assert!(has_section(&prepared).unwrap());
        assert_eq!(remove(&prepared).unwrap(), original);
    }
}

#[test]
fn remove_without_section_is_identity() {
    let original = read("user-blocks.in.Corefile");
    assert_eq!(remove(&original).unwrap(), original);
    assert!(!has_section(&original).unwrap());
}

#[test]
fn broken_markers_and_foreign_mesh_blocks_are_refused() {
    let section = managed_section(&params(Family::V1_7));
    let lone_begin = format!(".:53 {{\n}}\n{BEGIN_MARKER}\nmaille.mesh:53 {{\n}}\n");
    assert_eq!(
        apply(&lone_begin, &section).unwrap_err(),
        Error::UnpairedMarker {
            line: 3,
            found: "# maille:begin",
            missing: "# maille:end"
        }
    );
    let lone_end = format!(".:53 {{\n}}\n{END_MARKER}\n");
    assert!(matches!(
        remove(&lone_end).unwrap_err(),
        Error::UnpairedMarker { line: 3, .. }
    ));
    let twice = format!("{section}{section}");
    assert_eq!(
        apply(&twice, &section).unwrap_err(),
        Error::DuplicateSection {
            line: section.lines().count() + 1
        }
    );
    let hand_written = ".:53 {\n}\nmaille.mesh:53 {\n    forward . 1.1.1.1\n}\n";
    let err = apply(hand_written, &section).unwrap_err();
    assert_eq!(
        err,
        Error::UnmanagedBlock {
            line: 3,
            text: "maille.mesh:53 {".into()
        }
    );
    assert!(err.to_string().contains("line 3"), "{err}");
    assert!(apply("dns://maille.mesh. {\n}\n", &section).is_err());
}
