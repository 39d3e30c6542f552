//! The device key, in one of two modes:
//!
//! - [`KeyMode::Tpm`]: a P-256 key generated inside the TPM and persisted at a handle
//!   ([`crate::tpm::device_key`]); the private key never leaves the TPM. The CSR is signed by
//!   TPM2_Sign through rcgen's [`SigningKey`] trait, and the attestation is TPM2_Certify by
//!   the AK.
//! - [`KeyMode::Software`] (development only): a P-256 key in a PKCS#8 file (mode 0600). Its
//!   attestation is [`crate::attestation::FMT_SOFTWARE`], which says in its name that nothing
//!   is attested.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SigningKey};

use crate::attestation;
use crate::enroll::blocking;
use crate::error::{io, AgentError, Result};
use crate::tpm::ak::AkAlg;
use crate::tpm::ek::EkAlg;
use crate::tpm::{Persistent, Tpm};

/// The default persistent handle of the attestation key.
pub const DEFAULT_AK_HANDLE: u32 = 0x8100_0102;

/// Where the TPM keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKeyConfig {
    /// tpm2-tss TCTI: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, …
    pub tcti: String,
    /// The device key's persistent handle (default 0x81000101).
    pub device_key_handle: Persistent,
    /// The AK's persistent handle (default 0x81000102).
    pub ak_handle: Persistent,
    pub ek_alg: EkAlg,
    pub ak_alg: AkAlg,
}

