//! The AK CA: a dedicated key and self-signed certificate beside the CA's other files
//! (`pki/ak-ca.key`, `pki/ak-ca.pem`) that signs AK certificates, and the AK certificate
//! profile it issues.
//!
//! A separate anchor, not the issuing intermediate: the `tpm` verifier trusts exactly what
//! signs AK certificates, and the intermediate (whose EKU allows TLS only) never has to be an
//! attestation root. The CA's own `tpm` verifier trusts the AK CA beside the configured TPM
//! roots (`crate::configure`).
//!
//! The AK certificate follows the TCG EK Credential Profile (§3.2, which the AK profile
//! reuses) and what W3C WebAuthn §8.3.1 requires of an AK certificate (and
//! `crate::attest::tpm` checks): X.509 v3; an empty subject; a critical subjectAltName with
//! the TPM manufacturer, model and version (2.23.133.2.1/2/3) as a directoryName, copied from
//! the EK certificate; extendedKeyUsage tcg-kp-AIKCertificate (2.23.133.8.3); basicConstraints
//! cA false. The same SAN carries the device's PermanentIdentifier otherName (RFC 4043), which
//! is what device-attest-01 matches against the order identifier.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use ring::rand::SystemRandom;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ek::TpmIdentity;
use crate::attest::der;
use crate::clock::{from_unix_seconds, unix_seconds};
use crate::pki::{pem, KeyAlgorithm, Serial, BACKDATE};

/// File names inside the CA's `pki/` directory.
pub const CERT_FILE: &str = "ak-ca.pem";
pub const KEY_FILE: &str = "ak-ca.key";
/// The AK CA's own lifetime.
pub const AK_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// tcg-kp-AIKCertificate (TCG EK Credential Profile §3.2.16; WebAuthn §8.3.1).
pub const OID_TCG_KP_AIK_CERTIFICATE: [u64; 5] = [2, 23, 133, 8, 3];
// DER contents of the TCG attribute OIDs (TCG EK Credential Profile §3.2.9).
const OID_TPM_MANUFACTURER: &[u8] = &[0x67, 0x81, 0x05, 0x02, 0x01];
const OID_TPM_MODEL: &[u8] = &[0x67, 0x81, 0x05, 0x02, 0x02];
const OID_TPM_VERSION: &[u8] = &[0x67, 0x81, 0x05, 0x02, 0x03];

#[derive(Debug, thiserror::Error)]
pub enum AkCaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: private key is readable by group or others (mode {1:o}); chmod 600 it")]
    KeyPermissions(PathBuf, u32),
    #[error("AK CA: {0}")]
    Invalid(String),
    #[error("AK CA: signing failed: {0}")]
    Sign(String),
}

fn io(path: &Path, source: std::io::Error) -> AkCaError {
    AkCaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The AK CA, loaded.
pub struct AkCa {
    cert_der: Vec<u8>,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AkCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AkCa").finish_non_exhaustive()
    }
}

