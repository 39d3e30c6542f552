//! A small development PKI: a root CA, an issuing (intermediate) CA, server certificates and
//! device client certificates shaped like the ones the Portcullis CA issues.
//!
//! Used by `portcullis up` and by the end-to-end tests and benchmarks, which need certificates
//! that are *wrong in exactly one way* (expired, not yet valid, too long-lived, no device id,
//! serverAuth instead of clientAuth, from another CA). It is not the production CA (`ca/`):
//! keys live in files, there is no attestation and no inventory check.
//!
//! All keys are ECDSA P-256 (ring). A device certificate carries, as `ARCHITECTURE.md` says:
//! - SAN otherName PermanentIdentifier (OID 1.3.6.1.5.5.7.8.3, RFC 4043 §2):
//!   `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL,
//!   assigner OBJECT IDENTIFIER OPTIONAL }`;
//! - SAN URI `spiffe://<trust-domain>/device/<id>`;
//! - EKU clientAuth only.
//!
//! rcgen 0.14's `SanType::OtherName` can only hold a UTF8String value, not the SEQUENCE that
//! RFC 4043 requires, so the device certificate's subjectAltName is built as DER by
//! `portcullis_policy::identity::encode_*` (the encoders the CA uses) and added as a custom
//! extension.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use portcullis::devpki::{DevPki, DeviceSpec};
//! let pki = DevPki::generate("Example")?;
//! let server = pki.issuing.issue_server(&["gateway.example"])?;
//! let alice = pki.issuing.issue_device(&DeviceSpec::new("laptop-alice", "portcullis.local"))?;
//! pki.write_to(std::path::Path::new("pki"))?;
//! server.write("pki/server.pem", "pki/server.key")?;
//! # Ok(()) }
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// OID arcs of the subjectAltName extension (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// Default lifetime of a device certificate: 24 h, as the CA issues them (ARCHITECTURE.md).
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a dev server certificate and of the dev CAs: long enough that a
/// quickstart data dir keeps working for a year.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before "now" so that a peer whose clock is slightly behind
/// does not see them as not yet valid.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate authority: its certificate and the key that signs with it.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A self-signed root CA, valid from now (backdated a little) for [`CA_LIFETIME`].
    pub fn new_root(common_name: &str) -> anyhow::Result<Self> {
        let params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        let key = KeyPair::generate().context("generating the root CA key")?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the root CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA signed by `self`, which may only sign end-entity certificates
    /// (pathLenConstraint 0).
    pub fn new_intermediate(&self, common_name: &str) -> anyhow::Result<Self> {
        let params = ca_params(common_name, BasicConstraints::Constrained(0))?;
        let key = KeyPair::generate().context("generating the issuing CA key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the issuing CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA read back from its PEM certificate and PEM private key (PKCS#8), e.g. from a data
    /// directory written by [`DevPki::write_to`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("CA private key")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).context("CA certificate")?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// Reads a CA from a certificate file and a key file.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("cannot read {}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem)
            .with_context(|| format!("CA {} / {}", cert.display(), key.display()))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PKCS#8 PEM. Write it with [`write_private`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS server certificate for `localhost`, `127.0.0.1` and `names` (DNS names, or IP
    /// addresses when they parse as one), EKU serverAuth, valid for [`SERVER_LIFETIME`].
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<Issued> {
        let mut sans = vec![
            SanType::DnsName("localhost".try_into().context("DNS name localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    (*name)
                        .try_into()
                        .with_context(|| format!("`{name}` is not a DNS name"))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + SERVER_LIFETIME).into();
        self.sign(params)
    }

    /// A device client certificate as described by `spec`.
    pub fn issue_device(&self, spec: &DeviceSpec) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // The subject is not where the identity lives (the SAN is), but a non-empty subject
        // keeps the SAN extension non-critical (RFC 5280 §4.2.1.6) and reads well in logs.
        dn.push(DnType::OrganizationName, "Portcullis Dev");
        dn.push(
            DnType::CommonName,
            spec.device_id.as_deref().unwrap_or("device without id"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.usage {
            Usage::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAuth => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();

        // The SAN encoders are the CA's (`portcullis_policy::identity`), so a dev certificate
        // names a device exactly the way an issued one does.
        use portcullis_policy::identity as pid;
        let mut names = Vec::new();
        if let Some(id) = &spec.device_id {
            if spec.permanent_identifier {
                names.push(
                    pid::encode_permanent_identifier_san(id, None)
                        .ok_or_else(|| anyhow!("cannot encode device id `{id}`"))?,
                );
            }
            if spec.spiffe_uri {
                // Built by hand, not with `spiffe_device_uri`: tests need URIs that are wrong.
                let uri = format!("spiffe://{}/device/{}", spec.trust_domain, id);
                names.push(pid::encode_uri_san(&uri));
            }
        }
        for dns in &spec.dns_names {
            names.push(pid::encode_dns_san(dns));
        }
        if !names.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_SUBJECT_ALT_NAME,
                    pid::encode_subject_alt_names(&names),
                ));
        }
        for (arcs, value) in [
            (pid::OID_ATTESTATION_FORMAT_ARCS, &spec.attestation),
            (pid::OID_DEVICE_PLATFORM_ARCS, &spec.platform),
        ] {
            if let Some(value) = value {
                // Portcullis extensions: a DER UTF8String, non-critical (policy::identity).
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(
                        arcs,
                        pid::encode_utf8_extension(value),
                    ));
            }
        }
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<Issued> {
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            issuer_pem: self.cert_pem.clone(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis Dev");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    Ok(params)
}

/// A positive 128-bit serial from the OS RNG (RFC 5280 §4.1.2.2: unique per CA, ≤ 20 octets;
/// CA/B BR: ≥ 64 bits of entropy). Random serials keep "revoke by serial" tests independent
/// of anything else in the certificate.
fn random_serial() -> anyhow::Result<SerialNumber> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the OS random number generator failed"))?;
    bytes[0] &= 0x7f; // positive, so DER needs no sign octet
    bytes[0] |= 0x01; // and no leading zero octet, so the hex form always has 32 digits
    Ok(SerialNumber::from_slice(&bytes))
}

/// What kind of device certificate to issue. Build with [`DeviceSpec::new`] and adjust the
/// public fields to make a certificate that is wrong in one way.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// `None`: a certificate that names no device (no PermanentIdentifier, no SPIFFE URI).
    pub device_id: Option<String>,
    pub trust_domain: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub usage: Usage,
    /// Include the SAN otherName PermanentIdentifier.
    pub permanent_identifier: bool,
    /// Include the SAN URI `spiffe://<trust_domain>/device/<id>`.
    pub spiffe_uri: bool,
    pub dns_names: Vec<String>,
    /// Portcullis attestation-format extension (`tpm`, `apple`, `step`).
    pub attestation: Option<String>,
    /// Portcullis platform extension (`macos`, `linux`, …).
    pub platform: Option<String>,
}

/// The extended key usage of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ClientAuth,
    /// For tests: a certificate that must not be accepted as a device certificate.
    ServerAuth,
}

impl DeviceSpec {
    /// A correct device certificate: both identifiers, clientAuth, valid from a few minutes ago
    /// for [`DEVICE_LIFETIME`].
    pub fn new(device_id: &str, trust_domain: &str) -> Self {
        let now = SystemTime::now();
        Self {
            device_id: Some(device_id.to_owned()),
            trust_domain: trust_domain.to_owned(),
            not_before: now - BACKDATE,
            not_after: now - BACKDATE + DEVICE_LIFETIME,
            usage: Usage::ClientAuth,
            permanent_identifier: true,
            spiffe_uri: true,
            dns_names: Vec::new(),
            attestation: None,
            platform: None,
        }
    }

    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired `ago` ago, after a normal lifetime.
    pub fn expired(self, ago: Duration) -> Self {
        let end = SystemTime::now() - ago;
        self.validity(end - DEVICE_LIFETIME, end)
    }

    /// Valid only from `ahead` in the future.
    pub fn not_yet_valid(self, ahead: Duration) -> Self {
        let start = SystemTime::now() + ahead;
        self.validity(start, start + DEVICE_LIFETIME)
    }

    /// Currently valid, with a total lifetime of `lifetime`.
    pub fn lifetime(self, lifetime: Duration) -> Self {
        let start = SystemTime::now() - BACKDATE;
        self.validity(start, start + lifetime)
    }

    pub fn without_device_id(mut self) -> Self {
        self.device_id = None;
        self
    }

    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    pub fn platform(mut self, platform: &str) -> Self {
        self.platform = Some(platform.to_owned());
        self
    }

    pub fn attestation(mut self, format: &str) -> Self {
        self.attestation = Some(format.to_owned());
        self
    }
}

/// An issued end-entity certificate with its fresh private key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf only.
    pub cert_pem: String,
    /// The certificate of the CA that signed it.
    pub issuer_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf, DER.
    pub der: Vec<u8>,
}

impl Issued {
    /// Leaf followed by its issuing CA: what a TLS peer must send when the trust anchor is the
    /// root (curl `--cert`, the gateway's `cert`).
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.issuer_pem)
    }

    /// Writes the chain (leaf + issuer) to `cert` and the key to `key` (mode 0600).
    pub fn write(&self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> anyhow::Result<()> {
        write_public(cert.as_ref(), &self.chain_pem())?;
        write_private(key.as_ref(), &self.key_pem)
    }
}

