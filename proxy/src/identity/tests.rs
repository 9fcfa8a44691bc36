use super::*;

fn identity() -> Arc<Identity> {
    Identity::new(
        "node-a",
        PathBuf::from("/nonexistent/token"),
        "http://127.0.0.1:1",
    )
    .unwrap()
}

/// A CA and a certificate it signs for `key`, naming `spiffe` and `node`, valid `secs`.
fn signed(key: &rcgen::KeyPair, spiffe: &str, node: &str, secs: i64) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![
        rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe.to_string()).unwrap()),
        rcgen::SanType::DnsName(rcgen::Ia5String::try_from(node.to_string()).unwrap()),
    ];
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::seconds(60);
    leaf.not_after = now + time::Duration::seconds(secs);
    let leaf = leaf.signed_by(key, &ca, &ca_key).unwrap();
    (leaf.pem(), ca.pem())
}

fn answer(chain: String, bundle: String, node: &str) -> Answer {
    Answer {
        spiffe_id: "spiffe://t/ns/maille/sa/proxy".into(),
        node: node.into(),
        certificate_chain: chain,
        trust_bundle: bundle,
    }
}

#[test]
fn an_answer_is_taken_only_for_this_key_this_node_and_while_valid() {
    let id = identity();
    let uri: Uri = "http://c/api/identity/certificate".parse().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain, bundle) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", 3600);
    let held = id
        .accept(&uri, answer(chain.clone(), bundle.clone(), "node-a"), key)
        .unwrap();
    assert_eq!(held.node, "node-a");
    assert_eq!(held.chain.len(), 1);
    assert_eq!(held.trust_bundle.len(), 1);
    assert!(held.not_after > unix_now() + 3500);
    assert!(held.renew_at() > unix_now() + 1700 && held.renew_at() < unix_now() + 1900);

    // Signed for another key (someone else's certificate).
    let other = rcgen::KeyPair::generate().unwrap();
    let e = id
        .accept(&uri, answer(chain.clone(), bundle.clone(), "node-a"), other)
        .unwrap_err();
    assert!(e.to_string().contains("not for the key sent"), "{e}");
    // For another node.
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain_b, bundle_b) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-b", 3600);
    let e = id
        .accept(&uri, answer(chain_b, bundle_b, "node-a"), key)
        .unwrap_err();
    assert!(e.to_string().contains("not \"node-a\""), "{e}");
    // Expired.
    let key = rcgen::KeyPair::generate().unwrap();
    let (old, old_bundle) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", -10);
    let e = id
        .accept(&uri, answer(old, old_bundle, "node-a"), key)
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // No trust bundle, garbage chain.
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain, _) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", 3600);
    assert!(id
        .accept(&uri, answer(chain, String::new(), "node-a"), key)
        .is_err());
    let key = rcgen::KeyPair::generate().unwrap();
    assert!(id
        .accept(&uri, answer("junk".into(), bundle, "node-a"), key)
        .is_err());
}

#[test]
fn ready_detail_warns_in_the_last_quarter_and_after_expiry() {
    let id = identity();
    assert!(id
        .ready_detail()
        .contains("no certificate yet for node node-a"));
    let held = |received: i64, not_after: i64| {
        Arc::new(Held {
            spiffe_id: "spiffe://t/ns/maille/sa/proxy".into(),
            node: "node-a".into(),
            chain: vec![],
            key: PrivatePkcs8KeyDer::from(vec![]),
            trust_bundle: vec![],
            not_before: received - 60,
            not_after,
            received,
        })
    };
    let now = unix_now();
    id.current.store(Some(held(now, now + 100)));
    let d = id.ready_detail();
    assert!(d.contains("expires in") && !d.contains("WARNING"), "{d}");
    id.current.store(Some(held(now - 80, now + 20)));
    assert!(
        id.ready_detail().contains("WARNING"),
        "{}",
        id.ready_detail()
    );
    id.current.store(Some(held(now - 100, now - 5)));
    assert!(id.ready_detail().contains("EXPIRED"));
}

#[tokio::test]
async fn token_files_are_bounded_and_failures_keep_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x".repeat(MAX_TOKEN_BYTES as usize + 1)).unwrap();
    let id = Identity::new("node-a", token.clone(), "http://127.0.0.1:1").unwrap();
    let e = id.renew().await.unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    std::fs::write(&token, "  \n").unwrap();
    assert!(id.renew().await.unwrap_err().to_string().contains("empty"));
    // A controller that is not there: unreachable, and the certificate held stays.
    std::fs::write(&token, "t0ken\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain, bundle) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", 3600);
    let uri: Uri = "http://c/".parse().unwrap();
    let held = Arc::new(
        id.accept(&uri, answer(chain, bundle, "node-a"), key)
            .unwrap(),
    );
    id.current.store(Some(held.clone()));
    let e = id.renew().await.unwrap_err();
    assert_eq!(e.label(), "unreachable", "{e}");
    assert!(Arc::ptr_eq(&id.current().unwrap(), &held));
    assert!(id.ready_detail().contains("requests failing"));
}

#[test]
fn controller_urls_must_be_http() {
    assert!(Identity::new("n", PathBuf::from("t"), "https://c:9000").is_err());
    assert!(Identity::new("n", PathBuf::from("t"), "").is_err());
    assert!(Identity::new("", PathBuf::from("t"), "http://c").is_err());
    let id = Identity::new("n", PathBuf::from("t"), "http://a:9000/, http://b:9000").unwrap();
    assert_eq!(
        id.uris[1].to_string(),
        "http://b:9000/api/identity/certificate"
    );
}