/// An issued AK certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedAk {
    pub serial: Serial,
    pub der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl AkCa {
    /// Loads the AK CA of `pki_dir`, creating it first if there is none. Creation writes the
    /// key and then the certificate, each through a temporary file and a rename, so the
    /// certificate's presence means the pair is complete; a key left without a certificate by a
    /// crash never signed anything and is replaced.
    pub fn load_or_create(
        pki_dir: &Path,
        name: &str,
        key: KeyAlgorithm,
        now: SystemTime,
    ) -> Result<Self, AkCaError> {
        if !pki_dir.join(CERT_FILE).exists() {
            create(pki_dir, name, key, now)?;
            tracing::info!(dir = %pki_dir.display(), "created the TPM AK CA");
        }
        Self::load(pki_dir)
    }

    /// Loads an existing AK CA; the key must be 0600 and match the certificate.
    pub fn load(pki_dir: &Path) -> Result<Self, AkCaError> {
        let cert_path = pki_dir.join(CERT_FILE);
        let key_path = pki_dir.join(KEY_FILE);
        let mode = fs::metadata(&key_path)
            .map_err(|e| io(&key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AkCaError::KeyPermissions(key_path, mode & 0o777));
        }
        let key_pem = fs::read_to_string(&key_path).map_err(|e| io(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| AkCaError::Invalid(format!("{}: {e}", key_path.display())))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| io(&cert_path, e))?;
        let cert_der = pem::decode_first(&cert_pem, "CERTIFICATE")
            .map_err(|e| AkCaError::Invalid(format!("{}: {e}", cert_path.display())))?;
        let not_after = {
            let cert = match X509Certificate::from_der(&cert_der) {
                Ok(([], c)) => c,
                _ => {
                    return Err(AkCaError::Invalid(format!(
                        "{} is not one DER certificate",
                        cert_path.display()
                    )))
                }
            };
            if !cert.is_ca() {
                return Err(AkCaError::Invalid(format!(
                    "{} is not a CA certificate",
                    cert_path.display()
                )));
            }
            if key.subject_public_key_info() != cert.public_key().raw {
                return Err(AkCaError::Invalid(format!(
                    "{} is not the key of {}",
                    key_path.display(),
                    cert_path.display()
                )));
            }
            from_unix_seconds(cert.validity().not_after.timestamp())
        };
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| AkCaError::Invalid(e.to_string()))?;
        Ok(Self {
            cert_der,
            not_after,
            issuer,
            rng: SystemRandom::new(),
        })
    }

    /// The AK CA certificate (DER): the root a `tpm` verifier must trust for AK certificates.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert_der)
    }

    /// Issues the AK certificate for the key `ak_spki` (SubjectPublicKeyInfo DER) of the TPM
    /// `identity`, in device `device_id`, valid for `lifetime` from now (at most until the AK
    /// CA itself expires).
    pub fn issue(
        &self,
        ak_spki: &[u8],
        identity: &TpmIdentity,
        device_id: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedAk, AkCaError> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(ak_spki)
            .map_err(|e| AkCaError::Invalid(format!("AK public key: {e}")))?;
        let Some(permanent_id) =
            portcullis_policy::identity::encode_permanent_identifier_san(device_id, None)
        else {
            return Err(AkCaError::Invalid(format!(
                "device id {device_id:?} cannot be a PermanentIdentifier"
            )));
        };
        let not_before = now - BACKDATE;
        let not_after = (now + lifetime).min(self.not_after);
        let serial = Serial::random(&self.rng).map_err(|e| AkCaError::Sign(e.to_string()))?;

        let mut p = CertificateParams::default();
        // WebAuthn §8.3.1: "Subject field MUST be set to empty."
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
            OID_TCG_KP_AIK_CERTIFICATE.to_vec(),
        )];
        // With an empty subject the SAN is the certificate's only name and must be critical
        // (RFC 5280 §4.2.1.6; TCG EK Credential Profile §3.2.9).
        let names = [directory_name(identity), permanent_id];
        let mut san = CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            portcullis_policy::identity::encode_subject_alt_names(&names),
        );
        san.set_criticality(true);
        p.custom_extensions.push(san);
        p.use_authority_key_identifier_extension = true;
        p.not_before = odt(not_before);
        p.not_after = odt(not_after);
        p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        let cert = p
            .signed_by(&spki, &self.issuer)
            .map_err(|e| AkCaError::Sign(e.to_string()))?;
        Ok(IssuedAk {
            serial,
            der: cert.der().to_vec(),
            not_before: from_unix_seconds(unix_seconds(not_before)),
            not_after: from_unix_seconds(unix_seconds(not_after)),
        })
    }
}

