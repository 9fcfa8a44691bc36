//! Tests of reading Gateway API routes from manifests.

use super::*;

fn doc(yaml: &str) -> serde_json::Value {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn both_httproute_versions_and_grpcroute_read_into_one_type_each() {
    for version in ["v1", "v1beta1"] {
        let d = doc(&format!(
            "apiVersion: gateway.networking.k8s.io/{version}\nkind: HTTPRoute\n\
             metadata: {{name: web}}\n\
             spec:\n  parentRefs: [{{group: '', kind: Service, name: web, port: 80}}]\n  \
             rules:\n  - matches: [{{path: {{value: /api}}, headers: [{{name: x-canary, value: 'on'}}]}}]\n    \
             backendRefs: [{{name: web-v2, port: 80, weight: 10}}]\n    timeouts: {{request: 2s}}\n"
        ));
        let Some(Ok(RouteObject::Http(r))) = parse_manifest(&doc_clone(&d)) else {
            panic!("{version}: not read");
        };
        assert_eq!(r.metadata.namespace.as_deref(), Some("default"));
        let rule = &r.spec.rules[0];
        let path = rule.matches[0].path.as_ref().unwrap();
        assert_eq!(path.type_, "PathPrefix", "the CRD's default");
        assert_eq!(path.value, "/api");
        assert_eq!(rule.matches[0].headers[0].type_, "Exact");
        assert_eq!(rule.backend_refs[0].weight, Some(10));
        assert_eq!(
            rule.timeouts.as_ref().unwrap().request.as_deref(),
            Some("2s")
        );
    }
    let d = doc(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
                 metadata: {name: cart, namespace: shop}\n\
                 spec:\n  parentRefs: [{group: '', kind: Service, name: cart}]\n  \
                 rules:\n  - matches: [{method: {service: shop.v1.Cart, method: Add}}]\n",
    );
    let Some(Ok(RouteObject::Grpc(r))) = parse_manifest(&d) else {
        panic!("GRPCRoute not read");
    };
    let m = r.spec.rules[0].matches[0].method.as_ref().unwrap();
    assert_eq!(m.type_, "Exact");
    assert_eq!(m.service.as_deref(), Some("shop.v1.Cart"));
}

fn doc_clone(d: &serde_json::Value) -> serde_json::Value {
    d.clone()
}

#[test]
fn unknown_versions_and_bad_shapes_are_errors_naming_the_object() {
    let d = doc(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: GRPCRoute\n\
                 metadata: {name: cart, namespace: shop}\nspec: {}\n",
    );
    let err = parse_manifest(&d).unwrap().unwrap_err().to_string();
    assert!(err.contains("GRPCRoute shop/cart"), "{err}");
    assert!(err.contains("gateway.networking.k8s.io/v1"), "{err}");
    let d = doc(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {name: web, namespace: shop}\nspec: {rules: 3}\n",
    );
    let err = parse_manifest(&d).unwrap().unwrap_err().to_string();
    assert!(err.contains("HTTPRoute shop/web"), "{err}");
    assert!(err.contains("rules") || err.contains("sequence"), "{err}");
    let gateway = doc("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                       metadata: {name: gw}\nspec: {}\n");
    assert!(
        parse_manifest(&gateway).is_none(),
        "a kind Maille does not read"
    );
}
