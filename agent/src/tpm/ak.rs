//! The attestation key (AK): a restricted signing key — it signs only TPM-generated
//! structures such as TPMS_ATTEST (TPM 2.0 Part 1 §25.2.2, Part 2 §8.3.3.1.3) — created as a
//! child of the EK (so in the endorsement hierarchy), with fixedTPM | fixedParent |
//! sensitiveDataOrigin | userWithAuth | restricted | sign (TCG EK Credential Profile Annex B.6
//! describes the same AK shape; WebAuthn §8.3 needs nothing else of it).
//!
//! Creating and loading a child of the EK needs a policy session satisfying the EK's
//! authPolicy, PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile §B.3.2; TPM 2.0 Part 3
//! §23.4); `tss_esapi::abstraction::ak` does exactly that and flushes its session.
//!
//! The AK is persisted at a handle of its own so that the AK certificate the CA issued stays
//! valid across runs and reboots.

use tss_esapi::abstraction::ak as tss_ak;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;

use super::ek::EkAlg;
use super::public::{
    PublicArea, PublicKey, FIXED_PARENT, FIXED_TPM, RESTRICTED, SENSITIVE_DATA_ORIGIN, SIGN_ENCRYPT,
};
use super::{cmd, Persistent, Result, Tpm, TpmError};

/// The AK's key and signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AkAlg {
    /// RSA 2048, RSASSA-PKCS1-v1_5 with SHA-256 (COSE RS256, -257).
    Rsa2048,
    /// ECC NIST P-256, ECDSA with SHA-256 (COSE ES256, -7).
    #[default]
    EccP256,
}

impl AkAlg {
    /// The COSE algorithm of the AK's signatures (IANA COSE Algorithms; WebAuthn §8.3 `alg`).
    pub fn cose(self) -> i64 {
        match self {
            Self::Rsa2048 => -257,
            Self::EccP256 => -7,
        }
    }

    fn selection(self) -> (AsymmetricAlgorithmSelection, SignatureSchemeAlgorithm) {
        match self {
            Self::Rsa2048 => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
            Self::EccP256 => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
        }
    }

    /// The AK algorithm of a public area the agent created.
    pub fn of(public: &PublicArea) -> Result<Self> {
        match public.key {
            PublicKey::Rsa { .. } => Ok(Self::Rsa2048),
            PublicKey::Ecc { .. } => Ok(Self::EccP256),
        }
    }
}

/// The attributes every AK must have.
const AK_ATTRIBUTES: u32 =
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT;

impl Tpm {
    /// Creates an AK under the EK `ek_alg` and persists it at `handle`. Fails if the handle
    /// is taken (evict it first with [`Tpm::evict`] to replace an AK on purpose: its AK
    /// certificate then no longer matches).
    pub fn create_ak(
        &mut self,
        ek_alg: EkAlg,
        alg: AkAlg,
        handle: Persistent,
    ) -> Result<PublicArea> {
        if self.persistent_exists(handle)? {
            return Err(TpmError::Invalid(format!(
                "persistent handle {handle} already holds an object; refusing to replace an AK"
            )));
        }
        let ek = self.create_ek(ek_alg)?;
        let result = self.create_ak_under(ek.handle, alg, handle);
        self.flush(ek.handle.into());
        result
    }

    fn create_ak_under(
        &mut self,
        ek: tss_esapi::handles::KeyHandle,
        alg: AkAlg,
        handle: Persistent,
    ) -> Result<PublicArea> {
        let (key_alg, sign_alg) = alg.selection();
        // TPM2_Create under the EK (Part 3 §12.1) in a PolicySecret(endorsement) session.
        let created = tss_ak::create_ak_2(
            &mut self.ctx,
            ek,
            HashingAlgorithm::Sha256,
            key_alg,
            sign_alg,
            None,
            None,
        )
        .map_err(cmd("TPM2_Create(attestation key under the EK)"))?;
        // TPM2_Load (Part 3 §12.2), same policy.
        let loaded = tss_ak::load_ak(
            &mut self.ctx,
            ek,
            None,
            created.out_private,
            created.out_public,
        )
        .map_err(cmd("TPM2_Load(attestation key)"))?;
        let result = self
            .public_of(loaded.into(), "AK")
            .and_then(|public| self.persist(loaded.into(), handle).map(|()| public));
        self.flush(loaded.into());
        result
    }

    /// The public area of the AK persisted at `handle`, checked to be an AK.
    pub fn ak_public(&mut self, handle: Persistent) -> Result<PublicArea> {
        let object = self.persistent_object(handle)?;
        let public = self.public_of(object, "AK")?;
        if !public.has(AK_ATTRIBUTES) || public.has(super::public::DECRYPT) {
            return Err(TpmError::Invalid(format!(
                "the object at {handle} is not an attestation key (objectAttributes {:#010x}: needs fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign; TPM 2.0 Part 2 §8.3)",
                public.attributes
            )));
        }
        Ok(public)
    }

    /// The AK at `handle`, created (under the EK `ek_alg`) when the handle is empty.
    pub fn ensure_ak(
        &mut self,
        ek_alg: EkAlg,
        alg: AkAlg,
        handle: Persistent,
    ) -> Result<PublicArea> {
        if self.persistent_exists(handle)? {
            self.ak_public(handle)
        } else {
            self.create_ak(ek_alg, alg, handle)
        }
    }
}
