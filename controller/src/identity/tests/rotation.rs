//! The CA changing while the controller runs: what a new CA must be, what changes when one is
//! applied (node certificates, the roots served and published, the identity listener's own
//! certificate) and what stays when one is refused; the Secret followed through a watch (the
//! fake API server) and the identity folder through its files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::testing::{eventually, FakeApi};

const TOKEN: &str = "bootstrap-token-0123456789";
const ORIGIN: &str = "Secret maille/mesh-ca";

/// A self-signed certificate and its key (PEM): a CA or not, valid from `from` to `to` days
/// from now.
fn self_signed(is_ca: bool, from: i64, to: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test root");
    p.is_ca = if is_ca {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        rcgen::IsCa::ExplicitNoCa
    };
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from);
    p.not_after = now + time::Duration::days(to);
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// Whether the node certificate at the head of `chain_pem` verifies against `roots_pem` alone,
/// for `node`.
fn verifies(chain_pem: &str, roots_pem: &str, node: &str) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(node.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// A certificate the service signs for a proxy of `node` (a new key).
async fn issue_for(service: &Service, node: &str) -> CertificateResponse {
    let key = rcgen::KeyPair::generate().unwrap();
    service.issue(TOKEN, &request(node, &key)).await.unwrap()
}

fn ca_secret(cert: &str, key: &str, bundle: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (
            ca::SECRET_CERT_KEY.to_string(),
            ByteString(cert.as_bytes().to_vec()),
        ),
        (
            ca::SECRET_KEY_KEY.to_string(),
            ByteString(key.as_bytes().to_vec()),
        ),
    ]);
    if let Some(b) = bundle {
        data.insert(
            ca::SECRET_BUNDLE_KEY.to_string(),
            ByteString(b.as_bytes().to_vec()),
        );
    }
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("mesh-ca".into()),
            namespace: Some("maille".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[test]
fn an_invalid_ca_is_refused_naming_the_secret_the_key_and_the_reason() {
    let good = Ca::generate(TD).unwrap();
    let other = Ca::generate(TD).unwrap();
    let (expired, expired_key) = self_signed(true, -30, -1);
    let (future, future_key) = self_signed(true, 2, 30);
    let (leaf, leaf_key) = self_signed(false, -1, 30);
    let huge = format!("{}{}", good.cert_pem(), "#".repeat(ca::MAX_PEM_BYTES));
    let with_leaf = format!("{}{leaf}", good.cert_pem());
    let too_long = format!(
        "tls.crt: {} bytes, more than the {} accepted",
        huge.len(),
        ca::MAX_PEM_BYTES
    );
    let mut not_text = ca_secret(good.cert_pem(), &good.key_pem(), None);
    not_text.data.as_mut().unwrap().insert(
        ca::SECRET_KEY_KEY.to_string(),
        ByteString(vec![0xff, 0xfe, 0x00]),
    );
    let cases: Vec<(&str, Secret, &str)> = vec![
        (
            "bad PEM",
            ca_secret(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &good.key_pem(),
                None,
            ),
            "tls.crt: not a PEM certificate",
        ),
        (
            "not a key",
            ca_secret(good.cert_pem(), "hello", None),
            "tls.key: not a private key",
        ),
        (
            "the key of another CA",
            ca_secret(good.cert_pem(), &other.key_pem(), None),
            "tls.key: the private key does not belong to the certificate of tls.crt",
        ),
        (
            "expired",
            ca_secret(&expired, &expired_key, None),
            "tls.crt: the certificate expired",
        ),
        (
            "not valid yet",
            ca_secret(&future, &future_key, None),
            "tls.crt: the certificate is not valid yet",
        ),
        (
            "not a CA",
            ca_secret(&leaf, &leaf_key, None),
            "tls.crt: the certificate is not a CA",
        ),
        ("huge", ca_secret(&huge, &good.key_pem(), None), &too_long),
        (
            "a bundle without the signer",
            ca_secret(good.cert_pem(), &good.key_pem(), Some(other.cert_pem())),
            "does not hold the signing root (tls.crt)",
        ),
        (
            "a bundle with a certificate that is not a CA",
            ca_secret(good.cert_pem(), &good.key_pem(), Some(&with_leaf)),
            "ca.crt: certificate 2 (CN=test root) is not a CA",
        ),
        (
            "two roots on one line",
            ca_secret(
                good.cert_pem(),
                &good.key_pem(),
                Some(&format!(
                    "{}{}",
                    good.cert_pem().trim_end(),
                    other.cert_pem()
                )),
            ),
            "ca.crt: 2 PEM blocks written but 1 certificates read",
        ),
        (
            "a bundle that is not PEM",
            ca_secret(good.cert_pem(), &good.key_pem(), Some("roots")),
            "ca.crt: no PEM certificate",
        ),
        (
            "no key",
            Secret {
                data: Some(BTreeMap::from([(
                    "tls.crt".to_string(),
                    ByteString(good.cert_pem().as_bytes().to_vec()),
                )])),
                ..ca_secret("", "", None)
            },
            "no tls.key key",
        ),
        ("not text", not_text, "tls.key: not UTF-8 text"),
    ];
    for (case, s, want) in cases {
        let e = secret::from_secret(&s, ORIGIN).unwrap_err();
        assert!(e.contains(ORIGIN), "{case}: {e}");
        assert!(e.contains(want), "{case}: {e}");
    }
    // The same checks for the identity folder name its files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), good.cert_pem()).unwrap();
    std::fs::write(dir.path().join(ca::CA_KEY_FILE), other.key_pem()).unwrap();
    let e = Ca::read_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().display().to_string())
            && e.contains("ca.key: the private key does not belong to the certificate of ca.crt"),
        "{e}"
    );
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), &huge).unwrap();
    let e = Ca::read_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("ca.crt: 262145 bytes, more than"), "{e}");
}

