//! Open TPM enrollment (issue 4; what step-ca lacks, its issue #1707): the CA acts as the
//! attestation CA for AK certificates, which the `tpm` device-attest-01 format then verifies.
//!
//! Two round trips, JSON over the CA's HTTPS listener ([`routes`]), errors as RFC 7807
//! problem documents naming the failed [`Rule`]:
//!
//! 1. `POST /enroll/tpm/start` `{device_id, ek_cert | ek_pub, [ek_chain], ak_pub}`:
//!    - the EK is trusted ([`ek`]): its certificate chains to a configured TPM manufacturer root,
//!      or the bare EK public area is the one the inventory pins for the device;
//!    - the AK is a restricted signing key that never left its TPM ([`ak`], TPM 2.0 Part 2
//!      §8.3);
//!    - the device is in the inventory and `active`, and the EK is not bound elsewhere
//!      (`crate::store` binding rules);
//!    - the CA runs TPM2_MakeCredential ([`credential`]) for a fresh 32-byte credential, keeps
//!      it in a short-lived one-shot session ([`session`]) and answers `{session_id,
//!      credential_blob, secret, expires}`.
//! 2. The device runs TPM2_ActivateCredential with its EK and AK: the TPM releases the
//!    credential only if the EK is its own and an object with the AK's Name is loaded in it
//!    (TPM 2.0 Part 1 §24).
//! 3. `POST /enroll/tpm/finish` `{session_id, credential}`: the credential is compared in
//!    constant time; on success the AK CA ([`ak_cert`]) issues the AK certificate, and the EK is
//!    bound to the device in the same transaction that re-checks the device is `active`.
//!    A session finishes once, whatever the outcome.
//!
//! What this does not prove: that the `device_id` the agent names is the machine the TPM is in.
//! The first enrollment with a genuine TPM binds that TPM to the device (trust on first
//! enrollment); after that only that TPM can enrol as the device. Where the first enrollment
//! must be proven too, an operator pins the device's EK before it enrols (admin API
//! `POST /admin/v1/devices/{id}/eks`, docs/admin-api.md). Sessions live in this process's memory: with
//! several CA nodes, `finish` must reach the node that served `start`.

pub mod ak;
pub mod ak_cert;
pub mod credential;
pub mod ek;
pub mod error;
mod http;
pub mod session;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use portcullis_config::DeviceStatus;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub use ak_cert::{AkCa, AkCaError};
pub use credential::NameAlg;
pub use error::{EnrollError, Rule};
pub use http::routes;

use crate::clock::{unix_seconds, Clock};
use crate::inventory::AUDIT_TARGET;
use crate::pki::InitOptions;
use crate::store::{EkConflict, EkOrigin, EnrollmentRecord, SqliteStore, StoreError};
use ek::{EkTrust, TpmIdentity};
use error::refuse;
use session::{Pending, Sessions};

/// Where [`routes`] are mounted.
pub const START_PATH: &str = "/enroll/tpm/start";
pub const FINISH_PATH: &str = "/enroll/tpm/finish";
/// Certificates an agent may send besides its EK certificate.
pub const MAX_EK_CHAIN: usize = 4;

/// Settings of open TPM enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollSettings {
    /// TPM manufacturer roots for EK certificates (DER). Empty: only pinned EKs enrol.
    pub ek_roots: Vec<Vec<u8>>,
    /// Accept SHA-1 in EK certificate chains and AK Names (`allow_sha1_tpm`).
    pub allow_sha1: bool,
    /// Lifetime of an AK certificate. The AK only vouches for keys at device-attest-01 time,
    /// so a long life costs little; a device re-enrols when it ends.
    pub ak_cert_lifetime: Duration,
    /// How long a started enrollment waits for its finish.
    pub session_ttl: Duration,
    /// Most enrollments waiting for their finish at once.
    pub max_pending: usize,
}

impl Default for EnrollSettings {
    fn default() -> Self {
        Self {
            ek_roots: Vec::new(),
            allow_sha1: false,
            ak_cert_lifetime: Duration::from_secs(365 * 24 * 3600),
            session_ttl: Duration::from_secs(300),
            max_pending: 10_000,
        }
    }
}

