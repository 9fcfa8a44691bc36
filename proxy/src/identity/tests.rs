use super::*;
use std::net::SocketAddr;

fn identity() -> Arc<Identity> {
    Identity::new(
        "node-a",
        PathBuf::from("/nonexistent/token"),
        "https://127.0.0.1:1",
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
    let uri: Uri = "https://c/api/identity/certificate".parse().unwrap();
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
    let id = Identity::new("node-a", token.clone(), "https://127.0.0.1:1").unwrap();
    let e = id.renew().await.unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    std::fs::write(&token, "  \n").unwrap();
    assert!(id.renew().await.unwrap_err().to_string().contains("empty"));
    // A controller that is not there: unreachable, and the certificate held stays.
    std::fs::write(&token, "t0ken\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain, bundle) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", 3600);
    std::fs::write(dir.path().join(ANCHOR_FILE), &bundle).unwrap();
    let uri: Uri = "https://c/".parse().unwrap();
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
fn identity_urls_must_be_https() {
    for bad in ["http://c:9443", "", "ftp://c", "https://"] {
        let e = parse_urls(bad, "--identity-url").unwrap_err();
        assert!(e.to_string().starts_with("--identity-url"), "{e}");
    }
    let e = parse_urls("http://c:9000", "--identity-url").unwrap_err();
    assert!(e.to_string().contains("TLS only"), "{e}");
    let uris = parse_urls("https://a:9443/, https://b:9443", "--identity-url").unwrap();
    assert_eq!(
        uris[1].to_string(),
        "https://b:9443/api/identity/certificate"
    );
    assert!(Identity::new("", PathBuf::from("t"), "https://c").is_err());
}

/// The identity server side of the tests: a real TLS listener on loopback presenting `chain`,
/// answering every request with `status` and `body`, and keeping each request head it read.
mod server {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Ca {
        pub cert: rcgen::Certificate,
        pub key: rcgen::KeyPair,
    }

    pub fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate of `ca` for `sans` (IP addresses or URIs).
    pub fn server_cert(
        ca: &Ca,
        sans: Vec<rcgen::SanType>,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = sans;
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert.der().clone(), key)
    }

    pub struct Server {
        pub url: String,
        pub heads: Arc<Mutex<Vec<String>>>,
    }

    pub async fn start(
        cert: (CertificateDer<'static>, rcgen::KeyPair),
        status: u16,
        body: &'static str,
    ) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.0],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.1.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = tls
                        .write_all(
                            format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Server { url, heads }
    }
}

#[tokio::test]
async fn the_identity_server_must_verify_against_the_pinned_roots_before_the_token_goes() {
    use server::*;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token-0123456789\n").unwrap();
    let mesh = ca("mesh root");
    let ip = rcgen::SanType::IpAddress([127, 0, 0, 1].into());
    // A server of the mesh CA that refuses (403): reaching its answer proves verification
    // passed and the token went, over TLS.
    let good = start(server_cert(&mesh, vec![ip.clone()]), 403, "not a proxy pod").await;
    let anchor = dir.path().join("roots.pem");
    std::fs::write(&anchor, mesh.cert.pem()).unwrap();
    let id =
        Identity::with_anchor("node-a", token.clone(), &good.url, Some(anchor.clone())).unwrap();
    let e = id.renew().await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("not a proxy pod"), "{e}");
    let heads = good.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].contains("authorization: Bearer secret-token-0123456789"),
        "{heads:?}"
    );

    // A proxy holding a certificate, pinned to another root: the server is refused during the
    // handshake, named with the failure; the token never leaves; the certificate stays.
    let key = rcgen::KeyPair::generate().unwrap();
    let (chain, bundle) = signed(&key, "spiffe://t/ns/maille/sa/proxy", "node-a", 3600);
    let uri: Uri = "https://c/".parse().unwrap();
    let held = Arc::new(
        id.accept(&uri, answer(chain, bundle, "node-a"), key)
            .unwrap(),
    );
    id.current.store(Some(held.clone()));
    let other = ca("someone else");
    let impostor = start(server_cert(&other, vec![ip.clone()]), 200, "{}").await;
    let wrong = Identity::with_anchor("node-a", token.clone(), &impostor.url, Some(anchor.clone()))
        .unwrap();
    wrong.current.store(Some(held.clone()));
    let before = crate::metrics::register()
        .identity_failures
        .with_label_values(&["untrusted"])
        .get();
    let e = wrong.renew().await.unwrap_err();
    assert_eq!(e.label(), "untrusted", "{e}");
    let text = e.to_string();
    assert!(text.contains(&impostor.url), "names the server: {text}");
    assert!(
        text.contains("UnknownIssuer") && text.contains("not signed by a root"),
        "{text}"
    );
    assert!(
        text.contains(&anchor.display().to_string()) && text.contains("1 root"),
        "{text}"
    );
    assert!(text.contains("the token was not sent"), "{text}");
    assert!(
        impostor.heads.lock().unwrap().is_empty(),
        "nothing reached the impostor"
    );
    assert!(
        Arc::ptr_eq(&wrong.current().unwrap(), &held),
        "the certificate held stays"
    );
    assert!(
        wrong.ready_detail().contains("does not verify"),
        "{}",
        wrong.ready_detail()
    );
    assert!(
        crate::metrics::register()
            .identity_failures
            .with_label_values(&["untrusted"])
            .get()
            > before
    );

    // A node certificate of the mesh (it carries a SPIFFE ID) is not the identity server,
    // even for a name the proxy dials.
    let node = start(
        server_cert(
            &mesh,
            vec![
                ip.clone(),
                rcgen::SanType::URI(
                    rcgen::Ia5String::try_from("spiffe://t/ns/maille/sa/proxy").unwrap(),
                ),
            ],
        ),
        200,
        "{}",
    )
    .await;
    let id =
        Identity::with_anchor("node-a", token.clone(), &node.url, Some(anchor.clone())).unwrap();
    let e = id.renew().await.unwrap_err();
    assert!(e.to_string().contains("a node certificate"), "{e}");
    assert!(node.heads.lock().unwrap().is_empty());

    // A certificate of the mesh for another name than the URL's host.
    let named = start(
        server_cert(
            &mesh,
            vec![rcgen::SanType::DnsName("elsewhere".try_into().unwrap())],
        ),
        200,
        "{}",
    )
    .await;
    let id =
        Identity::with_anchor("node-a", token.clone(), &named.url, Some(anchor.clone())).unwrap();
    let e = id.renew().await.unwrap_err();
    assert!(e.to_string().contains("does not name the host"), "{e}");

    // Pinned roots that cannot be used: named, nothing sent.
    for (text, want) in [
        ("", "no certificate"),
        (
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "not PEM",
        ),
    ] {
        std::fs::write(&anchor, text).unwrap();
        let e = Identity::with_anchor("node-a", token.clone(), &good.url, Some(anchor.clone()))
            .unwrap()
            .renew()
            .await
            .unwrap_err();
        assert_eq!(e.label(), "trust_anchor", "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    std::fs::write(&anchor, "x".repeat(MAX_ANCHOR_BYTES as usize + 1)).unwrap();
    let e = Identity::with_anchor("node-a", token.clone(), &good.url, Some(anchor.clone()))
        .unwrap()
        .renew()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    assert_eq!(
        good.heads.lock().unwrap().len(),
        1,
        "no request after the first"
    );
}

#[tokio::test]
async fn locally_the_url_and_the_roots_come_from_the_token_folder() {
    use server::*;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("bootstrap-token");
    std::fs::write(&token, "local-token-0123456789\n").unwrap();
    let mesh = ca("mesh root");
    let good = start(
        server_cert(
            &mesh,
            vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        ),
        401,
        "not the bootstrap token",
    )
    .await;
    let id = Identity::new("node-a", token.clone(), "").unwrap();
    assert_eq!(id.anchor_file(), dir.path().join("ca.crt"));
    // Neither file yet: said, with the file names.
    let e = id.renew().await.unwrap_err();
    assert!(e.to_string().contains("identity-url"), "{e}");
    std::fs::write(dir.path().join(URL_FILE), format!("{}\n", good.url)).unwrap();
    let e = id.renew().await.unwrap_err();
    assert_eq!(e.label(), "trust_anchor", "{e}");
    assert!(e.to_string().contains("ca.crt"), "{e}");
    std::fs::write(dir.path().join(ANCHOR_FILE), mesh.cert.pem()).unwrap();
    let e = id.renew().await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    // A plain URL in the folder is refused as well.
    std::fs::write(dir.path().join(URL_FILE), "http://127.0.0.1:9000\n").unwrap();
    assert!(id
        .renew()
        .await
        .unwrap_err()
        .to_string()
        .contains("TLS only"));
}

mod tunnel {
    use super::*;
    use crate::identity::tunnel::Tunnel;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf of `ca` for `spiffe` and `node`, valid from `from` to `to` seconds from now.
    fn leaf(
        ca: &Ca,
        spiffe: &str,
        node: &str,
        from: i64,
        to: i64,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![
            rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe.to_string()).unwrap()),
            rcgen::SanType::DnsName(rcgen::Ia5String::try_from(node.to_string()).unwrap()),
        ];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(from);
        p.not_after = now + time::Duration::seconds(to);
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert.der().clone(), key)
    }

    fn count(result: &str) -> u64 {
        crate::metrics::register()
            .tunnel_handshakes
            .with_label_values(&[result])
            .get()
    }

    /// Waits for the server to count `result` once more than `before` (the client may see the
    /// refusal before the server's task counts it).
    async fn counted(result: &str, before: u64) {
        let start = std::time::Instant::now();
        while count(result) < before + 1 {
            let all: Vec<(&str, u64)> = crate::identity::tunnel::RESULTS
                .iter()
                .map(|r| (*r, count(r)))
                .collect();
            assert!(
                start.elapsed() < crate::testing::PATIENCE,
                "{result} not counted: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start(identity: Arc<Identity>) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
        let tunnel = Tunnel::bind(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = tunnel.local_addr();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(tunnel.run(rx));
        (addr, tx)
    }

    /// A TLS client presenting `client` (if any), trusting `roots`; Ok once the server closed
    /// the session cleanly, Err when it refused.
    async fn connect(
        addr: SocketAddr,
        roots: &CertificateDer<'static>,
        client: Option<(CertificateDer<'static>, rcgen::KeyPair)>,
    ) -> std::io::Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = rustls::RootCertStore::empty();
        store.add(roots.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(store);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![cert],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("node-a").unwrap(), tcp)
            .await?;
        // TLS 1.3: the server judges the client's certificate after the client finished; a
        // refusal arrives as an alert on the first read.
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map(|_| ())
    }

    #[tokio::test]
    async fn only_mesh_certificates_of_this_trust_domain_get_through_the_handshake() {
        let mesh = ca();
        let id = identity();
        let (server_cert, server_key) = leaf(
            &mesh,
            "spiffe://mesh.test/ns/maille/sa/proxy",
            "node-a",
            -60,
            3600,
        );
        id.current.store(Some(Arc::new(Held {
            spiffe_id: "spiffe://mesh.test/ns/maille/sa/proxy".into(),
            node: "node-a".into(),
            chain: vec![server_cert],
            key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
            trust_bundle: vec![mesh.cert.der().clone()],
            not_before: unix_now() - 60,
            not_after: unix_now() + 3600,
            received: unix_now(),
        })));
        let (addr, _stop) = start(id).await;
        let roots = mesh.cert.der().clone();
        let peer = || {
            leaf(
                &mesh,
                "spiffe://mesh.test/ns/maille/sa/proxy",
                "node-b",
                -60,
                3600,
            )
        };

        let ok = count("ok");
        connect(addr, &roots, Some(peer()))
            .await
            .expect("a mesh peer is accepted");
        counted("ok", ok).await;

        // Plain bytes.
        let before = count("not_tls");
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = plain.read_to_end(&mut out).await;
        assert!(
            !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
            "{out:?}"
        );
        counted("not_tls", before).await;

        // TLS without a client certificate.
        let before = count("no_client_certificate");
        assert!(connect(addr, &roots, None).await.is_err());
        counted("no_client_certificate", before).await;

        // A certificate of another CA with the very same names.
        let foreign = ca();
        let before = count("unknown_ca");
        let forged = leaf(
            &foreign,
            "spiffe://mesh.test/ns/maille/sa/proxy",
            "node-b",
            -60,
            3600,
        );
        assert!(connect(addr, &roots, Some(forged)).await.is_err());
        counted("unknown_ca", before).await;

        // Our CA, but expired.
        let before = count("expired");
        let old = leaf(
            &mesh,
            "spiffe://mesh.test/ns/maille/sa/proxy",
            "node-b",
            -7200,
            -60,
        );
        assert!(connect(addr, &roots, Some(old)).await.is_err());
        counted("expired", before).await;

        // Our CA, another trust domain.
        let before = count("foreign_trust_domain");
        let other = leaf(
            &mesh,
            "spiffe://other.test/ns/maille/sa/proxy",
            "node-b",
            -60,
            3600,
        );
        assert!(connect(addr, &roots, Some(other)).await.is_err());
        counted("foreign_trust_domain", before).await;

        // Nothing else was affected.
        connect(addr, &roots, Some(peer()))
            .await
            .expect("still accepts mesh peers");
    }

    #[tokio::test]
    async fn a_proxy_without_a_certificate_accepts_nobody() {
        let mesh = ca();
        let (addr, _stop) = start(identity()).await;
        let before = count("no_identity");
        let peer = leaf(
            &mesh,
            "spiffe://mesh.test/ns/maille/sa/proxy",
            "node-b",
            -60,
            3600,
        );
        assert!(connect(addr, mesh.cert.der(), Some(peer)).await.is_err());
        counted("no_identity", before).await;
    }
}
