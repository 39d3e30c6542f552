//! The certificate authority: creating and loading the root + intermediate, and issuing leaves.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use ring::rand::SystemRandom;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::keys::{key_from_pem, CaSigner, KeyAlgorithm};
use super::pem;
use super::serial::Serial;
use super::template::{CertTemplate, KeyUsage, LifetimePolicy, Purpose, RevocationUrls, BACKDATE};
use super::PkiError;
use crate::clock::{from_unix_seconds, unix_seconds};

/// Where a CA's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub dir: PathBuf,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub intermediate_cert: PathBuf,
    pub intermediate_key: PathBuf,
    pub bundle: PathBuf,
}

impl CaPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            root_cert: dir.join("root.pem"),
            root_key: dir.join("root.key"),
            intermediate_cert: dir.join("intermediate.pem"),
            intermediate_key: dir.join("intermediate.key"),
            bundle: dir.join("bundle.pem"),
        }
    }

    fn all(&self) -> [&Path; 5] {
        [
            &self.root_key,
            &self.intermediate_key,
            &self.root_cert,
            &self.intermediate_cert,
            &self.bundle,
        ]
    }

    /// True when a CA has already been initialised here.
    pub fn exists(&self) -> bool {
        self.bundle.exists()
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Goes into the subject names: "<name> Root CA", "<name> Intermediate CA".
    pub name: String,
    pub key: KeyAlgorithm,
    pub root_lifetime: Duration,
    pub intermediate_lifetime: Duration,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            name: "Portcullis".into(),
            key: KeyAlgorithm::default(),
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_lifetime: Duration::from_secs(5 * 365 * 24 * 3600),
        }
    }
}

/// What issuance needs from a request: the subject key and the names, already validated by
/// the caller (ACME finalize checks them against the order).
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    pub spki_der: &'a [u8],
    pub template: &'a CertTemplate,
    pub dns_names: &'a [String],
    pub ip_addresses: &'a [IpAddr],
    pub uris: &'a [String],
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
}

/// Device-certificate content beyond [`IssueRequest`] (see [`Authority::issue_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueExtras {
    /// Encoded GeneralNames (otherName) added to the subjectAltName.
    pub other_names: Vec<Vec<u8>>,
    /// Non-critical extensions: OID arcs and the DER extension value.
    pub extensions: Vec<(Vec<u64>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub serial: Serial,
    pub der: Vec<u8>,
    /// The leaf alone.
    pub pem: String,
    /// The leaf followed by the intermediate: what ACME certificate download serves.
    pub chain_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
}

