//! TPM2_Certify (TPM 2.0 Part 3 §18.2): the AK signs a TPMS_ATTEST of type
//! TPM_ST_ATTEST_CERTIFY naming the device key, with `qualifyingData` copied into
//! `extraData` — for ACME the hash of the key authorization (WebAuthn §8.3: "extraData … the
//! hash of attToBeSigned using the hash algorithm employed in alg";
//! draft-ietf-acme-device-attest §5: attToBeSigned is the key authorization).

use sha2::{Digest, Sha256};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, SignatureScheme};
use tss_esapi::traits::Marshall;

use super::ak::AkAlg;
use super::{cmd, Persistent, Result, Tpm};

/// The output of TPM2_Certify, as the `tpm` attestation statement carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// TPMS_ATTEST (Part 2 §10.12.12), marshalled: the statement's `certInfo`.
    pub cert_info: Vec<u8>,
    /// TPMT_SIGNATURE (Part 2 §11.3.4) over `cert_info` by the AK: the statement's `sig`.
    pub signature: Vec<u8>,
    /// The certified key's TPMT_PUBLIC: the statement's `pubArea`.
    pub pub_area: Vec<u8>,
    /// The COSE algorithm of `signature` (the statement's `alg`).
    pub alg: i64,
}

impl Tpm {
    /// Certifies the device key at `key` with the AK at `ak` over `qualifying_data`.
    pub fn certify(
        &mut self,
        key: Persistent,
        ak: Persistent,
        qualifying_data: &[u8],
    ) -> Result<Certification> {
        let ak_public = self.ak_public(ak)?;
        let alg = AkAlg::of(&ak_public)?.cose();
        let key_public = self.device_key_public(key)?;
        let object = self.persistent_object(key)?;
        let signer = self.persistent_object(ak)?;
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(cmd("qualifyingData (at most 64 bytes, TPM2B_DATA)"))?;
        // Both handles carry USER role authorization (Part 3 §18.2 command table): the empty
        // password of userWithAuth objects. SignatureScheme::Null: the AK's own scheme.
        let (attest, signature) = self
            .ctx
            .execute_with_sessions(
                (
                    Some(AuthSession::Password),
                    Some(AuthSession::Password),
                    None,
                ),
                |ctx| ctx.certify(object, signer.into(), data, SignatureScheme::Null),
            )
            .map_err(cmd(format!("TPM2_Certify({key} by AK {ak})")))?;
        Ok(Certification {
            cert_info: attest.marshall().map_err(cmd("marshalling TPMS_ATTEST"))?,
            signature: signature
                .marshall()
                .map_err(cmd("marshalling TPMT_SIGNATURE"))?,
            pub_area: key_public.bytes,
            alg,
        })
    }

    /// [`Tpm::certify`] for an ACME `device-attest-01` challenge: qualifyingData is
    /// SHA-256(key authorization), SHA-256 being the hash of both AK algorithms (RS256, ES256).
    pub fn certify_for_acme(
        &mut self,
        key: Persistent,
        ak: Persistent,
        key_authorization: &str,
    ) -> Result<Certification> {
        let digest = Sha256::digest(key_authorization.as_bytes());
        self.certify(key, ak, &digest)
    }
}
