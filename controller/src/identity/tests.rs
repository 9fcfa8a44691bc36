use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::watch;

use super::*;
use crate::snapshot::Snapshot;

const TD: &str = "mesh.test";

fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)], sa: &str) -> Pod {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }))
    .unwrap()
}

fn local_snapshot() -> Snapshot {
    let proxy = [("app.kubernetes.io/name", "maille-proxy")];
    Snapshot {
        pods: vec![
            Arc::new(pod("maille", "proxy-a", "node-a", &proxy, "maille-proxy")),
            Arc::new(pod("maille", "proxy-b", "node-b", &proxy, "maille-proxy")),
            // A client pod on node-c: not a proxy.
            Arc::new(pod("shop", "web", "node-c", &[], "web")),
        ],
        ..Default::default()
    }
}

fn local_service(lifetime: Duration) -> (Arc<Service>, watch::Sender<Option<Arc<Snapshot>>>) {
    let service = Service::new(Config {
        trust_domain: TD.into(),
        lifetime,
    });
    let (tx, rx) = watch::channel(Some(Arc::new(local_snapshot())));
    service.install(
        Ca::generate(TD).unwrap(),
        Authenticator::Bootstrap {
            token: "bootstrap-token-0123456789".into(),
            snapshots: rx,
        },
    );
    (service, tx)
}

fn csr_for(key: &rcgen::KeyPair, sans: Vec<rcgen::SanType>) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn request(node: &str, key: &rcgen::KeyPair) -> CertificateRequest {
    CertificateRequest {
        node: node.into(),
        csr: csr_for(key, vec![]),
    }
}

fn sans_of(pem: &str) -> (Vec<String>, String, i64, i64) {
    let der = ca::pem_der(pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    (
        sans,
        cn,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

#[tokio::test]
async fn a_proxy_node_gets_its_spiffe_id_and_node_name_decided_by_the_controller() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let key = rcgen::KeyPair::generate().unwrap();
    let answer = service
        .issue("bootstrap-token-0123456789", &request("node-b", &key))
        .await
        .unwrap();
    assert_eq!(
        answer.spiffe_id,
        "spiffe://mesh.test/ns/maille/sa/maille-proxy"
    );
    assert_eq!(answer.node, "node-b");
    let (sans, cn, nb, na) = sans_of(&answer.certificate_chain);
    assert_eq!(
        sans,
        vec![
            "URI(spiffe://mesh.test/ns/maille/sa/maille-proxy)".to_string(),
            "DNSName(node-b)".to_string()
        ]
    );
    assert_eq!(cn, "node-b");
    assert!((na - nb - 3600 - 60).abs() <= 2, "{nb}..{na}");
    assert_eq!(answer.trust_bundle, service.ca().unwrap().trust_bundle());
    // The certificate is for the key the proxy made.
    let der = ca::pem_der(&answer.certificate_chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
    let rows = service.identities();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].pod, "maille/proxy-b");
    assert_eq!(rows[0].issued, 1);
    assert!(!rows[0].expired);
}

#[tokio::test]
async fn a_wrong_token_a_foreign_node_or_a_bad_name_get_nothing_and_a_reason() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let key = rcgen::KeyPair::generate().unwrap();
    let e = service
        .issue("bootstrap-token-0123456780", &request("node-a", &key))
        .await
        .unwrap_err();
    assert!(matches!(e, Refusal::Unauthenticated(_)), "{e:?}");
    assert!(e.to_string().contains("not the bootstrap token"), "{e}");
    // node-c runs a client, not a proxy.
    let e = service
        .issue("bootstrap-token-0123456789", &request("node-c", &key))
        .await
        .unwrap_err();
    assert!(matches!(e, Refusal::Forbidden(_)), "{e:?}");
    assert!(
        e.to_string().contains("\"node-c\" runs no proxy Pod"),
        "{e}"
    );
    assert!(e.to_string().contains("node-a"), "lists proxy nodes: {e}");
    let e = service
        .issue("bootstrap-token-0123456789", &request("Node_A", &key))
        .await
        .unwrap_err();
    assert!(matches!(e, Refusal::BadRequest(_)), "{e:?}");
    assert!(service.identities().is_empty());
}