/// `POST /enroll/tpm/start`. Binary fields are base64url without padding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The inventory id of the device.
    pub device_id: String,
    /// The EK certificate (DER), e.g. from NV index 0x01c00002 (RSA 2048) or 0x01c0000a (P-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
    /// Intermediates between the EK certificate and a manufacturer root (DER each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ek_chain: Vec<String>,
    /// The EK public area (TPMT_PUBLIC): alone only when the inventory pins that EK; beside
    /// `ek_cert` to state a template other than the TCG default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_pub: Option<String>,
    /// The AK public area (TPMT_PUBLIC, without the TPM2B size).
    pub ak_pub: String,
}

/// The answer to `start`: the inputs of TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StartResponse {
    pub session_id: String,
    /// TPM2B_ID_OBJECT (with its size), base64url.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET (with its size), base64url.
    pub secret: String,
    /// RFC 3339; `finish` after this finds no session.
    pub expires: String,
}

/// `POST /enroll/tpm/finish`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    pub session_id: String,
    /// What TPM2_ActivateCredential returned (certInfo), base64url.
    pub credential: String,
}

/// The answer to `finish`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FinishResponse {
    /// The AK certificate (DER, base64url): `x5c[0]` of the device's `tpm` attestations.
    pub ak_cert: String,
    /// The AK CA certificate (DER, base64url) that signed it.
    pub ak_ca_cert: String,
    /// Lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The enrollment service.
