//! The JSON of open TPM enrollment, as the CA defines it (`portcullis_ca::enroll`,
//! `POST /enroll/tpm/start` and `POST /enroll/tpm/finish`). Kept in this one file so that a
//! change on the CA side is one edit here. Binary fields are base64url without padding.

use serde::{Deserialize, Serialize};

pub const START_PATH: &str = "/enroll/tpm/start";
pub const FINISH_PATH: &str = "/enroll/tpm/finish";

/// Whether `credential_blob` and `secret` carry their TPM2B size prefix (the CA's
/// `StartResponse` documents "TPM2B_ID_OBJECT (with its size)"). The agent checks the prefix
/// against the length and hands the TPM the contents.
pub const TPM2B_WITH_SIZE: bool = true;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartRequest {
    pub device_id: String,
    /// The EK certificate (DER).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
    /// Intermediates between the EK certificate and the manufacturer root (DER each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ek_chain: Vec<String>,
    /// The EK's TPMT_PUBLIC: alone when the TPM has no EK certificate (the inventory must pin
    /// the EK), beside the certificate otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ek_pub: Option<String>,
    /// The AK's TPMT_PUBLIC (no TPM2B size).
    pub ak_pub: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StartResponse {
    pub session_id: String,
    /// TPM2B_ID_OBJECT.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET.
    pub secret: String,
    /// RFC 3339; informational.
    #[serde(default)]
    pub expires: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FinishRequest {
    pub session_id: String,
    /// What TPM2_ActivateCredential returned.
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FinishResponse {
    /// The AK certificate (DER).
    pub ak_cert: String,
    /// The AK CA certificate (DER) that signed it.
    #[serde(default)]
    pub ak_ca_cert: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
}