#[tokio::test]
async fn csrs_asking_for_other_names_or_not_verifying_are_refused() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let key = rcgen::KeyPair::generate().unwrap();
    let ia5 = |s: &str| rcgen::Ia5String::try_from(s.to_string()).unwrap();
    let greedy = CertificateRequest {
        node: "node-a".into(),
        csr: csr_for(
            &key,
            vec![rcgen::SanType::URI(ia5(
                "spiffe://mesh.test/ns/kube-system/sa/admin",
            ))],
        ),
    };
    let e = service
        .issue("bootstrap-token-0123456789", &greedy)
        .await
        .unwrap_err();
    assert!(matches!(e, Refusal::BadRequest(_)), "{e:?}");
    assert!(e.to_string().contains("kube-system/sa/admin"), "{e}");
    let other_host = CertificateRequest {
        node: "node-a".into(),
        csr: csr_for(&key, vec![rcgen::SanType::DnsName(ia5("node-b"))]),
    };
    assert!(service
        .issue("bootstrap-token-0123456789", &other_host)
        .await
        .is_err());
    // Asking for exactly the names the controller would give is fine.
    let modest = CertificateRequest {
        node: "node-a".into(),
        csr: csr_for(
            &key,
            vec![
                rcgen::SanType::URI(ia5("spiffe://mesh.test/ns/maille/sa/maille-proxy")),
                rcgen::SanType::DnsName(ia5("node-a")),
            ],
        ),
    };
    service
        .issue("bootstrap-token-0123456789", &modest)
        .await
        .unwrap();
    // A CSR whose signature does not verify (one byte of the signed part changed).
    let pem = csr_for(&key, vec![]);
    let mut der = ca::pem_der(&pem).unwrap();
    let i = der.len() / 2;
    der[i] ^= 1;
    let tampered = pem_of("CERTIFICATE REQUEST", &der);
    assert!(matches!(
        check_csr(&tampered, "spiffe://x/ns/a/sa/b", "n"),
        Err(Refusal::BadRequest(_))
    ));
    assert!(matches!(
        check_csr("not a csr", "spiffe://x/ns/a/sa/b", "n"),
        Err(Refusal::BadRequest(_))
    ));
    let huge = format!("{pem}{}", " ".repeat(MAX_CSR_BYTES));
    let e = check_csr(&huge, "spiffe://x/ns/a/sa/b", "n").unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
}

fn pem_of(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn the_identity_folder_keeps_the_ca_and_token_across_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity");
    let (ca1, token1) = Ca::load_or_create_dir(&path, TD).unwrap();
    assert!(token1.len() >= 32);
    let (ca2, token2) = Ca::load_or_create_dir(&path, TD).unwrap();
    assert_eq!(token1, token2);
    assert_eq!(ca1.cert_pem(), ca2.cert_pem());
    assert_eq!(ca1.trust_bundle(), ca2.trust_bundle());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [ca::CA_KEY_FILE, ca::BOOTSTRAP_TOKEN_FILE] {
            let mode = std::fs::metadata(path.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} readable by others: {mode:o}");
        }
    }
    // A key that is not the certificate's is refused, naming the file.
    let other = Ca::generate(TD).unwrap();
    std::fs::write(path.join(ca::CA_KEY_FILE), other.key_pem()).unwrap();
    let e = Ca::load_or_create_dir(&path, TD).unwrap_err().to_string();
    assert!(e.contains("ca.crt") && e.contains("does not belong"), "{e}");
    // Half a CA is refused rather than replaced.
    std::fs::remove_file(path.join(ca::CA_KEY_FILE)).unwrap();
    let e = Ca::load_or_create_dir(&path, TD).unwrap_err().to_string();
    assert!(e.contains("must both be present"), "{e}");
}

