//! The algorithms of a `tpm` statement: `alg` (a COSE algorithm identifier, IANA COSE
//! Algorithms registry; RFC 9053, RFC 8812), and the two encodings of `sig` (a TPMT_SIGNATURE
//! as TPM2_Certify returns it, TPM 2.0 Part 2 §11.3.4, or the raw signature WebAuthn clients
//! send).

use ring::digest;
use ring::signature::{self, VerificationAlgorithm};

use super::super::chain::KeyKind;
use super::super::{err, AttestError, Rule};
use super::structures::{
    Reader, MAX_ECC_PARAM, MAX_RSA, TPM_ALG_ECDSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA, TPM_ALG_SHA1,
    TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512,
};

/// The hash of a COSE algorithm (and of `certInfo.extraData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub(super) fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    pub(super) fn from_tpm(id: u16) -> Option<Self> {
        match id {
            TPM_ALG_SHA1 => Some(Self::Sha1),
            TPM_ALG_SHA256 => Some(Self::Sha256),
            TPM_ALG_SHA384 => Some(Self::Sha384),
            TPM_ALG_SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    pub(super) fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => TPM_ALG_SHA1,
            Self::Sha256 => TPM_ALG_SHA256,
            Self::Sha384 => TPM_ALG_SHA384,
            Self::Sha512 => TPM_ALG_SHA512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Pkcs1,
    Pss,
    Ecdsa,
}

/// COSE algorithm identifiers (IANA COSE Algorithms registry; RFC 9053, RFC 8812).
pub(super) fn cose_alg(alg: i64) -> Option<(Scheme, HashAlg, &'static str)> {
    Some(match alg {
        -65535 => (Scheme::Pkcs1, HashAlg::Sha1, "RS1"),
        -257 => (Scheme::Pkcs1, HashAlg::Sha256, "RS256"),
        -258 => (Scheme::Pkcs1, HashAlg::Sha384, "RS384"),
        -259 => (Scheme::Pkcs1, HashAlg::Sha512, "RS512"),
        -37 => (Scheme::Pss, HashAlg::Sha256, "PS256"),
        -38 => (Scheme::Pss, HashAlg::Sha384, "PS384"),
        -39 => (Scheme::Pss, HashAlg::Sha512, "PS512"),
        -7 => (Scheme::Ecdsa, HashAlg::Sha256, "ES256"),
        -35 => (Scheme::Ecdsa, HashAlg::Sha384, "ES384"),
        _ => return None,
    })
}

/// The signature of `certInfo` in either of its two encodings: a TPMT_SIGNATURE
/// (TPM 2.0 Part 2 §11.3.4) as TPM2_Certify returns it, or the raw signature WebAuthn
/// clients send (RSA: the signature octets; ECDSA: DER Ecdsa-Sig-Value).
pub(super) enum SigBytes {
    /// Verify with the `_ASN1` (DER) or plain RSA algorithm.
    Raw(Vec<u8>),
    /// ECDSA r || s, each left-padded to the field size: verify with `_FIXED`.
    EcdsaFixed(Vec<u8>),
}

pub(super) fn decode_sig(
    sig: &[u8],
    scheme: Scheme,
    hash: HashAlg,
    ak: KeyKind,
) -> Result<SigBytes, AttestError> {
    let bad = |why: &str| {
        AttestError::new(
            Rule::TpmSignature,
            format!("tpm: sig is not a valid TPMT_SIGNATURE: {why} (TPM 2.0 Part 2 §11.3.4)"),
        )
    };
    match (scheme, ak) {
        (Scheme::Pkcs1 | Scheme::Pss, KeyKind::Rsa { bits }) => {
            if sig.len() == bits.div_ceil(8) {
                return Ok(SigBytes::Raw(sig.to_vec()));
            }
            let mut r = Reader::new(sig, Rule::TpmSignature, "sig");
            let alg = r.u16("sigAlg")?;
            let want = if scheme == Scheme::Pkcs1 {
                TPM_ALG_RSASSA
            } else {
                TPM_ALG_RSAPSS
            };
            if alg != want {
                return Err(bad(&format!(
                    "sigAlg {alg:#06x} does not match attStmt.alg"
                )));
            }
            if r.u16("hash")? != hash.tpm_id() {
                return Err(bad("hash does not match attStmt.alg"));
            }
            let s = r.tpm2b("sig", MAX_RSA)?.to_vec();
            r.finish()?;
            Ok(SigBytes::Raw(s))
        }
        (Scheme::Ecdsa, KeyKind::P256 | KeyKind::P384) => {
            if sig.first() == Some(&0x30) {
                return Ok(SigBytes::Raw(sig.to_vec()));
            }
            let len = if ak == KeyKind::P256 { 32 } else { 48 };
            let mut r = Reader::new(sig, Rule::TpmSignature, "sig");
            if r.u16("sigAlg")? != TPM_ALG_ECDSA {
                return Err(bad("sigAlg is not TPM_ALG_ECDSA"));
            }
            if r.u16("hash")? != hash.tpm_id() {
                return Err(bad("hash does not match attStmt.alg"));
            }
            let sr = r.tpm2b("signatureR", MAX_ECC_PARAM)?;
            let ss = r.tpm2b("signatureS", MAX_ECC_PARAM)?;
            r.finish()?;
            if sr.len() > len || ss.len() > len {
                return Err(bad("r or s longer than the curve's field"));
            }
            let mut fixed = vec![0u8; 2 * len];
            fixed[len - sr.len()..len].copy_from_slice(sr);
            fixed[2 * len - ss.len()..].copy_from_slice(ss);
            Ok(SigBytes::EcdsaFixed(fixed))
        }
        _ => err(
            Rule::TpmAlgorithm,
            format!("tpm: attStmt.alg does not fit the AK's key ({ak:?}) (WebAuthn §8.3)"),
        ),
    }
}

pub(super) fn ring_alg(
    scheme: Scheme,
    hash: HashAlg,
    ak: KeyKind,
    fixed: bool,
) -> Option<&'static dyn VerificationAlgorithm> {
    use signature::*;
    Some(match (scheme, hash, ak, fixed) {
        (Scheme::Pkcs1, HashAlg::Sha1, KeyKind::Rsa { .. }, false) => {
            &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (Scheme::Pkcs1, HashAlg::Sha256, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA256,
        (Scheme::Pkcs1, HashAlg::Sha384, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA384,
        (Scheme::Pkcs1, HashAlg::Sha512, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA512,
        (Scheme::Pss, HashAlg::Sha256, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA256,
        (Scheme::Pss, HashAlg::Sha384, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA384,
        (Scheme::Pss, HashAlg::Sha512, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA512,
        (Scheme::Ecdsa, HashAlg::Sha256, KeyKind::P256, false) => &ECDSA_P256_SHA256_ASN1,
        (Scheme::Ecdsa, HashAlg::Sha256, KeyKind::P256, true) => &ECDSA_P256_SHA256_FIXED,
        (Scheme::Ecdsa, HashAlg::Sha384, KeyKind::P384, false) => &ECDSA_P384_SHA384_ASN1,
        (Scheme::Ecdsa, HashAlg::Sha384, KeyKind::P384, true) => &ECDSA_P384_SHA384_FIXED,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_tpm_cose_algs() {
        assert_eq!(cose_alg(-65535).map(|a| a.2), Some("RS1"));
        assert_eq!(cose_alg(-7).map(|a| a.1), Some(HashAlg::Sha256));
        assert_eq!(cose_alg(-8), None); // EdDSA: not a TPM algorithm
    }
}
