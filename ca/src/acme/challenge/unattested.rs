//! `fmt = "portcullis-software-unattested"`: the agent's development mode, a key in a file
//! (agent/src/attestation.rs, agent/README.md). NOTHING is attested: the statement only proves
//! possession of the key (`sig` over the key authorization, like WebAuthn §8.2 "packed" self
//! attestation), and the device identifier is the order's own claim.
//!
//! That is self-reported identity, which Portcullis otherwise never trusts, so the format is
//! registered only when `[ca.attestation] allow_unattested = true`, the device must still be
//! in the inventory and active, and every certificate issued this way carries the format name
//! in its attestation-format extension, where routes can refuse it
//! (`attestation = "tpm"` rules) and `cert inspect` shows it.

use ring::signature::{self, UnparsedPublicKey};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::attest::{
    check_fmt, AttObj, AttestError, AttestationFormat, Attested, Details, DeviceIdentifier, Rule,
};

pub const FMT: &str = "portcullis-software-unattested";

/// The verifier of [`FMT`]. The identifier it reports is filled in by the challenge validator
/// from the order (see `device_attest01`), because nothing here can vouch for one.
#[derive(Debug, Default)]
pub struct UnattestedVerifier;

impl AttestationFormat for UnattestedVerifier {
    fn fmt(&self) -> &'static str {
        FMT
    }

    fn verify(
        &self,
        att: &AttObj,
        key_authorization: &[u8],
        _now: std::time::SystemTime,
    ) -> Result<Attested, AttestError> {
        check_fmt(att, FMT)?;
        let stmt = &att.att_stmt;
        let alg = stmt.int(FMT, "alg")?;
        if alg != -7 {
            return Err(AttestError::new(
                Rule::StatementField,
                format!("{FMT}: alg {alg} is not -7 (ES256, P-256 with SHA-256)"),
            ));
        }
        let spki = stmt.bytes(FMT, "pub")?;
        let sig = stmt.bytes(FMT, "sig")?;
        let (rest, parsed) = SubjectPublicKeyInfo::from_der(spki).map_err(|e| {
            AttestError::new(
                Rule::StatementField,
                format!("{FMT}: pub is not an SPKI: {e}"),
            )
        })?;
        if !rest.is_empty() {
            return Err(AttestError::new(
                Rule::StatementField,
                format!("{FMT}: trailing bytes after pub"),
            ));
        }
        UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            parsed.subject_public_key.data.as_ref(),
        )
        .verify(key_authorization, sig)
        .map_err(|_| {
            AttestError::new(
                Rule::UnattestedSignature,
                format!("{FMT}: sig does not verify over the key authorization with pub (ES256)"),
            )
        })?;
        Ok(Attested {
            format: FMT,
            identifiers: Vec::<DeviceIdentifier>::new(),
            public_key_spki: spki.to_vec(),
            chain: Vec::new(),
            details: Details {
                platform: "software key (unattested)".into(),
                ..Details::default()
            },
        })
    }
}