/// The issuing CA: the intermediate certificate and its signer, plus the root for bundles.
pub struct Authority {
    root_pem: String,
    intermediate_der: Vec<u8>,
    intermediate_pem: String,
    intermediate_not_after: SystemTime,
    /// The intermediate's subjectKeyIdentifier: the authorityKeyIdentifier of every leaf.
    key_identifier: Vec<u8>,
    issuer: Issuer<'static, BoxedSigner>,
    policy: LifetimePolicy,
    rng: SystemRandom,
    /// CRL distribution point and OCSP URLs put into every leaf (issue 5); set once by the
    /// service when it serves them.
    revocation_urls: std::sync::OnceLock<RevocationUrls>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Lets rcgen's `Issuer` own a trait object (rcgen implements `SigningKey` for `&S` only).
struct BoxedSigner(Box<dyn CaSigner>);

impl PublicKeyData for BoxedSigner {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for BoxedSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

impl Authority {
    /// Creates a root and an intermediate in `paths.dir`. Refuses to overwrite anything: an
    /// existing CA is an asset, and replacing it would strand every certificate it issued.
    pub fn init(paths: &CaPaths, opts: &InitOptions, now: SystemTime) -> Result<(), PkiError> {
        for p in paths.all() {
            if p.exists() {
                return Err(PkiError::Exists(p.to_path_buf()));
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.dir)
            .map_err(|e| io(&paths.dir, e))?;
        let rng = SystemRandom::new();

        let root_key = opts.key.generate()?;
        let mut root = ca_params(&format!("{} Root CA", opts.name), &opts.name, 1);
        root.not_before = odt(now - BACKDATE);
        root.not_after = odt(now + opts.root_lifetime);
        root.serial_number = Some(SerialNumber::from_slice(Serial::random(&rng)?.as_bytes()));
        let root_cert = root.self_signed(&root_key).map_err(sign_err)?;

        let int_key = opts.key.generate()?;
        let mut int = ca_params(&format!("{} Intermediate CA", opts.name), &opts.name, 0);
        int.not_before = odt(now - BACKDATE);
        // An intermediate must not outlive its root (RFC 5280 §6.1.3 would reject its leaves).
        int.not_after = odt(now + opts.intermediate_lifetime.min(opts.root_lifetime));
        // Leaves are for TLS clients (devices) and servers (workloads); saying so on the
        // intermediate keeps a stolen intermediate key from minting code-signing certificates
        // that verifiers honouring EKU chaining would accept.
        int.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        int.use_authority_key_identifier_extension = true;
        int.serial_number = Some(SerialNumber::from_slice(Serial::random(&rng)?.as_bytes()));
        let root_issuer = Issuer::from_params(&root, &root_key);
        let int_cert = int.signed_by(&int_key, &root_issuer).map_err(sign_err)?;

        // Keys first, bundle last: a CA directory with a bundle is complete.
        write_new(&paths.root_key, root_key.serialize_pem().as_bytes(), 0o600)?;
        write_new(
            &paths.intermediate_key,
            int_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(&paths.root_cert, root_cert.pem().as_bytes(), 0o644)?;
        write_new(&paths.intermediate_cert, int_cert.pem().as_bytes(), 0o644)?;
        write_new(&paths.bundle, root_cert.pem().as_bytes(), 0o644)?;
        Ok(())
    }

    /// Loads the CA from its files, with the intermediate key as the signer.
    pub fn load(paths: &CaPaths, policy: LifetimePolicy) -> Result<Self, PkiError> {
        let root_pem = read(&paths.root_cert)?;
        let int_pem = read(&paths.intermediate_cert)?;
        check_key_mode(&paths.intermediate_key)?;
        let key_pem = read(&paths.intermediate_key)?;
        let key = key_from_pem(&key_pem)
            .map_err(|e| PkiError::invalid(paths.intermediate_key.display().to_string(), e))?;
        Self::from_parts(&root_pem, &int_pem, Box::new(key), policy)
    }

    /// Assembles a CA from certificates and any signer (an HSM, a KMS, or an in-memory key).
    /// Checks that the intermediate is a CA certificate signed by the root and that the signer
    /// holds the intermediate's key, so a mismatched deployment fails at start, not at issuance.
    pub fn from_parts(
        root_pem: &str,
        intermediate_pem: &str,
        signer: Box<dyn CaSigner>,
        policy: LifetimePolicy,
    ) -> Result<Self, PkiError> {
        let root_der = pem::decode_first(root_pem, "CERTIFICATE")
            .map_err(|e| PkiError::invalid("root certificate", e))?;
        let int_der = pem::decode_first(intermediate_pem, "CERTIFICATE")
            .map_err(|e| PkiError::invalid("intermediate certificate", e))?;
        let root = parse_cert(&root_der, "root certificate")?;
        let int = parse_cert(&int_der, "intermediate certificate")?;
        if !int.is_ca() {
            return Err(PkiError::invalid(
                "intermediate certificate",
                "not a CA certificate (basicConstraints cA is not true)",
            ));
        }
        int.verify_signature(Some(root.public_key()))
            .map_err(|_| PkiError::invalid("intermediate certificate", "not signed by the root"))?;
        if signer.subject_public_key_info() != int.public_key().raw {
            return Err(PkiError::invalid(
                "signer",
                "its public key is not the intermediate certificate's",
            ));
        }
        let intermediate_not_after = from_unix_seconds(int.validity().not_after.timestamp());
        // rcgen writes the leaves' authorityKeyIdentifier from this extension; an
        // intermediate without one cannot be the issuer of certificates ARI can name.
        let key_identifier = int
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .ok_or_else(|| {
                PkiError::invalid(
                    "intermediate certificate",
                    "has no subjectKeyIdentifier extension",
                )
            })?;
        let issuer = Issuer::from_ca_cert_der(
            &CertificateDer::from(int_der.as_slice()),
            BoxedSigner(signer),
        )
        .map_err(|e| PkiError::invalid("intermediate certificate", e))?;
        Ok(Self {
            root_pem: pem::encode("CERTIFICATE", &root_der),
            intermediate_pem: pem::encode("CERTIFICATE", &int_der),
            intermediate_der: int_der,
            intermediate_not_after,
            key_identifier,
            issuer,
            policy,
            rng: SystemRandom::new(),
            revocation_urls: std::sync::OnceLock::new(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    /// The intermediate's subjectKeyIdentifier (the leaves' authorityKeyIdentifier).
    pub fn key_identifier(&self) -> &[u8] {
        &self.key_identifier
    }

    /// From now on, leaves carry these CRL distribution point / OCSP URLs (RFC 5280
    /// §4.2.1.13, §4.2.2.1). Set once; false if they were already set.
    pub fn set_revocation_urls(&self, urls: RevocationUrls) -> bool {
        self.revocation_urls.set(urls).is_ok()
    }

    /// The intermediate as an rcgen issuer, for the other things it signs: CRLs and the
    /// delegated OCSP responder certificate (`crate::revocation`).
    pub(crate) fn issuer(&self) -> &Issuer<'static, impl SigningKey> {
        &self.issuer
    }

    /// `t`, or the intermediate's notAfter if that comes first.
    pub(crate) fn clamp_not_after(&self, t: SystemTime) -> SystemTime {
        t.min(self.intermediate_not_after)
    }

    pub fn policy(&self) -> LifetimePolicy {
        self.policy
    }

    /// The validity window a certificate issued now from `template` would get, given the
    /// notBefore/notAfter an order asked for (RFC 8555 §7.4). Used by newOrder to refuse an
    /// impossible window up front, and by issuance.
    pub fn validity(
        &self,
        template: &CertTemplate,
        not_before: Option<SystemTime>,
        not_after: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<(SystemTime, SystemTime), PkiError> {
        let start = not_before.unwrap_or(now);
        if not_before.is_some() && start + BACKDATE < now {
            // A requested start in the past would make the certificate look older than it is.
            return Err(PkiError::Validity("notBefore is in the past".into()));
        }
        let end = match not_after {
            Some(t) => t,
            None => start + template.lifetime,
        };
        let lifetime = end
            .duration_since(start)
            .map_err(|_| PkiError::Validity("notAfter is not after notBefore".into()))?;
        self.policy.check(lifetime).map_err(PkiError::Validity)?;
        if end > self.intermediate_not_after {
            return Err(PkiError::Validity(
                "notAfter would outlive the issuing CA certificate".into(),
            ));
        }
        let nb = if not_before.is_some() {
            start
        } else {
            now - BACKDATE
        };
        Ok((nb, end))
    }

    /// Issues a leaf certificate. The caller has validated the names; the template decides
    /// usages and lifetime; the serial is fresh and random on every call, so a retry after a
    /// failed store never reuses one.
    pub fn issue(&self, req: &IssueRequest<'_>, now: SystemTime) -> Result<IssuedCert, PkiError> {
        self.issue_with(req, &IssueExtras::default(), now)
    }

    /// [`Authority::issue`] with what rcgen cannot express for device certificates: otherName
    /// SANs (RFC 4043 / RFC 4108 values are SEQUENCEs) and Portcullis extensions.
    pub fn issue_with(
        &self,
        req: &IssueRequest<'_>,
        extras: &IssueExtras,
        now: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        req.template.validate(&self.policy)?;
        let (not_before, not_after) =
            self.validity(req.template, req.not_before, req.not_after, now)?;
        if req.dns_names.is_empty() && req.ip_addresses.is_empty() && req.uris.is_empty() {
            return Err(PkiError::Request("no subject alternative name".into()));
        }
        let spki = rcgen::SubjectPublicKeyInfo::from_der(req.spki_der)
            .map_err(|e| PkiError::Request(format!("subject public key: {e}")))?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // CN is legacy (RFC 6125 §6.4.4) but some clients still show it; it must fit the
        // ub-common-name of 64 (RFC 5280 appendix A). Without it the subject is empty and rcgen
        // marks the SAN extension critical, as RFC 5280 §4.2.1.6 requires.
        if let Some(first) = req.dns_names.first().filter(|n| n.len() <= 64) {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        let mut sans = Vec::new();
        for d in req.dns_names {
            sans.push(SanType::DnsName(d.as_str().try_into().map_err(|_| {
                PkiError::Request(format!("`{d}` is not an IA5 DNS name"))
            })?));
        }
        sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        for u in req.uris {
            sans.push(SanType::URI(u.as_str().try_into().map_err(|_| {
                PkiError::Request(format!("`{u}` is not an IA5 URI"))
            })?));
        }
        params.subject_alt_names = sans;
        if !extras.other_names.is_empty() {
            // The whole subjectAltName by hand, the same names plus the otherNames, critical
            // when the subject is empty (RFC 5280 §4.2.1.6) as rcgen would have marked it.
            use portcullis_policy::identity as pid;
            let mut names = extras.other_names.clone();
            names.extend(req.dns_names.iter().map(|d| pid::encode_dns_san(d)));
            names.extend(req.ip_addresses.iter().map(|ip| pid::encode_ip_san(*ip)));
            names.extend(req.uris.iter().map(|u| pid::encode_uri_san(u)));
            let mut san = rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                pid::encode_subject_alt_names(&names),
            );
            san.set_criticality(params.distinguished_name.iter().next().is_none());
            params.subject_alt_names.clear();
            params.custom_extensions.push(san);
        }
        for (arcs, value) in &extras.extensions {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    arcs,
                    value.clone(),
                ));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = req
            .template
            .key_usages
            .iter()
            .map(|u| match u {
                KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
                KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
                KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
            })
            .collect();
        params.extended_key_usages = vec![match req.template.purpose {
            Purpose::Device => ExtendedKeyUsagePurpose::ClientAuth,
            Purpose::Workload => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if let Some(urls) = self.revocation_urls.get() {
            urls.apply(&mut params);
        }
        params.not_before = odt(not_before);
        params.not_after = odt(not_after);
        let serial = Serial::random(&self.rng)?;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));

        let cert = params.signed_by(&spki, &self.issuer).map_err(sign_err)?;
        let der = cert.der().to_vec();
        let pem = pem::encode("CERTIFICATE", &der);
        Ok(IssuedCert {
            serial,
            fingerprint: hex::encode(Sha256::digest(&der)),
            chain_pem: format!("{pem}{}", self.intermediate_pem),
            pem,
            der,
            not_before: from_unix_seconds(unix_seconds(not_before)),
            not_after: from_unix_seconds(unix_seconds(not_after)),
        })
    }
}

fn ca_params(cn: &str, org: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    // digitalSignature so the CA key can sign OCSP responses itself (RFC 6960 §4.2.2.2).
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn odt(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Sign(e.to_string())
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| io(path, e))
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::invalid(what, e))?;
    if !rest.is_empty() {
        return Err(PkiError::invalid(
            what,
            "trailing data after the certificate",
        ));
    }
    Ok(cert)
}

/// Like OpenSSH, refuse a private key others can read: it may already be compromised, and
/// starting anyway would hide that.
fn check_key_mode(path: &Path) -> Result<(), PkiError> {
    let mode = fs::metadata(path)
        .map_err(|e| io(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions(path.to_path_buf(), mode & 0o777));
    }
    Ok(())
}

/// Creates `path` (never overwriting) with `mode` from the first byte on, and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
            _ => io(path, e),
        })?;
    f.write_all(data).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertTemplate;
    use x509_parser::extensions::ParsedExtension;

    fn ca(alg: KeyAlgorithm) -> (tempfile::TempDir, CaPaths, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("pki"));
        let opts = InitOptions {
            key: alg,
            ..InitOptions::default()
        };
        Authority::init(&paths, &opts, SystemTime::now()).unwrap();
        let ca = Authority::load(&paths, LifetimePolicy::default()).unwrap();
        (dir, paths, ca)
    }