#[test]
fn a_user_supplied_intermediate_is_used_with_its_root() {
    let root = Ca::generate("root.test").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let root_issuer = rcgen::CertificateParams::from_ca_cert_pem(root.cert_pem())
        .unwrap()
        .self_signed(&rcgen::KeyPair::from_pem(&root.key_pem()).unwrap())
        .unwrap();
    let root_key = rcgen::KeyPair::from_pem(&root.key_pem()).unwrap();
    let inter = params.signed_by(&key, &root_issuer, &root_key).unwrap();
    let e = Ca::from_pem(&inter.pem(), &key.serialize_pem(), None, "test").unwrap_err();
    assert!(e.to_string().contains("intermediate"), "{e}");
    let ca = Ca::from_pem(
        &inter.pem(),
        &key.serialize_pem(),
        Some(root.trust_bundle()),
        "test",
    )
    .unwrap();
    assert_eq!(ca.trust_bundle(), root.trust_bundle());
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let signed = ca
        .sign(
            &leaf_key,
            "spiffe://t/ns/a/sa/b",
            "n",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(signed.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    // A certificate that is not a CA is refused.
    let leaf = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&leaf_key)
        .unwrap();
    let e = Ca::from_pem(&leaf.pem(), &leaf_key.serialize_pem(), None, "test").unwrap_err();
    assert!(e.to_string().contains("not a CA"), "{e}");
}

/// Serves the identity routes on 127.0.0.1:0.
async fn serve(service: Arc<Service>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router(service).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

fn count(result: &str) -> u64 {
    metrics::register()
        .requests
        .with_label_values(&[result])
        .get()
}

#[tokio::test]
async fn the_http_endpoint_bounds_bodies_and_tokens_and_counts_results() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let addr = serve(service).await;
    let url = format!("http://{addr}/api/identity/certificate");
    let http = reqwest::Client::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let body = json!({"node": "node-a", "csr": csr_for(&key, vec![])}).to_string();

    let before = count("issued");
    let r = http
        .post(&url)
        .bearer_auth("bootstrap-token-0123456789")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: CertificateResponse = r.json().await.unwrap();
    assert_eq!(answer.node, "node-a");
    assert!(count("issued") > before);

    let before = count("unauthenticated");
    let r = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(count("unauthenticated") > before);

    let r = http
        .post(&url)
        .bearer_auth("x".repeat(MAX_TOKEN_BYTES + 1))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("longer than"));

    let r = http
        .post(&url)
        .bearer_auth("bootstrap-token-0123456789")
        .body(format!(
            "{{\"node\": \"node-a\", \"csr\": \"{}\"}}",
            "A".repeat(MAX_REQUEST_BYTES)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = http
        .post(&url)
        .bearer_auth("bootstrap-token-0123456789")
        .body(json!({"node": "node-a", "csr": "x", "san": "evil"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = http
        .post(&url)
        .bearer_auth("bootstrap-token-0123456789")
        .body(json!({"node": "node-z", "csr": csr_for(&key, vec![])}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("node \"node-z\""));

    let rows: serde_json::Value = http
        .get(format!("http://{addr}/api/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows[0]["node"], "node-a");
    assert_eq!(
        rows[0]["spiffe_id"],
        "spiffe://mesh.test/ns/maille/sa/maille-proxy"
    );
    assert!(rows[0]["not_after"].as_i64().unwrap() > 0);
    let bundle = http
        .get(format!("http://{addr}/api/identity/trust-bundle"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        bundle.starts_with("-----BEGIN CERTIFICATE-----"),
        "{bundle}"
    );
}

#[tokio::test]
async fn before_the_ca_is_loaded_requests_are_told_to_come_back() {
    let service = Service::new(Config {
        trust_domain: TD.into(),
        lifetime: DEFAULT_LIFETIME,
    });
    let key = rcgen::KeyPair::generate().unwrap();
    let e = service
        .issue("t", &request("node-a", &key))
        .await
        .unwrap_err();
    assert!(matches!(e, Refusal::Unavailable(_)), "{e:?}");
}

/// Two certificates of the mesh authenticate each other in a real mutual TLS handshake on
/// loopback; a certificate of another CA does not.
#[tokio::test]
async fn issued_certificates_pass_a_mutual_tls_handshake_and_foreign_ones_do_not() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let issue = |node: &'static str, service: Arc<Service>| async move {
        let key = rcgen::KeyPair::generate().unwrap();
        let a = service
            .issue("bootstrap-token-0123456789", &request(node, &key))
            .await
            .unwrap();
        let chain = vec![CertificateDer::from(
            ca::pem_der(&a.certificate_chain).unwrap(),
        )];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key, a.trust_bundle)
    };
    let (server_chain, server_key, bundle) = issue("node-a", service.clone()).await;
    let (client_chain, client_key, _) = issue("node-b", service.clone()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca::pem_der(&bundle).unwrap()))
        .unwrap();
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let connect = |chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>| {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)
            .unwrap();
        async move {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("node-a").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
    };
    assert_eq!(connect(client_chain, client_key).await.unwrap(), b"hello");
    // A certificate from another CA, with the same names.
    let foreign = Ca::generate(TD).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let signed = foreign
        .sign(
            &key,
            "spiffe://mesh.test/ns/maille/sa/maille-proxy",
            "node-b",
            Duration::from_secs(60),
        )
        .unwrap();
    let chain = vec![CertificateDer::from(
        ca::pem_der(&signed.chain_pem).unwrap(),
    )];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    assert!(connect(chain, key).await.is_err());
}

mod kubernetes {
    use super::*;
    use crate::testing::fake_api::FakeApi;

    const AUD: &str = "maille";

    fn proxy_labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "maille".to_string()),
            (
                "app.kubernetes.io/component".to_string(),
                "proxy".to_string(),
            ),
        ])
    }

    fn user(ns: &str, sa: &str, pod: &str, uid: &str) -> serde_json::Value {
        json!({
            "username": format!("system:serviceaccount:{ns}:{sa}"),
            "uid": "sa-uid",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
            "extra": {
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": [uid],
            },
        })
    }

    async fn cluster() -> (FakeApi, Arc<Service>) {
        let api = FakeApi::new();
        let proxy = [
            ("app.kubernetes.io/name", "maille"),
            ("app.kubernetes.io/component", "proxy"),
        ];
        api.insert(&pod("maille", "proxy-1", "node-1", &proxy, "maille-proxy"));
        api.insert(&pod("maille", "proxy-2", "node-2", &proxy, "maille-proxy"));
        api.insert(&pod(
            "maille",
            "imposter",
            "node-1",
            &[("app.kubernetes.io/name", "maille")],
            "maille-proxy",
        ));
        api.insert(&pod("shop", "web", "node-1", &[], "web"));
        api.add_token(
            "t-proxy-1",
            &[AUD],
            user("maille", "maille-proxy", "proxy-1", "uid-proxy-1"),
        );
        api.add_token(
            "t-other-aud",
            &["https://kubernetes.default.svc"],
            user("maille", "maille-proxy", "proxy-1", "uid-proxy-1"),
        );
        api.add_token(
            "t-imposter",
            &[AUD],
            user("maille", "maille-proxy", "imposter", "uid-imposter"),
        );
        api.add_token("t-web", &[AUD], user("shop", "web", "web", "uid-web"));
        api.add_token(
            "t-stale",
            &[AUD],
            user(
                "maille",
                "maille-proxy",
                "proxy-1",
                "uid-of-an-older-proxy-1",
            ),
        );
        api.add_token(
            "t-unbound",
            &[AUD],
            json!({"username": "system:serviceaccount:maille:maille-proxy"}),
        );
        let service = Service::new(Config {
            trust_domain: TD.into(),
            lifetime: DEFAULT_LIFETIME,
        });
        let client = api.client();
        let at = secret::SecretRef {
            namespace: "maille".into(),
            name: "maille-mesh-ca".into(),
            create: true,
        };
        let ca = secret::load_or_create(&client, &at, TD).await.unwrap();
        service.install(
            ca,
            Authenticator::Kubernetes {
                client,
                audience: AUD.into(),
                namespace: "maille".into(),
                proxy_labels: proxy_labels(),
            },
        );
        (api, service)
    }

    #[tokio::test]
    async fn a_token_review_and_the_pod_on_the_node_decide_the_identity() {
        let (api, service) = cluster().await;
        let key = rcgen::KeyPair::generate().unwrap();
        let a = service
            .issue("t-proxy-1", &request("node-1", &key))
            .await
            .unwrap();
        assert_eq!(a.spiffe_id, "spiffe://mesh.test/ns/maille/sa/maille-proxy");
        let (sans, ..) = sans_of(&a.certificate_chain);
        assert!(sans.contains(&"DNSName(node-1)".to_string()), "{sans:?}");
        assert!(api
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")));

        let refused = |token: &'static str, node: &'static str| {
            let service = service.clone();
            async move {
                let key = rcgen::KeyPair::generate().unwrap();
                service
                    .issue(token, &request(node, &key))
                    .await
                    .unwrap_err()
            }
        };
        let e = refused("t-proxy-1", "node-2").await;
        assert!(
            matches!(e, Refusal::Forbidden(_)) && e.to_string().contains("runs on node \"node-1\""),
            "{e}"
        );
        let e = refused("t-other-aud", "node-1").await;
        assert!(
            matches!(e, Refusal::Unauthenticated(_)) && e.to_string().contains("audiences"),
            "{e}"
        );
        let e = refused("t-nobody", "node-1").await;
        assert!(matches!(e, Refusal::Unauthenticated(_)), "{e}");
        let e = refused("t-imposter", "node-1").await;
        assert!(
            matches!(e, Refusal::Forbidden(_)) && e.to_string().contains("not a proxy pod"),
            "{e}"
        );
        let e = refused("t-web", "node-1").await;
        assert!(
            matches!(e, Refusal::Forbidden(_)) && e.to_string().contains("mesh namespace"),
            "{e}"
        );
        let e = refused("t-stale", "node-1").await;
        assert!(
            matches!(e, Refusal::Forbidden(_)) && e.to_string().contains("replaced"),
            "{e}"
        );
        let e = refused("t-unbound", "node-1").await;
        assert!(
            matches!(e, Refusal::Forbidden(_)) && e.to_string().contains("not bound to a pod"),
            "{e}"
        );
        let rows = service.identities();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].pod, "maille/proxy-1");
    }

    #[tokio::test]
    async fn the_ca_secret_is_created_once_and_read_back() {
        let api = FakeApi::new();
        let client = api.client();
        let at = secret::SecretRef {
            namespace: "maille".into(),
            name: "maille-mesh-ca".into(),
            create: true,
        };
        let first = secret::load_or_create(&client, &at, TD).await.unwrap();
        let again = secret::load_or_create(&client, &at, TD).await.unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        let writes = api.writes();
        assert_eq!(
            writes,
            vec!["POST secrets maille/maille-mesh-ca".to_string()]
        );
        let s: k8s_openapi::api::core::v1::Secret = api.get("maille", "maille-mesh-ca").unwrap();
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        // Supplied by the user and missing: a clear error, nothing written.
        let user = secret::SecretRef {
            name: "from-cert-manager".into(),
            create: false,
            ..at
        };
        let e = secret::load_or_create(&client, &user, TD)
            .await
            .unwrap_err();
        assert!(
            e.contains("maille/from-cert-manager") && e.contains("does not exist"),
            "{e}"
        );
        assert_eq!(api.writes().len(), 1);
    }

    #[tokio::test]
    async fn the_roots_are_published_in_a_configmap_for_proxies_to_pin() {
        let api = FakeApi::new();
        let client = api.client();
        let ca = Ca::generate(TD).unwrap();
        trust::apply(
            &client,
            "maille",
            "maille-identity-trust",
            ca.trust_bundle(),
        )
        .await
        .unwrap();
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            api.get("maille", "maille-identity-trust").unwrap();
        assert_eq!(
            cm.data.unwrap().get(trust::KEY).map(String::as_str),
            Some(ca.trust_bundle())
        );
        // Edited by someone: the next apply puts the roots back.
        let forged = Ca::generate(TD).unwrap();
        trust::apply(
            &client,
            "maille",
            "maille-identity-trust",
            forged.trust_bundle(),
        )
        .await
        .unwrap();
        trust::apply(
            &client,
            "maille",
            "maille-identity-trust",
            ca.trust_bundle(),
        )
        .await
        .unwrap();
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            api.get("maille", "maille-identity-trust").unwrap();
        assert_eq!(
            cm.data.unwrap().get(trust::KEY).map(String::as_str),
            Some(ca.trust_bundle())
        );
        assert!(
            api.writes()
                .iter()
                .all(|w| w.contains("configmaps maille/maille-identity-trust")),
            "{:?}",
            api.writes()
        );
    }
}