impl TpmKeyConfig {
    pub fn new(tcti: impl Into<String>) -> Self {
        Self {
            tcti: tcti.into(),
            device_key_handle: Persistent(crate::tpm::device_key::DEFAULT_DEVICE_KEY_HANDLE),
            ak_handle: Persistent(DEFAULT_AK_HANDLE),
            ek_alg: EkAlg::Rsa2048,
            ak_alg: AkAlg::EccP256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMode {
    Tpm(TpmKeyConfig),
    /// Development only: the key is a file, nothing is attested.
    Software,
}

/// The key file of the software mode, inside the output directory.
pub const SOFTWARE_KEY_FILE: &str = "key.pem";

/// A TPM-resident key as an rcgen signer: `sign` is TPM2_Sign over SHA-256(msg).
pub struct TpmSigner {
    tcti: String,
    handle: Persistent,
    point: Vec<u8>,
}

impl TpmSigner {
    pub fn new(tcti: String, handle: Persistent, point: Vec<u8>) -> Self {
        Self {
            tcti,
            handle,
            point,
        }
    }
}

impl PublicKeyData for TpmSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for TpmSigner {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        let mut tpm = Tpm::open(&self.tcti).map_err(|e| {
            tracing::error!(error = %e, "signing with the TPM key");
            rcgen::Error::RemoteKeyError
        })?;
        tpm.sign_sha256(self.handle, msg).map_err(|e| {
            tracing::error!(error = %e, "signing with the TPM key");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A PKCS#10 request for `device_id` signed by `key` (RFC 2986). The CA takes the identity
/// from the order and the key from the CSR; the subject is informational.
pub fn csr(key: &impl SigningKey, device_id: &str) -> Result<Vec<u8>> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| AgentError::Invalid(format!("CSR parameters: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    let csr = params
        .serialize_request(key)
        .map_err(|e| AgentError::Invalid(format!("signing the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// The device key as the ACME client needs it.
pub enum DeviceKey {
    Tpm {
        cfg: TpmKeyConfig,
        spki: Vec<u8>,
        point: Vec<u8>,
    },
    Software {
        key: Box<KeyPair>,
        path: PathBuf,
    },
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tpm { cfg, .. } => write!(f, "DeviceKey::Tpm({})", cfg.device_key_handle),
            Self::Software { path, .. } => write!(f, "DeviceKey::Software({})", path.display()),
        }
    }
}

impl DeviceKey {
    /// Opens the device key, creating it when `create` is true and it does not exist yet.
    pub async fn open(mode: &KeyMode, out_dir: &Path, create: bool) -> Result<Self> {
        match mode {
            KeyMode::Tpm(cfg) => {
                let cfg = cfg.clone();
                blocking(move || {
                    let mut tpm = Tpm::open(&cfg.tcti)?;
                    let public = if create {
                        tpm.ensure_device_key(cfg.device_key_handle)?
                    } else {
                        tpm.device_key_public(cfg.device_key_handle)?
                    };
                    Ok(Self::Tpm {
                        spki: public.spki()?,
                        point: public.ec_point()?,
                        cfg,
                    })
                })
                .await
            }
            KeyMode::Software => {
                let path = out_dir.join(SOFTWARE_KEY_FILE);
                let key = Box::new(software_key(&path, create)?);
                Ok(Self::Software { key, path })
            }
        }
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki(&self) -> Vec<u8> {
        match self {
            Self::Tpm { spki, .. } => spki.clone(),
            Self::Software { key, .. } => key.subject_public_key_info(),
        }
    }

    /// The `attObj` (CBOR) answering a device-attest-01 challenge with `key_authorization`.
    /// `ak_chain`: the AK certificate and its intermediates (TPM mode).
    pub async fn attest(&self, key_authorization: &str, ak_chain: &[Vec<u8>]) -> Result<Vec<u8>> {
        match self {
            Self::Tpm { cfg, .. } => {
                let cfg = cfg.clone();
                let ka = key_authorization.to_owned();
                let certification = blocking(move || {
                    let mut tpm = Tpm::open(&cfg.tcti)?;
                    Ok(tpm.certify_for_acme(cfg.device_key_handle, cfg.ak_handle, &ka)?)
                })
                .await?;
                Ok(attestation::tpm_att_obj(&certification, ak_chain))
            }
            Self::Software { key, .. } => {
                let sig = key.sign(key_authorization.as_bytes()).map_err(|e| {
                    AgentError::Invalid(format!("signing the key authorization: {e}"))
                })?;
                Ok(attestation::software_att_obj(
                    &key.subject_public_key_info(),
                    &sig,
                ))
            }
        }
    }

    /// A CSR for `device_id` signed by this key (TPM2_Sign in TPM mode).
    pub async fn csr(&self, device_id: &str) -> Result<Vec<u8>> {
        match self {
            Self::Tpm { cfg, point, .. } => {
                let signer = TpmSigner::new(cfg.tcti.clone(), cfg.device_key_handle, point.clone());
                let device_id = device_id.to_owned();
                blocking(move || csr(&signer, &device_id)).await
            }
            Self::Software { key, .. } => csr(key.as_ref(), device_id),
        }
    }

    /// What the key reference file says: the openssl tpm2 provider URI, or the key file.
    pub fn reference(&self) -> String {
        match self {
            Self::Tpm { cfg, .. } => format!("handle:{}", cfg.device_key_handle.hex()),
            Self::Software { path, .. } => path.display().to_string(),
        }
    }
}

/// Loads, or creates (0600, never overwriting), the software key.
fn software_key(path: &Path, create: bool) -> Result<KeyPair> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            let mode = std::fs::metadata(path)
                .map_err(io(path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(AgentError::Config(format!(
                    "{}: the software key is readable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
            KeyPair::from_pem(&pem).map_err(|e| {
                AgentError::Config(format!("{}: not a PKCS#8 P-256 key: {e}", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            tracing::warn!(
                path = %path.display(),
                "software key mode: the device key is a FILE, not hardware; for development only"
            );
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| AgentError::Invalid(format!("generating the software key: {e}")))?;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            f.write_all(key.serialize_pem().as_bytes())
                .map_err(io(path))?;
            Ok(key)
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn keys_software_key_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOFTWARE_KEY_FILE);
        assert!(
            software_key(&path, false).is_err(),
            "not created unless asked"
        );
        let key = software_key(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = software_key(&path, false).unwrap();
        assert_eq!(key.public_key_pem(), again.public_key_pem());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = software_key(&path, false).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn keys_csr_is_signed_by_the_key() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = csr(&key, "device-7").unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        req.verify_signature().unwrap();
        assert_eq!(
            req.certification_request_info.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
    }
}