/// GeneralName `[4] directoryName` with one RDN per TPM attribute, UTF8String values
/// (TCG EK Credential Profile §3.2.9).
fn directory_name(id: &TpmIdentity) -> Vec<u8> {
    let mut rdns = Vec::new();
    for (oid, value) in [
        (OID_TPM_MANUFACTURER, &id.manufacturer),
        (OID_TPM_MODEL, &id.model),
        (OID_TPM_VERSION, &id.version),
    ] {
        let mut atv = der::write_tlv(der::TAG_OID, oid);
        atv.extend(der::write_tlv(der::TAG_UTF8_STRING, value.as_bytes()));
        let atv = der::write_tlv(der::TAG_SEQUENCE, &atv);
        rdns.extend(der::write_tlv(0x31, &atv)); // SET OF AttributeTypeAndValue
    }
    // Name is a CHOICE, so [4] is EXPLICIT (RFC 5280 §4.2.1.6 module, X.680 §31.2.7).
    der::write_tlv(0xa4, &der::write_tlv(der::TAG_SEQUENCE, &rdns))
}

fn odt(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn create(pki_dir: &Path, name: &str, key: KeyAlgorithm, now: SystemTime) -> Result<(), AkCaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(pki_dir)
        .map_err(|e| io(pki_dir, e))?;
    let key_pair = key
        .generate()
        .map_err(|e| AkCaError::Invalid(format!("key generation: {e}")))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, name);
    p.distinguished_name
        .push(DnType::CommonName, format!("{name} TPM AK CA"));
    // It signs only end-entity AK certificates.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = odt(now - BACKDATE);
    p.not_after = odt(now + AK_CA_LIFETIME);
    let serial =
        Serial::random(&SystemRandom::new()).map_err(|e| AkCaError::Sign(e.to_string()))?;
    p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    let cert = p
        .self_signed(&key_pair)
        .map_err(|e| AkCaError::Sign(e.to_string()))?;
    replace(
        &pki_dir.join(KEY_FILE),
        key_pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    replace(&pki_dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)
}

/// Writes `data` to `path` through `path.tmp` (created with `mode` from its first byte,
/// synced) and a rename, so `path` is either absent or complete.
fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), AkCaError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    // `mode` applies only when the file is created; a stale temporary file keeps its own.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io(&tmp, e))?;
    f.write_all(data).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The roots the CA's own `tpm` verifier trusts: the configured TPM roots (or, when none are
/// configured, the embedded vendor roots), plus the AK CA, so that AK certificates from open
/// enrollment verify in device-attest-01 without the operator copying the AK CA anywhere.
pub fn tpm_roots_with(configured: Option<Vec<Vec<u8>>>, ak_ca_der: &[u8]) -> Vec<Vec<u8>> {
    let mut roots =
        configured.unwrap_or_else(|| crate::attest::tpm::TpmVerifier::with_default_roots().roots);
    if !roots.iter().any(|r| r == ak_ca_der) {
        roots.push(ak_ca_der.to_vec());
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_ak_ca_created_once_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let now = SystemTime::now();
        let a = AkCa::load_or_create(&pki, "Test", KeyAlgorithm::EcdsaP256, now).unwrap();
        let mode = fs::metadata(pki.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let b = AkCa::load_or_create(&pki, "Test", KeyAlgorithm::EcdsaP256, now).unwrap();
        assert_eq!(a.cert_der(), b.cert_der(), "the same AK CA after reopening");
        fs::set_permissions(pki.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AkCa::load(&pki),
            Err(AkCaError::KeyPermissions(_, 0o644))
        ));
        let roots = tpm_roots_with(None, a.cert_der());
        assert!(roots.len() >= 2, "vendor roots kept, AK CA added");
        assert_eq!(tpm_roots_with(Some(roots.clone()), a.cert_der()), roots);
    }

    #[test]
    fn enroll_directory_name_parses_back() {
        let id = TpmIdentity {
            manufacturer: "id:00001014".into(),
            model: "swtpm".into(),
            version: "id:20191023".into(),
        };
        let gn = directory_name(&id);
        let inner = der::read_exact(&gn, 0xa4).unwrap();
        let (_, name) = x509_parser::x509::X509Name::from_der(inner).unwrap();
        let values: Vec<_> = name
            .iter_attributes()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(values, ["id:00001014", "swtpm", "id:20191023"]);
    }
}
