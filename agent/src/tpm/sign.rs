//! TPM2_Sign with the device key (TPM 2.0 Part 3 §20.2): ECDSA over a SHA-256 digest the
//! caller computed. The device key is unrestricted, so no TPMT_TK_HASHCHECK ticket is needed
//! (Part 3 §20.2.1: a NULL ticket for unrestricted keys).

use sha2::{Digest as _, Sha256};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, Signature, SignatureScheme};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::{cmd, Persistent, Result, Tpm, TpmError};
use crate::der;

impl Tpm {
    /// Signs SHA-256(`message`) with the device key at `key`: ECDSA P-256 with SHA-256, as a
    /// DER Ecdsa-Sig-Value (RFC 3279 §2.2.3), the form X.509 and TLS carry.
    pub fn sign_sha256(&mut self, key: Persistent, message: &[u8]) -> Result<Vec<u8>> {
        let digest = Digest::try_from(Sha256::digest(message).to_vec())
            .map_err(cmd("SHA-256 digest as TPM2B_DIGEST"))?;
        let object = self.persistent_object(key)?;
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(cmd("NULL TPMT_TK_HASHCHECK"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(object.into(), digest, scheme, ticket)
            })
            .map_err(cmd(format!("TPM2_Sign with the device key {key}")))?;
        match signature {
            Signature::EcDsa(s) => Ok(der::ecdsa_sig(
                s.signature_r().value(),
                s.signature_s().value(),
            )),
            other => Err(TpmError::Invalid(format!(
                "TPM2_Sign returned a {:?} signature, not ECDSA",
                other.algorithm()
            ))),
        }
    }
}
