//! The admin API's JSON documents, shared by the server and [`super::client`].
//!
//! Requests refuse unknown fields (a misspelt `reason` must not silently become "no reason");
//! responses are read leniently by the client, so a newer server may add fields.

use portcullis_config::DeviceStatus;
use serde::{Deserialize, Serialize};

use crate::inventory::import::{FieldChange, RowError};
use crate::store::{Device, EkBinding, HistoryEntry};

/// A device as the API shows it. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: String,
    pub hardware_module: Option<String>,
    pub platform: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub status: DeviceStatus,
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            hardware_module: d.hw_module_id.clone(),
            platform: d.platform.clone(),
            owner: d.owner.clone(),
            tags: d.tags.iter().cloned().collect(),
            status: d.status,
            source: d.source.clone(),
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

/// Seconds since the epoch as RFC 3339 (the number itself if it is out of range).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// `GET /admin/v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

/// One status change: who, why, from what to what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryView {
    pub actor: String,
    pub reason: String,
    /// `null` when the device was created.
    pub from: Option<DeviceStatus>,
    pub to: DeviceStatus,
    pub at: String,
}

impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> Self {
        Self {
            actor: h.actor.clone(),
            reason: h.reason.clone(),
            from: h.from,
            to: h.to,
            at: rfc3339(h.at),
        }
    }
}

/// `GET /admin/v1/devices/{id}`: the device and its status history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceView,
    pub history: Vec<HistoryView>,
}

/// `PUT /admin/v1/devices/{id}`: the device's descriptive fields become exactly these (absent
/// = none). `status` is kept when absent (a new device: `active`), so editing an owner never
/// re-activates a quarantined device by accident; `reason` is required with `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutDevice {
    /// Optional in the body; if present it must equal the id in the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Where the record comes from; kept when absent (a new device: `admin-api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /admin/v1/devices/{id}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub status: DeviceStatus,
    /// Required, non-empty: it goes into the history and the audit log.
    pub reason: String,
}

/// `POST /admin/v1/devices/{id}/eks`: pin a TPM endorsement key to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinEkRequest {
    /// SHA-256 of the EK's SubjectPublicKeyInfo DER, hex: `openssl x509 -in ek.pem -pubkey
    /// -noout | openssl pkey -pubin -outform der | sha256sum`.
    pub ek_sha256: String,
    pub reason: String,
}

/// `POST /admin/v1/devices/{id}/eks/unbind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnbindEksRequest {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnbindEksResult {
    pub removed: usize,
}

/// The EKs of a device (`GET`/`POST /admin/v1/devices/{id}/eks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EkList {
    pub eks: Vec<EkView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EkView {
    pub ek_sha256: String,
    /// `enrolled` (bound by a first enrollment) or `pinned` (by an operator).
    pub origin: String,
    pub tpm_manufacturer: Option<String>,
    pub tpm_model: Option<String>,
    pub tpm_version: Option<String>,
    pub created_at: i64,
    pub enrolled_at: Option<i64>,
}

impl From<&EkBinding> for EkView {
    fn from(b: &EkBinding) -> Self {
        Self {
            ek_sha256: b.ek_hash.clone(),
            origin: b.origin.as_str().to_string(),
            tpm_manufacturer: b.tpm_manufacturer.clone(),
            tpm_model: b.tpm_model.clone(),
            tpm_version: b.tpm_version.clone(),
            created_at: b.created_at,
            enrolled_at: b.enrolled_at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// The answer to `PUT` and to a status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceResult {
    pub outcome: Outcome,
    pub device: DeviceView,
    /// Fields that changed, with before and after.
    #[serde(default)]
    pub changes: Vec<FieldChange>,
    /// Certificates revoked by this change (lowercase hex serials).
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

/// `POST /admin/v1/import`: what was (or, with `dry_run`, would be) done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub format: String,
    pub dry_run: bool,
    /// True when the changes were committed.
    pub applied: bool,
    pub summary: ImportSummary,
    pub added: Vec<ImportAdded>,
    pub updated: Vec<ImportUpdated>,
    pub unchanged: Vec<ImportUnchanged>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Certificates revoked (or, in a dry run, that would be).
    pub revoked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportAdded {
    pub line: u64,
    pub device: DeviceView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportUpdated {
    pub line: u64,
    pub id: String,
    pub changes: Vec<FieldChange>,
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportUnchanged {
    pub line: u64,
    pub id: String,
}

/// An RFC 7807 problem document (`application/problem+json`). `errors` is an extension
/// member (RFC 7807 §3.2) carrying an import's per-row errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDocument {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RowError>,
}
