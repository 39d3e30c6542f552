//! TPM2_ActivateCredential (TPM 2.0 Part 3 §12.5; credential protection, Part 1 §24): the
//! CA encrypted a secret to the EK, bound to the Name of the AK (TPM2_MakeCredential or its
//! software equivalent); only the TPM that holds both the EK and an object with that Name
//! can recover it. That is what proves to the CA that the AK lives in the TPM whose EK it
//! trusts.
//!
//! Authorizations: the AK (activateHandle, ADMIN role) with its empty password; the EK
//! (keyHandle, USER role) with a policy session satisfying its authPolicy
//! PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile §B.3.2; Part 3 §23.4).

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};

use super::ek::EkAlg;
use super::{cmd, Persistent, Result, Tpm, TpmError};

impl Tpm {
    /// Recovers the credential the CA made for the AK at `ak` with the EK `ek_alg`.
    /// `credential_blob` is the TPM2B_ID_OBJECT contents, `secret` the
    /// TPM2B_ENCRYPTED_SECRET contents (Part 2 §12.4.3, §11.4.33).
    pub fn activate_credential(
        &mut self,
        ak: Persistent,
        ek_alg: EkAlg,
        credential_blob: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>> {
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(cmd("credential_blob is not a valid TPM2B_ID_OBJECT"))?;
        let secret = EncryptedSecret::try_from(secret.to_vec())
            .map_err(cmd("secret is not a valid TPM2B_ENCRYPTED_SECRET"))?;
        let ak_object = self.persistent_object(ak)?;
        let ek = self.create_ek(ek_alg)?;
        let result = self.activate_with(ak_object.into(), ek.handle, blob, secret);
        self.flush(ek.handle.into());
        result
    }

    fn activate_with(
        &mut self,
        ak: KeyHandle,
        ek: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Vec<u8>> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(cmd("TPM2_StartAuthSession(policy)"))?
            .ok_or_else(|| TpmError::Invalid("TPM2_StartAuthSession returned no session".into()))?;
        let result = self.activate_in(session, ak, ek, blob, secret);
        self.flush(SessionHandle::from(session).into());
        result
    }

    fn activate_in(
        &mut self,
        session: AuthSession,
        ak: KeyHandle,
        ek: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Vec<u8>> {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(cmd("TPMA_SESSION on the policy session"))?;
        let policy = PolicySession::try_from(session)
            .map_err(cmd("the EK session is not a policy session"))?;
        // TPM2_PolicySecret(TPM_RH_ENDORSEMENT) (Part 3 §23.4), endorsement auth empty.
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
            .map_err(cmd("TPM2_PolicySecret(endorsement) for the EK"))?;
        let credential = self
            .ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                ctx.activate_credential(ak, ek, blob, secret)
            })
            .map_err(cmd("TPM2_ActivateCredential"))?;
        Ok(credential.value().to_vec())
    }
}