/// A root CA and the issuing CA it signed.
#[derive(Debug)]
pub struct DevPki {
    pub root: Ca,
    pub issuing: Ca,
}

/// The files of a [`DevPki`] under one directory.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub issuing_cert: PathBuf,
    pub issuing_key: PathBuf,
}

impl PkiFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            root_cert: dir.join("root-ca.pem"),
            root_key: dir.join("root-ca.key"),
            issuing_cert: dir.join("issuing-ca.pem"),
            issuing_key: dir.join("issuing-ca.key"),
        }
    }

    pub fn all_exist(&self) -> bool {
        [
            &self.root_cert,
            &self.root_key,
            &self.issuing_cert,
            &self.issuing_key,
        ]
        .iter()
        .all(|p| p.is_file())
    }
}

impl DevPki {
    /// A new root (`<name> Root CA`) and issuing CA (`<name> Issuing CA`).
    pub fn generate(name: &str) -> anyhow::Result<Self> {
        let root = Ca::new_root(&format!("{name} Root CA"))?;
        let issuing = root.new_intermediate(&format!("{name} Issuing CA"))?;
        Ok(Self { root, issuing })
    }

    /// Writes `root-ca.pem`, `root-ca.key`, `issuing-ca.pem`, `issuing-ca.key` into `dir`
    /// (created if missing); keys 0600.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<PkiFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = PkiFiles::in_dir(dir);
        write_public(&files.root_cert, self.root.cert_pem())?;
        write_private(&files.root_key, &self.root.key_pem())?;
        write_public(&files.issuing_cert, self.issuing.cert_pem())?;
        write_private(&files.issuing_key, &self.issuing.key_pem())?;
        Ok(files)
    }

    /// Reads back what [`DevPki::write_to`] wrote.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let files = PkiFiles::in_dir(dir);
        Ok(Self {
            root: Ca::load(&files.root_cert, &files.root_key)?,
            issuing: Ca::load(&files.issuing_cert, &files.issuing_key)?,
        })
    }
}

