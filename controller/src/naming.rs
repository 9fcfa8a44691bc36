//! Names of the per-service "shadow" Services in the mesh namespace, shared by the shadow
//! service writer and the DNS rewrite rules so that both always agree.
//!
//! `<svc>.<ns>.maille.mesh` resolves to the shadow `<svc>-6d61696c6c65-<ns>` in the mesh
//! namespace. The separator is "maille" in hex: unlikely in real names, so a CoreDNS regex can
//! map the name both ways. A combination longer than a DNS label (63) cannot be rewritten by a
//! regex and is reported on the service instead of being truncated.

/// The separator between service and namespace in a shadow service name.
pub const SHADOW_SEPARATOR: &str = "-6d61696c6c65-";

/// Label put on every object Maille owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "maille";
/// Label carrying the user's service namespace on a shadow service.
pub const SOURCE_NAMESPACE_LABEL: &str = "maille.io/service-namespace";
/// Label carrying the user's service name on a shadow service.
pub const SOURCE_NAME_LABEL: &str = "maille.io/service-name";

/// A service whose shadow name would not be a valid DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {namespace}/{name}: shadow service name {shadow:?} is {len} characters, over the 63 a Service name may have; shorten the service or namespace name")]
pub struct NameTooLong {
    /// Namespace of the user's service.
    pub namespace: String,
    /// Name of the user's service.
    pub name: String,
    /// The name that would be needed.
    pub shadow: String,
    /// Its length.
    pub len: usize,
}

/// The shadow service name for a user service.
pub fn shadow_name(namespace: &str, name: &str) -> Result<String, NameTooLong> {
    let shadow = format!("{name}{SHADOW_SEPARATOR}{namespace}");
    if shadow.len() > 63 {
        return Err(NameTooLong {
            namespace: namespace.into(),
            name: name.into(),
            len: shadow.len(),
            shadow,
        });
    }
    Ok(shadow)
}

/// The user service (namespace, name) a shadow name stands for.
pub fn parse_shadow_name(shadow: &str) -> Option<(&str, &str)> {
    let (name, namespace) = shadow.split_once(SHADOW_SEPARATOR)?;
    (!name.is_empty() && !namespace.is_empty()).then_some((namespace, name))
}

/// Whether a Service in the mesh namespace is a shadow service the controller wrote: named as a
/// shadow, labelled as Maille's, and carrying the source labels that match its name (which
/// only the controller's writer sets). Only these are ever deleted by Maille.
pub fn is_own_shadow(
    name: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let Some((namespace, service)) = parse_shadow_name(name) else {
        return false;
    };
    let Some(labels) = labels else {
        return false;
    };
    let has = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
    has(MANAGED_BY_LABEL, MANAGED_BY_VALUE)
        && has(SOURCE_NAMESPACE_LABEL, namespace)
        && has(SOURCE_NAME_LABEL, service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_long_names() {
        let s = shadow_name("shop", "web").unwrap();
        assert_eq!(s, "web-6d61696c6c65-shop");
        assert_eq!(parse_shadow_name(&s), Some(("shop", "web")));
        assert_eq!(parse_shadow_name("unrelated"), None);
        let e = shadow_name(&"n".repeat(30), &"s".repeat(30)).unwrap_err();
        assert_eq!(e.len, 74);
        assert!(e.to_string().contains("over the 63"));
    }

    #[test]
    fn own_shadows_need_the_name_and_every_label() {
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ours = labels(&[
            (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
            (SOURCE_NAMESPACE_LABEL, "shop"),
            (SOURCE_NAME_LABEL, "web"),
        ]);
        assert!(is_own_shadow("web-6d61696c6c65-shop", Some(&ours)));
        assert!(!is_own_shadow("api-6d61696c6c65-shop", Some(&ours)));
        assert!(!is_own_shadow("maille-controller", Some(&ours)));
        assert!(!is_own_shadow("web-6d61696c6c65-shop", None));
        let managed_only = labels(&[(MANAGED_BY_LABEL, MANAGED_BY_VALUE)]);
        assert!(!is_own_shadow("web-6d61696c6c65-shop", Some(&managed_only)));
    }
}