#[tokio::test]
async fn a_new_ca_signs_at_once_the_listener_follows_and_an_invalid_one_leaves_it() {
    let (service, _tx) = local_service(Duration::from_secs(3600));
    let (addr, _plain, _cert) = serve_both(service.clone()).await;
    let old = service.ca().unwrap();
    let new = Ca::generate(TD).unwrap();
    let both = format!("{}{}", new.cert_pem(), old.cert_pem());
    let bundle_trusting = async |roots: &str| {
        let get = http::Request::get("/api/identity/trust-bundle")
            .header("host", "127.0.0.1")
            .body(String::new())
            .unwrap();
        tls::request(addr, "127.0.0.1", roots, get).await
    };
    assert!(
        bundle_trusting(new.cert_pem()).await.is_err(),
        "the listener's certificate is the old CA's"
    );
    let m = metrics::register();
    let (applied, refused) = (
        m.ca_changes.with_label_values(&["applied"]).get(),
        m.ca_changes.with_label_values(&["refused"]).get(),
    );

    let offered = Ca::from_pem(new.cert_pem(), &new.key_pem(), Some(&both), ORIGIN);
    assert_eq!(
        service.offer_ca(offered.map_err(|e| e.to_string()), ORIGIN),
        Offer::Applied
    );
    assert!(m.ca_changes.with_label_values(&["applied"]).get() > applied);
    // Node certificates: signed by the new root, with both roots in the answer.
    let a = issue_for(&service, "node-a").await;
    assert!(verifies(&a.certificate_chain, new.cert_pem(), "node-a"));
    assert!(!verifies(&a.certificate_chain, old.cert_pem(), "node-a"));
    assert!(verifies(&a.certificate_chain, &a.trust_bundle, "node-a"));
    assert_eq!(a.trust_bundle, format!("{}\n", both.trim()));
    // The listener presents a certificate of the new CA within moments, and serves both roots.
    let (status, body) = eventually(
        "the identity listener re-issued by the new CA",
        Duration::from_secs(10),
        async || bundle_trusting(new.cert_pem()).await.ok(),
    )
    .await;
    assert_eq!((status, body.trim()), (200, both.trim()));

    // The same CA again changes nothing.
    let again = Ca::from_pem(new.cert_pem(), &new.key_pem(), Some(&both), ORIGIN);
    assert_eq!(
        service.offer_ca(again.map_err(|e| e.to_string()), ORIGIN),
        Offer::Unchanged
    );
    // An invalid one is refused with its reason and the CA held keeps signing.
    let other = Ca::generate(TD).unwrap();
    let bad = secret::from_secret(&ca_secret(other.cert_pem(), &new.key_pem(), None), ORIGIN);
    let Offer::Refused(reason) = service.offer_ca(bad, ORIGIN) else {
        panic!("a key of another CA is applied");
    };
    assert!(reason.contains("does not belong"), "{reason}");
    assert_eq!(service.last_ca_refusal(), Some(reason));
    assert!(m.ca_changes.with_label_values(&["refused"]).get() > refused);
    assert_eq!(service.ca().unwrap().cert_pem(), new.cert_pem());
    let a = issue_for(&service, "node-b").await;
    assert!(verifies(&a.certificate_chain, new.cert_pem(), "node-b"));
    assert!(bundle_trusting(new.cert_pem()).await.is_ok());
}

