//! Refusals of the enrollment protocol: every one names the rule that failed, so the agent's
//! operator, the problem document and the audit log all say the same thing.

use std::fmt;

/// Which enrollment check refused. Stable names (kebab-case, [`Rule::name`]) for the problem
/// document, the audit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The request body is not the JSON this endpoint takes, or a field is not base64url.
    Request,
    /// Neither `ek_cert` nor `ek_pub` was sent.
    EkMissing,
    /// `ek_cert` is not a DER X.509 certificate, or is a CA certificate.
    EkCertParse,
    /// `ek_cert` does not chain to a configured TPM manufacturer root (RFC 5280 §6.1 as the
    /// vendor-tolerant walker in `crate::attest::chain` applies it).
    EkCertChain,
    /// The EK certificate lacks the TPM manufacturer / model / version SAN the AK certificate
    /// must copy (TCG EK Credential Profile §3.2.9).
    EkCertTpmIdentity,
    /// The EK key is of an unsupported type or too weak (RSA ≥ 2048, ECC P-256/P-384).
    EkKey,
    /// `ek_pub` is not a well-formed TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4).
    EkPubParse,
    /// `ek_pub` is not a restricted decryption key, the shape of every EK template (TCG EK
    /// Credential Profile §2.1.5; TPM 2.0 Part 2 §8.3.3.1).
    EkPubAttributes,
    /// `ek_pub` and `ek_cert` were both sent and name different keys.
    EkPubMismatch,
    /// A bare `ek_pub` was sent, and the inventory does not pin that EK for the device.
    EkNotPinned,
    /// The EK belongs to another device.
    EkBoundToOtherDevice,
    /// The device is pinned or bound to another EK.
    DeviceBoundToOtherEk,
    /// `ak_pub` is not a well-formed TPMT_PUBLIC.
    AkPubParse,
    /// The AK is not a restricted signing key that was generated in and cannot leave its TPM
    /// (TPM 2.0 Part 2 §8.3.3).
    AkAttributes,
    /// The AK's nameAlg is not an accepted hash (its Name binds the credential).
    AkNameAlg,
    /// The AK key is too weak or of an unsupported type.
    AkKey,
    /// `device_id` is not a device id the inventory can hold.
    DeviceId,
    /// The device is not in the inventory.
    DeviceUnknown,
    /// The device is not `active`.
    DeviceNotActive,
    /// Too many enrollments are waiting for their second round trip.
    Capacity,
    /// The session does not exist: never started, expired, or already finished (one-shot).
    SessionUnknown,
    /// The credential sent back is not the one the CA encrypted to the EK: the AK is not in the
    /// TPM of that EK (TPM 2.0 Part 1 §24).
    CredentialMismatch,
    /// The CA could not complete the request (storage, signing, randomness).
    Internal,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Request => "request",
            Rule::EkMissing => "ek-missing",
            Rule::EkCertParse => "ek-cert-parse",
            Rule::EkCertChain => "ek-cert-chain",
            Rule::EkCertTpmIdentity => "ek-cert-tpm-identity",
            Rule::EkKey => "ek-key",
            Rule::EkPubParse => "ek-pub-parse",
            Rule::EkPubAttributes => "ek-pub-attributes",
            Rule::EkPubMismatch => "ek-pub-mismatch",
            Rule::EkNotPinned => "ek-not-pinned",
            Rule::EkBoundToOtherDevice => "ek-bound-to-other-device",
            Rule::DeviceBoundToOtherEk => "device-bound-to-other-ek",
            Rule::AkPubParse => "ak-pub-parse",
            Rule::AkAttributes => "ak-attributes",
            Rule::AkNameAlg => "ak-name-alg",
            Rule::AkKey => "ak-key",
            Rule::DeviceId => "device-id",
            Rule::DeviceUnknown => "device-known",
            Rule::DeviceNotActive => "device-active",
            Rule::Capacity => "capacity",
            Rule::SessionUnknown => "session-unknown",
            Rule::CredentialMismatch => "credential-mismatch",
            Rule::Internal => "internal",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused (or failed) enrollment step: the rule and a sentence that cites its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {detail}")]
pub struct EnrollError {
    pub rule: Rule,
    pub detail: String,
}

impl EnrollError {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            rule,
            detail: detail.into(),
        }
    }

    /// A failure of the CA itself: logged in full here, told to the client only as internal.
    pub(crate) fn internal(what: &str, e: impl fmt::Display) -> Self {
        tracing::error!(error = %e, "TPM enrollment: {what}");
        Self::new(Rule::Internal, format!("{what} failed; see the CA's log"))
    }
}

pub(crate) fn refuse<T>(rule: Rule, detail: impl Into<String>) -> Result<T, EnrollError> {
    Err(EnrollError::new(rule, detail))
}