pub struct Enrollment {
    settings: EnrollSettings,
    ak_ca: Arc<AkCa>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    sessions: Sessions,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("ek_roots", &self.settings.ek_roots.len())
            .field("pending", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, EnrollError> {
    B64.decode(value.trim_end_matches('='))
        .map_err(|_| EnrollError::new(Rule::Request, format!("{field} is not base64url")))
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Enrollment {
    pub fn new(
        settings: EnrollSettings,
        ak_ca: Arc<AkCa>,
        store: Arc<SqliteStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let sessions = Sessions::new(settings.max_pending);
        Self {
            settings,
            ak_ca,
            store,
            clock,
            sessions,
        }
    }

    /// The service for the CA in `pki_dir` (its `pki/` directory), creating the AK CA there on
    /// first start with the CA's name and key algorithm.
    pub fn open(
        pki_dir: &Path,
        init: &InitOptions,
        settings: EnrollSettings,
        store: Arc<SqliteStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AkCaError> {
        let ak_ca = AkCa::load_or_create(pki_dir, &init.name, init.key, clock.now())?;
        Ok(Self::new(settings, Arc::new(ak_ca), store, clock))
    }

    pub fn ak_ca(&self) -> &AkCa {
        &self.ak_ca
    }

    /// Step 1. Every refusal is logged (audit target) with its rule.
    pub fn start(&self, req: &StartRequest) -> Result<StartResponse, EnrollError> {
        let result = self.start_inner(req);
        if let Err(e) = &result {
            audit_refusal("start", &req.device_id, e);
        }
        result
    }

    fn start_inner(&self, req: &StartRequest) -> Result<StartResponse, EnrollError> {
        let now = self.clock.now();
        crate::inventory::import::check_device_id(&req.device_id)
            .map_err(|m| EnrollError::new(Rule::DeviceId, format!("device_id: {m}")))?;
        let ek_cert = req
            .ek_cert
            .as_deref()
            .map(|v| b64("ek_cert", v))
            .transpose()?;
        let ek_pub = req
            .ek_pub
            .as_deref()
            .map(|v| b64("ek_pub", v))
            .transpose()?;
        if req.ek_chain.len() > MAX_EK_CHAIN {
            return refuse(
                Rule::Request,
                format!("ek_chain has more than {MAX_EK_CHAIN} certificates"),
            );
        }
        let chain = req
            .ek_chain
            .iter()
            .map(|c| b64("ek_chain", c))
            .collect::<Result<Vec<_>, _>>()?;
        let ak_pub = b64("ak_pub", &req.ak_pub)?;

        let ak = ak::check(&ak_pub, self.settings.allow_sha1)?;
        let trust = EkTrust {
            roots: self.settings.ek_roots.clone(),
            allow_sha1: self.settings.allow_sha1,
        };
        let ek = ek::check(ek_cert.as_deref(), &chain, ek_pub.as_deref(), &trust, now)?;
        self.check_device(&req.device_id)?;
        self.check_binding(&req.device_id, &ek)?;

        let credential = self.sessions.new_credential()?;
        let made = credential::make_credential(&ek, &ak.name, &credential)
            .map_err(|e| EnrollError::internal("MakeCredential", e))?;
        let expires = now + self.settings.session_ttl;
        let ek_hash = ek.hash.clone();
        let session_id = self.sessions.insert(
            Pending {
                device_id: req.device_id.clone(),
                ek,
                ak,
                credential,
                expires,
            },
            now,
        )?;
        tracing::info!(
            target: AUDIT_TARGET,
            action = "tpm_enroll_started",
            device = %req.device_id,
            ek = %ek_hash,
            "TPM enrollment: credential issued to the EK"
        );
        Ok(StartResponse {
            session_id,
            credential_blob: B64.encode(&made.credential_blob),
            secret: B64.encode(&made.secret),
            expires: rfc3339(expires),
        })
    }

    fn check_device(&self, device_id: &str) -> Result<(), EnrollError> {
        let device = self
            .store
            .device(device_id)
            .map_err(|e| EnrollError::internal("reading the inventory", e))?;
        match device {
            None => refuse(
                Rule::DeviceUnknown,
                format!("device {device_id} is not in the inventory"),
            ),
            Some(d) if d.status != DeviceStatus::Active => refuse(
                Rule::DeviceNotActive,
                format!("device {device_id} is {}, not active", d.status.as_str()),
            ),
            Some(_) => Ok(()),
        }
    }

    /// Pins and bindings (module doc of `crate::store::enroll`).
    fn check_binding(&self, device_id: &str, ek: &ek::Ek) -> Result<(), EnrollError> {
        if !ek.certified {
            let pins = self
                .store
                .device_eks(device_id)
                .map_err(|e| EnrollError::internal("reading EK pins", e))?;
            let pinned = pins
                .iter()
                .any(|b| b.ek_hash == ek.hash && b.origin == EkOrigin::Pinned);
            if !pinned {
                return refuse(
                    Rule::EkNotPinned,
                    format!(
                        "ek_pub without ek_cert is accepted only for an EK the inventory pins for the device; EK {} is not pinned for {device_id}",
                        ek.hash
                    ),
                );
            }
        }
        let conflict = self
            .store
            .ek_conflict(device_id, &ek.hash)
            .map_err(|e| EnrollError::internal("reading EK bindings", e))?;
        conflict_result(device_id, &ek.hash, conflict)
    }

    /// Step 3. Every refusal is logged (audit target) with its rule.
    pub fn finish(&self, req: &FinishRequest) -> Result<FinishResponse, EnrollError> {
        let mut device = String::new();
        let result = self.finish_inner(req, &mut device);
        if let Err(e) = &result {
            audit_refusal("finish", &device, e);
        }
        result
    }

    fn finish_inner(
        &self,
        req: &FinishRequest,
        device: &mut String,
    ) -> Result<FinishResponse, EnrollError> {
        let now = self.clock.now();
        let credential = b64("credential", &req.credential)?;
        // One attempt per session: taken out before anything is compared.
        let Some(pending) = self.sessions.take(&req.session_id, now) else {
            return refuse(
                Rule::SessionUnknown,
                "no such enrollment session: never started, expired, replaced by a newer start, or already finished (a session finishes once)",
            );
        };
        device.clone_from(&pending.device_id);
        if !bool::from(credential.as_slice().ct_eq(&pending.credential)) {
            return refuse(
                Rule::CredentialMismatch,
                "the credential is not the one encrypted to the EK: the AK is not loaded in the TPM of that EK, or the blob was not activated with them (TPM 2.0 Part 1 §24)",
            );
        }
        let identity = match &pending.ek.identity {
            Some(id) => id.clone(),
            None => self.pinned_identity(&pending)?,
        };
        let issued = self
            .ak_ca
            .issue(
                &pending.ak.spki,
                &identity,
                &pending.device_id,
                self.settings.ak_cert_lifetime,
                now,
            )
            .map_err(|e| EnrollError::internal("issuing the AK certificate", e))?;
        let record = EnrollmentRecord {
            device_id: pending.device_id.clone(),
            ek_hash: pending.ek.hash.clone(),
            tpm_manufacturer: pending.ek.identity.as_ref().map(|i| i.manufacturer.clone()),
            tpm_model: pending.ek.identity.as_ref().map(|i| i.model.clone()),
            tpm_version: pending.ek.identity.as_ref().map(|i| i.version.clone()),
            ak_serial: issued.serial.to_hex(),
            ak_name: pending.ak.name.clone(),
            ak_not_before: unix_seconds(issued.not_before),
            ak_not_after: unix_seconds(issued.not_after),
            ak_der: issued.der.clone(),
            at: unix_seconds(now),
        };
        match self.store.record_enrollment(&record) {
            Ok(Ok(())) => {}
            Ok(Err(c)) => conflict_result(&pending.device_id, &pending.ek.hash, Some(c))?,
            Err(StoreError::DeviceNotActive { device, status }) => {
                return refuse(
                    Rule::DeviceNotActive,
                    format!("device {device} is {status}, not active"),
                )
            }
            Err(StoreError::NotFound(_)) => {
                return refuse(
                    Rule::DeviceUnknown,
                    format!("device {} is not in the inventory", pending.device_id),
                )
            }
            Err(e) => return Err(EnrollError::internal("recording the enrollment", e)),
        }
        tracing::info!(
            target: AUDIT_TARGET,
            action = "tpm_enrolled",
            device = %pending.device_id,
            ek = %pending.ek.hash,
            ak_name = %hex::encode(&pending.ak.name),
            serial = %record.ak_serial,
            manufacturer = %identity.manufacturer,
            model = %identity.model,
            "TPM enrollment: AK certificate issued and EK bound"
        );
        Ok(FinishResponse {
            ak_cert: B64.encode(&issued.der),
            ak_ca_cert: B64.encode(self.ak_ca.cert_der()),
            serial: record.ak_serial,
            not_after: rfc3339(issued.not_after),
        })
    }

    /// A bare pinned EK has no certificate to name the TPM. The AK certificate still needs the
    /// TCG SAN attributes: those recorded for the EK by an earlier enrollment with its
    /// certificate, otherwise "unknown" (the operator's pin, not a manufacturer, vouches here).
    fn pinned_identity(&self, pending: &Pending) -> Result<TpmIdentity, EnrollError> {
        let row = self
            .store
            .ek_binding(&pending.ek.hash)
            .map_err(|e| EnrollError::internal("reading EK bindings", e))?;
        let get = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        Ok(match row {
            Some(r) => TpmIdentity {
                manufacturer: get(r.tpm_manufacturer),
                model: get(r.tpm_model),
                version: get(r.tpm_version),
            },
            None => TpmIdentity {
                manufacturer: get(None),
                model: get(None),
                version: get(None),
            },
        })
    }
}

fn conflict_result(
    device_id: &str,
    ek_hash: &str,
    conflict: Option<EkConflict>,
) -> Result<(), EnrollError> {
    match conflict {
        None => Ok(()),
        Some(EkConflict::BoundToOtherDevice(other)) => refuse(
            Rule::EkBoundToOtherDevice,
            format!("EK {ek_hash} is bound to device {other}, not {device_id}"),
        ),
        Some(EkConflict::DeviceHasOtherEk(eks)) => refuse(
            Rule::DeviceBoundToOtherEk,
            format!(
                "device {device_id} is bound to another TPM (EK {}); an operator unbinds a replaced TPM",
                eks.join(", ")
            ),
        ),
    }
}

/// Every refused enrollment step is a security event: a TPM (or something pretending to be
/// one) tried to get an AK certificate.
fn audit_refusal(step: &'static str, device: &str, e: &EnrollError) {
    tracing::warn!(
        target: AUDIT_TARGET,
        action = "tpm_enroll_refused",
        step,
        device,
        rule = e.rule.name(),
        detail = %e.detail,
        "TPM enrollment refused"
    );
}
