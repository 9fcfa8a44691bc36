//! The mesh certificate authority: a root (or a user's intermediate) and its signing key, made
//! on first start and kept in a folder (local mode) or a Secret of the mesh namespace, and the
//! short-lived node certificates it signs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

/// How long a CA this controller makes is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Node certificates start this long before they are signed, for clocks a little behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// File names in `--identity-dir`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The token local proxies present (mode 0600).
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// Keys of the CA Secret (the `kubernetes.io/tls` shape cert-manager writes).
pub const SECRET_CERT_KEY: &str = "tls.crt";
/// The signing key, PKCS#8 PEM.
pub const SECRET_KEY_KEY: &str = "tls.key";
/// The root of trust when the signer is an intermediate (optional).
pub const SECRET_BUNDLE_KEY: &str = "ca.crt";

/// Largest part of a CA accepted (certificate, key, bundle: a root is about 1 KiB, and proxies
/// read at most this much of their pinned roots).
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// What the parts of a CA are called where it is kept, to name them in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The signer's certificate.
    pub cert: &'static str,
    /// Its key.
    pub key: &'static str,
    /// The roots.
    pub bundle: &'static str,
}

impl Parts {
    /// The CA Secret's keys.
    pub const SECRET: Parts = Parts {
        cert: SECRET_CERT_KEY,
        key: SECRET_KEY_KEY,
        bundle: SECRET_BUNDLE_KEY,
    };
    /// The identity folder's files (`ca.crt` holds the signer first, then the other roots).
    pub const FOLDER: Parts = Parts {
        cert: CA_CERT_FILE,
        key: CA_KEY_FILE,
        bundle: CA_CERT_FILE,
    };
}

/// One root of a bundle: its DER and its subject's DER.
struct Root {
    der: Vec<u8>,
    subject_der: Vec<u8>,
}

/// The certificates of a bundle: at least one, each a CA certificate.
fn bundle_roots(bundle: &str) -> Result<Vec<Root>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = Vec::new();
    for (i, c) in rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()).enumerate() {
        let c = c.map_err(|e| format!("certificate {}: not PEM: {e}", i + 1))?;
        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("certificate {}: not an X.509 certificate: {e}", i + 1))?;
        if !x.is_ca() {
            return Err(format!(
                "certificate {} ({}) is not a CA (basicConstraints cA is not true)",
                i + 1,
                x.subject()
            ));
        }
        roots.push(Root {
            subject_der: x.subject().as_raw().to_vec(),
            der: c.as_ref().to_vec(),
        });
    }
    if roots.is_empty() {
        return Err("no PEM certificate".into());
    }
    // A block whose BEGIN line does not start a line is skipped by the PEM reader: refuse it
    // rather than serve fewer roots than written.
    let blocks = bundle.matches("-----BEGIN ").count();
    if blocks != roots.len() {
        return Err(format!(
            "{blocks} PEM blocks written but {} certificates read: each -----BEGIN and -----END line must be a line of its own",
            roots.len()
        ));
    }
    Ok(roots)
}

