//! The device key: the non-exportable key the device certificate is issued for.
//!
//! ECC NIST P-256, nameAlg SHA-256, objectAttributes fixedTPM | fixedParent |
//! sensitiveDataOrigin | userWithAuth | noDA | sign (TPM 2.0 Part 2 §8.3.3): generated inside
//! the TPM, never duplicable, an unrestricted signing key so that it can sign TLS handshakes
//! and the CSR. Scheme TPM_ALG_NULL: the caller names ECDSA and the hash at each TPM2_Sign
//! (Part 3 §20.2), so TLS stacks may use any hash with it.
//!
//! It is created under a storage root key (SRK, TCG TPM v2.0 Provisioning Guidance §7.5.1
//! ECC template: restricted decrypt, AES-128-CFB) that is recreated on demand from its
//! template, and persisted with TPM2_EvictControl at a configurable handle (default
//! 0x81000101) where `openssl … -provider tpm2 -key handle:0x81000101` and curl find it.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinitionObject,
};

use super::public::{
    PublicArea, DECRYPT, FIXED_PARENT, FIXED_TPM, RESTRICTED, SENSITIVE_DATA_ORIGIN, SIGN_ENCRYPT,
};
use super::{cmd, Persistent, Result, Tpm, TpmError};

/// The default persistent handle of the device key.
pub const DEFAULT_DEVICE_KEY_HANDLE: u32 = 0x8100_0101;

fn srk_template() -> Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(cmd("SRK attributes"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(cmd("SRK parameters"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("SRK template"))
}

fn device_key_template() -> Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(cmd("device key attributes"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                // These two flags only drive tss-esapi's own consistency check, which insists
                // on a scheme for signing keys; the TPM allows TPM_ALG_NULL for an
                // unrestricted signing key (Part 2 §12.2.3.6, TPMS_ECC_PARMS.scheme) and the
                // sign attribute above is what it enforces.
                .with_is_signing_key(false)
                .with_is_decryption_key(false)
                .with_restricted(false)
                .build()
                .map_err(cmd("device key parameters"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("device key template"))
}

/// What the device key must be for the CA to accept it (the rule of
/// `portcullis_ca::attest::tpm`): fixedTPM, fixedParent, sensitiveDataOrigin, sign, not
/// restricted, not decrypt.
fn check_device_key(handle: Persistent, public: &PublicArea) -> Result<()> {
    let want = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | SIGN_ENCRYPT;
    if !public.has(want) || public.attributes & (RESTRICTED | DECRYPT) != 0 {
        return Err(TpmError::Invalid(format!(
            "the object at {handle} is not a device key (objectAttributes {:#010x}: needs fixedTPM, fixedParent, sensitiveDataOrigin, sign, not restricted, not decrypt)",
            public.attributes
        )));
    }
    public.ec_point().map(|_| ())
}

impl Tpm {
    /// Creates a new device key and persists it at `handle`. Fails if the handle is taken.
    pub fn create_device_key(&mut self, handle: Persistent) -> Result<PublicArea> {
        if self.persistent_exists(handle)? {
            return Err(TpmError::Invalid(format!(
                "persistent handle {handle} already holds an object; evict it first to replace the device key"
            )));
        }
        // TPM2_CreatePrimary in the owner hierarchy (Part 3 §24.1), owner auth empty.
        let template = srk_template()?;
        let srk = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(cmd("TPM2_CreatePrimary(storage root key)"))?
            .key_handle;
        let result = self.create_device_key_under(srk, handle);
        self.flush(srk.into());
        result
    }

    fn create_device_key_under(
        &mut self,
        srk: KeyHandle,
        handle: Persistent,
    ) -> Result<PublicArea> {
        let template = device_key_template()?;
        // TPM2_Create (Part 3 §12.1) then TPM2_Load (§12.2) under the SRK.
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, template, None, None, None, None)
            })
            .map_err(cmd("TPM2_Create(device key)"))?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, created.out_private, created.out_public)
            })
            .map_err(cmd("TPM2_Load(device key)"))?;
        let result = self
            .public_of(loaded.into(), "device key")
            .and_then(|public| {
                check_device_key(handle, &public)?;
                self.persist(loaded.into(), handle)?;
                Ok(public)
            });
        self.flush(loaded.into());
        result
    }

    /// The public area of the device key persisted at `handle`, checked.
    pub fn device_key_public(&mut self, handle: Persistent) -> Result<PublicArea> {
        let object = self.persistent_object(handle)?;
        let public = self.public_of(object, "device key")?;
        check_device_key(handle, &public)?;
        Ok(public)
    }

    /// The device key at `handle`, created when the handle is empty.
    pub fn ensure_device_key(&mut self, handle: Persistent) -> Result<PublicArea> {
        if self.persistent_exists(handle)? {
            self.device_key_public(handle)
        } else {
            self.create_device_key(handle)
        }
    }
}