/// Writes a certificate (or other public) file, mode 0644.
pub fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_mode(path, contents, 0o644)
}

/// Writes a private key file, mode 0600 from the moment it exists: the mode is given at
/// creation (not chmod'ed afterwards, which would leave a window), and an existing file is
/// narrowed to 0600 before the key is written into it.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_mode(path, contents, 0o600)
}

fn write_mode(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Parses an RFC 3339 time (for CLI flags such as `cert inspect --at`).
pub fn parse_rfc3339(text: &str) -> anyhow::Result<SystemTime> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow!("`{text}` is not an RFC 3339 time: {e}"))?;
    Ok(t.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{DeviceIdentity, IdSource};

    const TD: &str = "portcullis.local";

    #[test]
    fn device_cert_names_the_device_both_ways() {
        let pki = DevPki::generate("Test").unwrap();
        let issued = pki
            .issuing
            .issue_device(
                &DeviceSpec::new("laptop-alice", TD)
                    .platform("macos")
                    .attestation("tpm"),
            )
            .unwrap();
        let id = DeviceIdentity::from_der(&issued.der, TD).unwrap();
        assert_eq!(id.device_id.as_deref(), Some("laptop-alice"));
        assert_eq!(id.id_source, Some(IdSource::PermanentIdentifier));
        assert_eq!(
            id.uri_sans,
            vec![format!("spiffe://{TD}/device/laptop-alice")]
        );
        assert_eq!(id.platform.as_deref(), Some("macos"));
        assert_eq!(id.attestation.as_deref(), Some("tpm"));
        assert_eq!(id.serial.len(), 32);

        let none = pki
            .issuing
            .issue_device(&DeviceSpec::new("x", TD).without_device_id())
            .unwrap();
        assert_eq!(
            DeviceIdentity::from_der(&none.der, TD).unwrap().device_id,
            None
        );
    }

    #[test]
    fn chain_verifies_against_the_root_only_for_client_auth() {
        use portcullis_policy::verify::verify_client_chain;
        use portcullis_policy::{TrustAnchors, VerifyError, VerifyOptions};
        use rustls_pki_types::CertificateDer;

        let pki = DevPki::generate("Test").unwrap();
        let anchors = TrustAnchors::from_pem(pki.root.cert_pem().as_bytes()).unwrap();
        let opts = VerifyOptions {
            clock_skew: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(7 * 24 * 3600),
        };
        let issuing =
            rustls_pki_types::pem::PemObject::from_pem_slice(pki.issuing.cert_pem().as_bytes())
                .map(|c: CertificateDer<'static>| c)
                .unwrap();
        let check = |spec: DeviceSpec| {
            let issued = pki.issuing.issue_device(&spec).unwrap();
            verify_client_chain(
                &anchors,
                &CertificateDer::from(issued.der.clone()),
                std::slice::from_ref(&issuing),
                SystemTime::now(),
                &opts,
                TD,
            )
            .map(|id| id.device_id)
        };
        assert_eq!(check(DeviceSpec::new("a", TD)), Ok(Some("a".into())));
        assert_eq!(
            check(DeviceSpec::new("a", TD).expired(Duration::from_secs(3600))),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            check(DeviceSpec::new("a", TD).not_yet_valid(Duration::from_secs(3600))),
            Err(VerifyError::NotYetValid)
        );
        assert!(matches!(
            check(DeviceSpec::new("a", TD).lifetime(Duration::from_secs(30 * 24 * 3600))),
            Err(VerifyError::LifetimeTooLong { .. })
        ));
        assert_eq!(
            check(DeviceSpec::new("a", TD).without_device_id()),
            Err(VerifyError::NoDeviceId)
        );
        assert!(check(DeviceSpec::new("a", TD).usage(Usage::ServerAuth)).is_err());
    }

    #[test]
    fn keys_are_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate("Test").unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        for key in [&files.root_key, &files.issuing_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let again = DevPki::load(dir.path()).unwrap();
        assert_eq!(again.root.cert_pem(), pki.root.cert_pem());
        // The reloaded issuing CA can still issue a chain that verifies.
        let issued = again
            .issuing
            .issue_device(&DeviceSpec::new("b", TD))
            .unwrap();
        assert!(issued.chain_pem().contains(pki.issuing.cert_pem().trim()));
    }
}