    fn leaf_key() -> rcgen::KeyPair {
        KeyAlgorithm::EcdsaP256.generate().unwrap()
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_overwrite() {
        let (_d, paths, _ca) = ca(KeyAlgorithm::EcdsaP256);
        for key in [&paths.root_key, &paths.intermediate_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let dir_mode = fs::metadata(&paths.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert!(matches!(
            Authority::init(&paths, &InitOptions::default(), SystemTime::now()),
            Err(PkiError::Exists(_))
        ));
    }

    #[test]
    fn load_refuses_a_world_readable_key() {
        let (_d, paths, _ca) = ca(KeyAlgorithm::EcdsaP256);
        fs::set_permissions(&paths.intermediate_key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Authority::load(&paths, LifetimePolicy::default()),
            Err(PkiError::KeyPermissions(_, 0o644))
        ));
    }

    #[test]
    fn from_parts_refuses_a_signer_that_is_not_the_intermediate() {
        let (_d, paths, _ca) = ca(KeyAlgorithm::EcdsaP256);
        let root = fs::read_to_string(&paths.root_cert).unwrap();
        let int = fs::read_to_string(&paths.intermediate_cert).unwrap();
        let err =
            Authority::from_parts(&root, &int, Box::new(leaf_key()), LifetimePolicy::default())
                .unwrap_err();
        assert!(err.to_string().contains("signer"), "{err}");
        // The root is not signed by the intermediate's issuer chain the other way round.
        let err =
            Authority::from_parts(&int, &root, Box::new(leaf_key()), LifetimePolicy::default())
                .unwrap_err();
        assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
    }

    fn issue(ca: &Authority, template: &CertTemplate) -> IssuedCert {
        let key = leaf_key();
        ca.issue(
            &IssueRequest {
                spki_der: &key.subject_public_key_info(),
                template,
                dns_names: &["svc.example.com".to_string()],
                ip_addresses: &[],
                uris: &[],
                not_before: None,
                not_after: None,
            },
            SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn issued_leaves_carry_template_usages_and_a_positive_128_bit_serial() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let (_d, _paths, ca) = ca(alg);
            let issued = issue(&ca, &CertTemplate::workload());
            let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
            // RFC 5280 §4.1.2.2: positive, ≤ 20 octets.
            let raw = cert.raw_serial();
            assert!(raw.len() <= 17 && raw[0] & 0x80 == 0, "{raw:?}");
            assert_eq!(Serial::from_be_bytes(raw), issued.serial);
            let lifetime =
                cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
            assert_eq!(lifetime, 24 * 3600 + BACKDATE.as_secs() as i64);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth);
            assert!(!cert.is_ca());
            let (_, int) = X509Certificate::from_der(ca.intermediate_der()).unwrap();
            cert.verify_signature(Some(int.public_key())).unwrap();
            let aki = cert
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                    _ => None,
                })
                .expect("authorityKeyIdentifier");
            assert_eq!(aki.0, ca.key_identifier());
            assert!(issued.chain_pem.starts_with(&issued.pem));
        }
        let (_d, _paths, ca) = ca(KeyAlgorithm::EcdsaP256);
        let issued = issue(&ca, &CertTemplate::device());
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn validity_windows_are_policed() {
        let (_d, _paths, ca) = ca(KeyAlgorithm::EcdsaP256);
        let t = CertTemplate::device();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        assert!(ca.validity(&t, None, None, now).is_ok());
        assert!(ca.validity(&t, Some(now), Some(now + hour), now).is_ok());
        // Too short, too long, inverted, in the past.
        assert!(ca
            .validity(&t, Some(now), Some(now + Duration::from_secs(60)), now)
            .is_err());
        assert!(ca
            .validity(&t, Some(now), Some(now + 100 * 24 * hour), now)
            .is_err());
        assert!(ca.validity(&t, Some(now + hour), Some(now), now).is_err());
        assert!(ca.validity(&t, Some(now - 2 * hour), None, now).is_err());
        // Past the intermediate's own notAfter.
        let policy = LifetimePolicy::new(Duration::from_secs(20 * 365 * 24 * 3600)).unwrap();
        let far = now + Duration::from_secs(6 * 365 * 24 * 3600);
        let long = Authority::from_parts(
            ca.root_pem(),
            ca.intermediate_pem(),
            Box::new(leaf_key()),
            policy,
        );
        assert!(long.is_err()); // wrong signer; the bound itself is checked below
        assert!(ca.validity(&t, Some(now), Some(far), now).is_err());
    }

    #[test]
    fn serials_differ_on_every_issue() {
        let (_d, _paths, ca) = ca(KeyAlgorithm::EcdsaP256);
        let a = issue(&ca, &CertTemplate::device());
        let b = issue(&ca, &CertTemplate::device());
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.fingerprint, b.fingerprint);
    }
}
