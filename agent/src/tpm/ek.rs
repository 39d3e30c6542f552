//! The endorsement key (TCG EK Credential Profile for TPM Family 2.0, Level 0 Version 2.5).
//!
//! The EK is a primary key of the endorsement hierarchy created from the profile's default
//! template (Annex B.3.3 template L-1 for RSA 2048, B.3.4 L-2 for ECC P-256): the same template
//! on the same TPM always yields the same key, which is what the manufacturer certified. Its
//! certificate lives in NV at 0x01C00002 (RSA 2048) or 0x01C0000A (ECC P-256) (§2.2.1.4).

use tss_esapi::abstraction::ek as tss_ek;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::traits::Marshall;

use super::public::PublicArea;
use super::{cmd, Result, Tpm, TpmError};
use crate::der;

/// The EK certificate NV index for RSA 2048 (EK Credential Profile §2.2.1.4, low range).
pub const EK_CERT_NV_RSA2048: u32 = 0x01c0_0002;
/// The EK certificate NV index for ECC NIST P-256 (EK Credential Profile §2.2.1.4).
pub const EK_CERT_NV_ECC_P256: u32 = 0x01c0_000a;

/// Which EK (the profile's low-range templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EkAlg {
    /// Template L-1: RSA 2048, the EK every TPM 2.0 has a certificate for.
    #[default]
    Rsa2048,
    /// Template L-2: ECC NIST P-256.
    EccP256,
}

impl EkAlg {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            Self::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            Self::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        }
    }

    pub fn nv_index(self) -> u32 {
        match self {
            Self::Rsa2048 => EK_CERT_NV_RSA2048,
            Self::EccP256 => EK_CERT_NV_ECC_P256,
        }
    }
}

/// A transient EK: flush it with [`Tpm::flush`] when done.
pub(crate) struct Ek {
    pub handle: KeyHandle,
    pub public: PublicArea,
}

impl Tpm {
    /// The EK certificate (DER) from NV, or `None` when the index is not defined (TPMs
    /// without a manufacturer EK certificate; the CA can pin the EK public key instead).
    pub fn ek_certificate(&mut self, alg: EkAlg) -> Result<Option<Vec<u8>>> {
        let index = alg.nv_index();
        if !self.nv_defined(index)? {
            return Ok(None);
        }
        let raw = tss_ek::retrieve_ek_pubcert(&mut self.ctx, alg.selection()).map_err(cmd(
            format!("reading the EK certificate from NV {index:#010x}"),
        ))?;
        // The index may be larger than the certificate: keep the one DER element.
        let len = der::element_len(&raw)
            .filter(|n| *n <= raw.len() && raw.first() == Some(&0x30))
            .ok_or_else(|| {
                TpmError::Invalid(format!(
                    "NV {index:#010x} does not hold a DER certificate (EK Credential Profile §2.2.1.4)"
                ))
            })?;
        Ok(Some(raw[..len].to_vec()))
    }

    /// Creates the EK from the default template (TPM2_CreatePrimary in the endorsement
    /// hierarchy, TPM 2.0 Part 3 §24.1). The caller flushes it.
    pub(crate) fn create_ek(&mut self, alg: EkAlg) -> Result<Ek> {
        let handle = tss_ek::create_ek_object_2(&mut self.ctx, alg.selection(), None)
            .map_err(cmd("TPM2_CreatePrimary(endorsement key, default template)"))?;
        match self.public_of(handle.into(), "EK") {
            Ok(public) => Ok(Ek { handle, public }),
            Err(e) => {
                self.flush(handle.into());
                Err(e)
            }
        }
    }

    /// The EK's TPMT_PUBLIC (what the CA can pin when there is no EK certificate, and what
    /// it encrypts the credential to, TPM 2.0 Part 1 §24).
    pub fn ek_public(&mut self, alg: EkAlg) -> Result<PublicArea> {
        let ek = self.create_ek(alg)?;
        self.flush(ek.handle.into());
        Ok(ek.public)
    }

    /// The TPMT_PUBLIC of a loaded object (TPM2_ReadPublic, Part 3 §12.4).
    pub(crate) fn public_of(
        &mut self,
        object: tss_esapi::handles::ObjectHandle,
        what: &str,
    ) -> Result<PublicArea> {
        let (public, _, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(object.into()))
            .map_err(cmd(format!("TPM2_ReadPublic({what})")))?;
        let bytes = public
            .marshall()
            .map_err(cmd(format!("marshalling the {what} TPMT_PUBLIC")))?;
        PublicArea::parse(&bytes)
    }
}