/// Why the CA cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the identity folder cannot be read or written.
    #[error("identity folder: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA certificate or key is not usable.
    #[error("mesh CA from {origin}: {reason}")]
    Invalid {
        /// Where it came from (a file, `Secret maille/maille-mesh-ca`).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CA able to sign: its certificate as an issuer, its key, the PEM served as trust bundle.
pub struct Ca {
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The signer's certificate, PEM, as given.
    cert_pem: String,
    /// The roots proxies trust, PEM.
    bundle_pem: String,
    /// The roots of the bundle, DER.
    roots: Vec<Vec<u8>>,
    /// The root of `roots` the signer chains to.
    signer_root: usize,
    /// The signer for logs.
    describe: String,
    /// Whether the signer is an intermediate (its certificate then follows each leaf).
    intermediate: bool,
    not_after: i64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("intermediate", &self.intermediate)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate signed for a node.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The leaf, then the intermediate if any, PEM.
    pub chain_pem: String,
    /// Serial number, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl Ca {
    /// A new self-signed root for `trust_domain` (ECDSA P-256, valid [`CA_LIFETIME`]).
    pub fn generate(trust_domain: &str) -> Result<Ca> {
        let key = KeyPair::generate().map_err(|e| Error::Sign(e.to_string()))?;
        let now = unix_now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Maille mesh CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now - CLOCK_SKEW.as_secs() as i64);
        params.not_after = at(now + CA_LIFETIME.as_secs() as i64);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Sign(e.to_string()))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ca::from_pem(&cert_pem, &key_pem, None, "a new root")
    }

    /// A CA from its certificate and PKCS#8 key (PEM); `bundle_pem` names the roots when the
    /// certificate is an intermediate. Checks that the key is the certificate's, that it may
    /// sign certificates and that it has not expired. Errors name the parts as a Secret does
    /// (`tls.crt`, `tls.key`, `ca.crt`); see [`Ca::from_parts`].
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        bundle_pem: Option<&str>,
        origin: &str,
    ) -> Result<Ca> {
        Ca::from_parts(cert_pem, key_pem, bundle_pem, origin, &Parts::SECRET)
    }

    /// [`Ca::from_pem`], naming the parts `parts` in errors. Every part is bounded
    /// ([`MAX_PEM_BYTES`]); the signer must be a CA certificate whose key is `key_pem`, valid
    /// now (give or take [`CLOCK_SKEW`]); every certificate of the bundle must be a CA; a
    /// self-signed signer must be in the bundle, and an intermediate's issuer among its roots.
    pub fn from_parts(
        cert_pem: &str,
        key_pem: &str,
        bundle_pem: Option<&str>,
        origin: &str,
        parts: &Parts,
    ) -> Result<Ca> {
        let invalid = |reason: String| Error::Invalid {
            origin: origin.to_string(),
            reason,
        };
        for (part, text) in [
            (parts.cert, Some(cert_pem)),
            (parts.key, Some(key_pem)),
            (parts.bundle, bundle_pem),
        ] {
            let len = text.map_or(0, str::len);
            if len > MAX_PEM_BYTES {
                return Err(invalid(format!(
                    "{part}: {len} bytes, more than the {MAX_PEM_BYTES} accepted"
                )));
            }
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            invalid(format!(
                "{}: not a private key: {e} (expected a PKCS#8 PEM key)",
                parts.key
            ))
        })?;
        let cert_part = parts.cert;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| invalid(format!("{cert_part}: not a PEM certificate: {e}")))?;
        let der = pem_der(cert_pem)
            .ok_or_else(|| invalid(format!("{cert_part}: no PEM certificate block")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(format!("{cert_part}: not an X.509 certificate: {e}")))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(invalid(format!(
                "{}: the private key does not belong to the certificate of {cert_part}",
                parts.key
            )));
        }
        if !matches!(params.is_ca, IsCa::Ca(_)) || !x509.is_ca() {
            return Err(invalid(format!(
                "{cert_part}: the certificate is not a CA (basicConstraints cA is not true)"
            )));
        }
        let now = unix_now();
        let not_after = x509.validity().not_after.timestamp();
        if not_after <= now {
            return Err(invalid(format!(
                "{cert_part}: the certificate expired (notAfter {})",
                x509.validity().not_after
            )));
        }
        if x509.validity().not_before.timestamp() > now + CLOCK_SKEW.as_secs() as i64 {
            return Err(invalid(format!(
                "{cert_part}: the certificate is not valid yet (notBefore {}): what it signs would be refused until then",
                x509.validity().not_before
            )));
        }
        let self_signed = x509.subject() == x509.issuer();
        let bundle = match bundle_pem.map(str::trim).filter(|b| !b.is_empty()) {
            Some(b) => b.to_string(),
            None if self_signed => cert_pem.trim().to_string(),
            None => {
                return Err(invalid(format!(
                    "{cert_part}: the certificate is an intermediate but no root ({}) is given",
                    parts.bundle
                )))
            }
        };
        let roots = bundle_roots(&bundle)
            .map_err(|reason| invalid(format!("{}: {reason}", parts.bundle)))?;
        let signer_root = if self_signed {
            // A root that signs must be among the roots served, or every proxy would refuse
            // what it signs (a rotation that listed only the old root, say).
            roots.iter().position(|r| r.der == der).ok_or_else(|| {
                invalid(format!(
                    "the trust bundle ({}) does not hold the signing root ({cert_part}): list every root proxies must trust, the signing one included",
                    parts.bundle
                ))
            })?
        } else {
            roots
                .iter()
                .position(|r| r.subject_der == x509.issuer().as_raw())
                .ok_or_else(|| {
                    invalid(format!(
                        "{cert_part}: the intermediate's issuer ({}) is not among the roots of {}",
                        x509.issuer(),
                        parts.bundle
                    ))
                })?
        };
        let describe = format!(
            "{} (serial {}, notAfter {})",
            x509.subject(),
            x509.raw_serial_as_string(),
            x509.validity().not_after
        );
        let issuer = params
            .self_signed(&key)
            .map_err(|e| invalid(format!("{}: cannot sign with the key: {e}", parts.key)))?;
        Ok(Ca {
            issuer,
            key,
            cert_pem: format!("{}\n", cert_pem.trim()),
            bundle_pem: format!("{bundle}\n"),
            roots: roots.into_iter().map(|r| r.der).collect(),
            signer_root,
            describe,
            intermediate: !self_signed,
            not_after,
        })
    }

    /// Whether `other` signs with the same certificate and key and serves the same roots.
    pub fn same_as(&self, other: &Ca) -> bool {
        self.cert_pem == other.cert_pem
            && self.bundle_pem == other.bundle_pem
            && self.key.public_key_der() == other.key.public_key_der()
    }

    /// The signer for logs: subject, serial and end.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The roots of the bundle (DER), in order.
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// The root (DER) the signer is or chains to.
    pub fn signer_root(&self) -> &[u8] {
        &self.roots[self.signer_root]
    }

    /// The roots proxies trust, PEM.
    pub fn trust_bundle(&self) -> &str {
        &self.bundle_pem
    }

    /// The signer's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signer's private key, PKCS#8 PEM (written to the folder or Secret it is kept in).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// When the CA itself expires, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Signs a node certificate for `public_key`: the SPIFFE ID as its only URI SAN, the node
    /// name as common name and DNS SAN, client and server use, valid from a minute ago for
    /// `lifetime` (never past the CA's own end). The request's own names are never used.
    pub fn sign(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &str,
        node: &str,
        lifetime: Duration,
    ) -> Result<Signed> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        let ia5 = |s: &str| {
            rcgen::Ia5String::try_from(s.to_string())
                .map_err(|e| Error::Sign(format!("{s:?}: {e}")))
        };
        params.subject_alt_names =
            vec![SanType::URI(ia5(spiffe_id)?), SanType::DnsName(ia5(node)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, public_key, lifetime)
    }

    /// Signs `params` (names and usages set by the caller) for `public_key`: valid from
    /// [`CLOCK_SKEW`] ago for `lifetime` (never past the CA's own end), a random serial, the
    /// CA's key identifier; the chain holds the intermediate when the CA is one.
    fn issue(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<Signed> {
        let now = unix_now();
        let not_before = now - CLOCK_SKEW.as_secs() as i64;
        let not_after = (now + lifetime.as_secs().max(1) as i64).min(self.not_after);
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let serial = random_serial();
        let serial_hex: String = serial.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer, &self.key)
            .map_err(|e| Error::Sign(e.to_string()))?;
        let mut chain_pem = cert.pem();
        if self.intermediate {
            chain_pem.push_str(&self.cert_pem);
        }
        Ok(Signed {
            chain_pem,
            serial: serial_hex,
            not_before,
            not_after,
        })
    }

    /// Signs the identity server's certificate for `public_key`: `names` (DNS names, IP
    /// addresses) as its SANs, server authentication only and no URI SAN, so that it can
    /// never pass for a node certificate on the tunnel (which needs a SPIFFE ID and client
    /// authentication), nor a node certificate for it (proxies refuse an identity server
    /// certificate that carries a SPIFFE ID).
    pub fn sign_server(
        &self,
        public_key: &impl PublicKeyData,
        names: &[SanType],
        lifetime: Duration,
    ) -> Result<Signed> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Maille identity server");
        params.distinguished_name = dn;
        params.subject_alt_names = names.to_vec();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, public_key, lifetime)
    }

    /// The CA of the files `ca.crt` (the signer first, then any other root) and `ca.key` of
    /// `dir`, each read up to [`MAX_PEM_BYTES`].
    pub fn read_dir(dir: &Path) -> Result<Ca> {
        let cert = read_bounded(&dir.join(CA_CERT_FILE))?;
        let key = read_bounded(&dir.join(CA_KEY_FILE))?;
        Ca::from_parts(
            &cert,
            &key,
            None,
            &dir.display().to_string(),
            &Parts::FOLDER,
        )
    }

    /// The CA kept in `dir`: read from `ca.crt` and `ca.key`, or made and written there on
    /// first start (the folder too). Also returns the bootstrap token from `bootstrap-token`,
    /// made when absent.
    pub fn load_or_create_dir(dir: &Path, trust_domain: &str) -> Result<(Ca, String)> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let ca = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let ca = Ca::read_dir(dir)?;
                tracing::info!(dir = %dir.display(), signer = %ca.describe(), "Mesh CA read from the identity folder");
                ca
            }
            (false, false) => {
                let ca = Ca::generate(trust_domain)?;
                write_private(&key_path, &ca.key_pem())?;
                std::fs::write(&cert_path, ca.cert_pem()).map_err(io(&cert_path))?;
                tracing::info!(dir = %dir.display(), %trust_domain, "Mesh CA created in the identity folder");
                ca
            }
            (true, false) | (false, true) => {
                return Err(Error::Invalid {
                    origin: dir.display().to_string(),
                    reason: format!(
                        "{CA_CERT_FILE} and {CA_KEY_FILE} must both be present (or both absent, to make a new CA)"
                    ),
                })
            }
        };
        let token_path = dir.join(BOOTSTRAP_TOKEN_FILE);
        let token = if token_path.exists() {
            let t = std::fs::read_to_string(&token_path).map_err(io(&token_path))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(Error::Invalid {
                    origin: token_path.display().to_string(),
                    reason: "the bootstrap token is shorter than 16 characters".into(),
                });
            }
            t
        } else {
            let t = random_token();
            write_private(&token_path, &format!("{t}\n"))?;
            t
        };
        Ok((ca, token))
    }
}

/// The text of `path`, at most one byte past [`MAX_PEM_BYTES`] (so that a larger file is
/// refused as such, without reading it whole).
pub(crate) fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_PEM_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    String::from_utf8(bytes).map_err(|_| Error::Invalid {
        origin: path.display().to_string(),
        reason: "not UTF-8 text (expected PEM)".into(),
    })
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// The DER of the first PEM block of `pem`.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN ")?;
    let body_start = start + pem[start..].find('\n')? + 1;
    let end = body_start + pem[body_start..].find("-----END ")?;
    let b64: String = pem[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