/// The identity routes on a real TLS listener (127.0.0.1:0) with a server certificate of the
/// service's CA, and the plain API's identity routes on another port: (TLS, plain) addresses.
async fn serve_both(
    service: Arc<Service>,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    Arc<tls::ServerCert>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names = tls::san_list(&["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = tls::ServerCert::new(names);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(tls::keep_renewed(
        service.clone(),
        cert.clone(),
        stop.clone(),
    ));
    tokio::spawn(tls::serve(
        listener,
        tls::server_config(cert.clone()),
        router(service.clone()),
        stop,
    ));
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let app = plain_router(service, tls::local_url(addr));
    tokio::spawn(async move {
        axum::serve(
            plain,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    for _ in 0..100 {
        if cert.not_after().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, plain_addr, cert)
}

fn post(token: Option<&str>, body: String) -> http::Request<String> {
    let mut r = http::Request::post("/api/identity/certificate")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(body).unwrap()
}

#[tokio::test]
async fn certificates_are_served_over_tls_only_and_the_plain_api_refuses_without_reading() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let roots = service.ca().unwrap().trust_bundle().to_string();
    let (addr, plain, cert) = serve_both(service.clone()).await;
    assert!(cert.not_after().is_some(), "a server certificate was made");
    let key = rcgen::KeyPair::generate().unwrap();
    let body = json!({"node": "node-a", "csr": csr_for(&key, vec![])}).to_string();

    // Over TLS, verified against the mesh root: issued to the bootstrap token, refused (401,
    // 403) otherwise, nothing issued then.
    let issued = || service.identities().iter().map(|r| r.issued).sum::<u64>();
    let (status, text) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        post(Some("bootstrap-token-0123456789"), body.clone()),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let answer: CertificateResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.node, "node-a");
    assert_eq!(answer.trust_bundle, roots);
    assert_eq!(issued(), 1);
    let (status, text) = tls::request(addr, "localhost", &roots, post(None, body.clone()))
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    let (status, text) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        post(Some("someone-elses-token-000"), body.clone()),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not the bootstrap token"), "{text}");
    let other = json!({"node": "node-c", "csr": csr_for(&key, vec![])}).to_string();
    let (status, text) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        post(Some("bootstrap-token-0123456789"), other),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{text}");
    assert_eq!(issued(), 1, "nothing issued for refusals");
    let (status, text) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        http::Request::get("/api/identity/trust-bundle")
            .header("host", "x")
            .body(String::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((status, text.as_str()), (200, roots.as_str()));

    // Hostile input over TLS: an oversized body (413), garbage CSR (400), an oversized header
    // of 1 MiB (closed or 431: request heads are read into at most 64 KiB); nothing issued.
    let (status, _) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        post(
            Some("bootstrap-token-0123456789"),
            "x".repeat(MAX_REQUEST_BYTES + 1),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 413);
    let garbage = json!({"node": "node-a", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}).to_string();
    let (status, text) = tls::request(
        addr,
        "127.0.0.1",
        &roots,
        post(Some("bootstrap-token-0123456789"), garbage),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("csr"), "{text}");
    let mut huge = post(Some("bootstrap-token-0123456789"), body.clone());
    huge.headers_mut()
        .insert("x-filler", "y".repeat(1024 * 1024).parse().unwrap());
    // Closed by the server (Err), or answered 431.
    if let Ok((status, _)) = tls::request(addr, "127.0.0.1", &roots, huge).await {
        assert_eq!(status, 431);
    }
    assert_eq!(issued(), 1, "nothing issued for hostile requests");

    // A client pinned to another root refuses the listener during the handshake.
    let foreign = Ca::generate(TD).unwrap();
    let e = tls::request(
        addr,
        "127.0.0.1",
        foreign.trust_bundle(),
        post(Some("bootstrap-token-0123456789"), body.clone()),
    )
    .await
    .unwrap_err();
    // (Its root copies the mesh root's name: the signature is what fails.)
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
    // A name the certificate does not carry.
    let e = tls::request(
        addr,
        "maille-controller.maille.svc",
        &roots,
        post(None, body.clone()),
    )
    .await
    .unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");
    // Not TLS at all: closed, counted.
    let before = metrics::register()
        .tls_refused
        .with_label_values(&["handshake"])
        .get();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/identity/certificate"))
        .bearer_auth("bootstrap-token-0123456789")
        .body(body.clone())
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
    assert!(
        metrics::register()
            .tls_refused
            .with_label_values(&["handshake"])
            .get()
            > before
    );

    // The plain API: 403 naming the TLS URL, the body never read, counted; the list of
    // identities stays public.
    let before = count("cleartext");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{plain}/api/identity/certificate"))
        .bearer_auth("bootstrap-token-0123456789")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(&format!("https://{addr}")) && text.contains("TLS only"),
        "{text}"
    );
    let r = http
        .get(format!("http://{plain}/api/identity/trust-bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(count("cleartext") >= before + 2);
    assert_eq!(issued(), 1);
    let rows: serde_json::Value = http
        .get(format!("http://{plain}/api/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows[0]["node"], "node-a");
}

#[tokio::test]
async fn the_server_certificate_names_the_server_only_and_is_renewed_at_half_its_life() {
    use x509_parser::extensions::GeneralName;
    let (service, _tx) = local_service(Duration::from_secs(2));
    let (_addr, _plain, cert) = serve_both(service.clone()).await;
    let first = cert.not_after().unwrap();
    let ca = service.ca().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names =
        tls::san_list(&["127.0.0.1".into(), "maille-controller.maille.svc".into()]).unwrap();
    let signed = ca
        .sign_server(&key, &names, Duration::from_secs(60))
        .unwrap();
    let der = ca::pem_der(&signed.chain_pem).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = x
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert!(
        sans.iter().all(|n| !matches!(n, GeneralName::URI(_))),
        "no SPIFFE ID: {sans:?}"
    );
    assert!(sans.contains(&GeneralName::DNSName("maille-controller.maille.svc")));
    assert!(sans
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])));
    let eku = x.extended_key_usage().unwrap().unwrap().value.clone();
    assert!(
        eku.server_auth && !eku.client_auth,
        "server authentication only"
    );
    // Two-second certificates: a new one within about a second, and again after.
    let mut seen = vec![first];
    let start = std::time::Instant::now();
    while seen.len() < 3 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cert.not_after().unwrap();
        if *seen.last().unwrap() != now {
            seen.push(now);
        }
    }
    assert!(seen.len() >= 3, "renewed twice: {seen:?}");
    assert!(metrics::register().server_expiry.get() >= *seen.last().unwrap() - 1);
}

#[test]
fn server_names_are_checked_and_a_root_must_be_in_the_bundle_it_serves() {
    let e = tls::san_list(&["bad name!".into()]).unwrap_err();
    assert!(
        e.to_string().contains("--identity-server-names") && e.to_string().contains("bad name!"),
        "{e}"
    );
    assert!(tls::san_list(&[" ".into()]).is_err());
    assert_eq!(
        tls::san_list(&["a.b".into(), "a.b".into(), "::1".into()])
            .unwrap()
            .len(),
        2
    );
    // Rotation: the Secret's ca.crt lists the new signing root and the old one.
    let old = Ca::generate(TD).unwrap();
    let new = Ca::generate(TD).unwrap();
    let both = format!("{}{}", new.cert_pem(), old.cert_pem());
    let ca = Ca::from_pem(
        new.cert_pem(),
        &new.key_pem(),
        Some(&both),
        "Secret maille/ca",
    )
    .unwrap();
    assert_eq!(ca.trust_bundle().matches("BEGIN CERTIFICATE").count(), 2);
    // A bundle without the signing root would make every proxy refuse what it signs.
    let e = Ca::from_pem(
        new.cert_pem(),
        &new.key_pem(),
        Some(old.cert_pem()),
        "Secret maille/ca",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("Secret maille/ca")
            && e.to_string().contains("does not hold the signing root"),
        "{e}"
    );
    // Locally: ca.crt with the new root first, the old one after, serves both.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), &both).unwrap();
    std::fs::write(dir.path().join(ca::CA_KEY_FILE), new.key_pem()).unwrap();
    let (local, _) = Ca::load_or_create_dir(dir.path(), TD).unwrap();
    assert_eq!(local.trust_bundle().matches("BEGIN CERTIFICATE").count(), 2);
}

mod rotation;