#[tokio::test]
async fn the_identity_folder_is_followed_and_a_half_written_ca_waits_for_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Ca::load_or_create_dir(dir.path(), TD).unwrap();
    let (service, _tx) = local_service(Duration::from_secs(3600));
    // The service signs with the folder's CA, as the controller's start makes it.
    let held = Ca::read_dir(dir.path()).unwrap();
    service.offer_ca(Ok(held), "start");
    let stop = CancellationToken::new();
    tokio::spawn(reload::follow_dir(
        service.clone(),
        dir.path().to_path_buf(),
        stop.clone(),
    ));
    let signer = || service.ca().unwrap().cert_pem().to_string();
    assert_eq!(signer(), first.cert_pem());

    // Step 1: the new root after the signer: trusted, not yet signing.
    let new = Ca::generate(TD).unwrap();
    let write = |file: &str, text: &str| {
        let tmp = dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.path().join(file)).unwrap();
    };
    write(
        ca::CA_CERT_FILE,
        &format!("{}{}", first.cert_pem(), new.cert_pem()),
    );
    eventually("both roots served", Duration::from_secs(10), async || {
        (service.ca()?.roots().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        service.ca().unwrap().signer_root(),
        service.ca().unwrap().roots()[0].as_slice()
    );
    // Step 2, written as two files: the certificate first (its key does not match yet: refused,
    // the CA held stays), then the key.
    write(
        ca::CA_CERT_FILE,
        &format!("{}{}", new.cert_pem(), first.cert_pem()),
    );
    eventually(
        "the half-written CA refused",
        Duration::from_secs(10),
        async || service.last_ca_refusal().filter(|r| r.contains("ca.key")),
    )
    .await;
    assert!(service
        .ca()
        .unwrap()
        .cert_pem()
        .starts_with(first.cert_pem().trim()));
    write(ca::CA_KEY_FILE, &new.key_pem());
    eventually(
        "signing with the new root",
        Duration::from_secs(10),
        async || {
            service
                .ca()
                .filter(|c| c.cert_pem().starts_with(new.cert_pem().trim()))
        },
    )
    .await;
    let a = issue_for(&service, "node-a").await;
    assert!(verifies(&a.certificate_chain, new.cert_pem(), "node-a"));
    assert_eq!(a.trust_bundle.matches("BEGIN CERTIFICATE").count(), 2);
    stop.cancel();
}

#[tokio::test]
async fn the_ca_secret_is_followed_through_rotation_a_bad_secret_and_a_410() {
    let api = FakeApi::new();
    let client = api.client();
    let at = secret::SecretRef {
        namespace: "maille".into(),
        name: "mesh-ca".into(),
        create: true,
    };
    // Another Secret of the namespace, which the watch must not see.
    let unrelated = Ca::generate(TD).unwrap();
    let mut s = ca_secret(unrelated.cert_pem(), &unrelated.key_pem(), None);
    s.metadata.name = Some("something-else".into());
    api.insert(&s);
    let service = Service::new(Config {
        trust_domain: TD.into(),
        lifetime: DEFAULT_LIFETIME,
    });
    let stop = CancellationToken::new();
    tokio::spawn(run_kubernetes(
        service.clone(),
        client,
        at,
        "maille".into(),
        BTreeMap::new(),
        "maille-identity-trust".into(),
        stop.clone(),
    ));
    let first = eventually("the CA created", Duration::from_secs(10), async || {
        service.ca()
    })
    .await;
    let published = async |want: String| {
        eventually("the roots published", Duration::from_secs(10), async || {
            let cm: ConfigMap = api.get("maille", "maille-identity-trust")?;
            (cm.data?.get(trust::KEY)? == &want).then_some(())
        })
        .await
    };
    published(first.trust_bundle().to_string()).await;
    let update =
        |cert: &str, key: &str, bundle: Option<&str>| api.insert(&ca_secret(cert, key, bundle));

    // Step 1: the new root joins ca.crt; the signer stays.
    let new = Ca::generate(TD).unwrap();
    let both = format!("{}{}", first.cert_pem(), new.cert_pem());
    update(first.cert_pem(), &first.key_pem(), Some(&both));
    eventually("both roots served", Duration::from_secs(10), async || {
        (service.ca()?.roots().len() == 2).then_some(())
    })
    .await;
    assert_eq!(service.ca().unwrap().cert_pem(), first.cert_pem());
    published(format!("{}\n", both.trim())).await;

    // Step 2: the new root signs.
    update(new.cert_pem(), &new.key_pem(), Some(&both));
    eventually(
        "signing with the new root",
        Duration::from_secs(10),
        async || service.ca().filter(|c| c.cert_pem() == new.cert_pem()),
    )
    .await;
    let key = rcgen::KeyPair::generate().unwrap();
    let signed = service
        .ca()
        .unwrap()
        .sign(
            &key,
            &spiffe_id(TD, "maille", "maille-proxy"),
            "node-1",
            DEFAULT_LIFETIME,
        )
        .unwrap();
    assert!(verifies(&signed.chain_pem, new.cert_pem(), "node-1"));

    // A bad Secret: refused with the Secret, the key and the reason; the CA held stays.
    let other = Ca::generate(TD).unwrap();
    update(other.cert_pem(), &new.key_pem(), Some(&both));
    let reason = eventually(
        "the bad Secret refused",
        Duration::from_secs(10),
        async || service.last_ca_refusal(),
    )
    .await;
    assert!(
        reason.contains(ORIGIN) && reason.contains("tls.key") && reason.contains("does not belong"),
        "{reason}"
    );
    assert_eq!(service.ca().unwrap().cert_pem(), new.cert_pem());

    // History compacted and the watch cut: the resumed watch gets 410 Gone, the Secret is
    // listed again, and a change made meanwhile is applied.
    let lists = || {
        api.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /api/v1/namespaces/maille/secrets?") && !r.contains("watch=true")
            })
            .count()
    };
    let listed = lists();
    let newer = Ca::generate(TD).unwrap();
    let bundle = format!("{}{}", newer.cert_pem(), new.cert_pem());
    update(newer.cert_pem(), &newer.key_pem(), Some(&bundle));
    api.compact();
    api.end_watches();
    eventually(
        "the change after the 410 applied",
        Duration::from_secs(15),
        async || service.ca().filter(|c| c.cert_pem() == newer.cert_pem()),
    )
    .await;
    assert!(lists() > listed, "relisted after 410: {:?}", api.requests());
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.contains("secrets"))
            .all(|r| !r.contains("watch=true") || r.contains("fieldSelector=metadata.name")),
        "the watch is of the CA Secret only: {:?}",
        api.requests()
    );
    published(format!("{}\n", bundle.trim())).await;

    // Deleted: the CA held keeps signing.
    api.remove::<Secret>("maille", "mesh-ca");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.ca().unwrap().cert_pem(), newer.cert_pem());
    stop.cancel();
}
