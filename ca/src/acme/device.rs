//! The `device-attest-01` hooks on the inventory: what the challenge validator
//! ([`DeviceAttest01`]) cannot decide from the attestation alone.
//!
//! - The device must exist in the inventory and be `active` (issue 4; ARCHITECTURE.md: "only
//!   genuine, inventoried, currently trusted devices"). A refusal names its rule in the
//!   problem detail; the server audits every refused device-attest-01 (target
//!   [`AUDIT_TARGET`]), and a valid one here.
//! - The verified attestation (attested key, format, details) is recorded on the
//!   authorization, where finalize compares the CSR key with it and issuance reads the format.
//!
//! The inventory is checked again, inside the issuing transaction, when the certificate is
//! recorded (`AcmeStore::complete_issuance`): a device quarantined between its challenge and
//! finalize gets no certificate.

use std::sync::Arc;

use portcullis_config::DeviceStatus;
use serde_json::{json, Map, Value};

use super::challenge::device_attest01::{DeviceAttest01, DeviceAttestHooks};
use super::identifier::device_id_of;
use super::model::Identifier;
use crate::attest::{Attested, Verifiers};
use crate::clock::{unix_seconds, Clock};
use crate::inventory::{Inventory, AUDIT_TARGET};
use crate::store::{AcmeStore, DeviceAttestation};

/// [`DeviceAttestHooks`] backed by the inventory and the ACME store.
pub struct InventoryHooks {
    inventory: Arc<Inventory>,
    store: Arc<dyn AcmeStore>,
    clock: Arc<dyn Clock>,
}

impl InventoryHooks {
    pub fn new(
        inventory: Arc<Inventory>,
        store: Arc<dyn AcmeStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inventory,
            store,
            clock,
        }
    }

    /// The `device-attest-01` validator with these hooks and `verifiers`.
    pub fn validator(self, verifiers: Verifiers) -> DeviceAttest01 {
        let clock = self.clock.clone();
        DeviceAttest01::new(verifiers, clock, Arc::new(self))
    }
}

/// The refusal text, naming the rule. The audit event is emitted where the challenge is
/// marked invalid (`server::authz`), once per refusal whichever check failed.
fn refuse(rule: &str, identifier: &Identifier, attested: &Attested, detail: String) -> String {
    tracing::debug!(
        rule,
        identifier = %identifier.value,
        format = attested.format,
        "inventory check failed: {detail}"
    );
    format!("rule {rule}: {detail}")
}

impl DeviceAttestHooks for InventoryHooks {
    fn check_device(&self, identifier: &Identifier, attested: &Attested) -> Result<(), String> {
        // draft-ietf-acme-device-attest §5: the attested identifier is the order's. The
        // validator checked it already; checked again here because this is the decision that
        // lets a certificate name the device.
        if !attested
            .identifiers
            .iter()
            .any(|i| i.acme_type() == identifier.kind && i.acme_value() == identifier.value)
        {
            return Err(refuse(
                "identifier-match",
                identifier,
                attested,
                "the attested identifier is not the order identifier".into(),
            ));
        }
        let Some(id) = device_id_of(identifier) else {
            return Err(refuse(
                "device-known",
                identifier,
                attested,
                "not a device identifier".into(),
            ));
        };
        let device = self.inventory.device(&id).map_err(|e| {
            tracing::error!(device = %id, error = %e, "inventory lookup failed");
            "rule device-known: the inventory could not be read".to_string()
        })?;
        match device {
            None => Err(refuse(
                "device-known",
                identifier,
                attested,
                format!("device {id} is not in the inventory"),
            )),
            Some(d) if d.status != DeviceStatus::Active => Err(refuse(
                "device-active",
                identifier,
                attested,
                format!("device {id} is {}, not active", d.status.as_str()),
            )),
            Some(_) => Ok(()),
        }
    }

    fn record(
        &self,
        identifier: &Identifier,
        token: &str,
        attested: &Attested,
    ) -> Result<(), String> {
        let device_id = device_id_of(identifier).ok_or("not a device identifier")?;
        let record = DeviceAttestation {
            device_id: device_id.clone(),
            spki_der: attested.public_key_spki.clone(),
            format: attested.format.to_string(),
            details: details_json(attested),
            at: unix_seconds(self.clock.now()),
        };
        match self.store.record_attestation(token, &record) {
            Ok(true) => {
                tracing::info!(
                    target: AUDIT_TARGET,
                    action = "device_attested",
                    device = %device_id,
                    format = attested.format,
                    details = %record.details,
                    "device-attest-01 valid"
                );
                Ok(())
            }
            Ok(false) => Err("the challenge is no longer being validated".into()),
            Err(e) => {
                tracing::error!(device = %device_id, error = %e, "recording an attestation failed");
                Err("storage failure".into())
            }
        }
    }
}

/// The attestation's facts as a JSON object, for the authorization row and the audit log.
fn details_json(attested: &Attested) -> Value {
    let d = &attested.details;
    let mut out = Map::new();
    out.insert("platform".into(), json!(d.platform));
    for (k, v) in [
        ("manufacturer", &d.manufacturer),
        ("model", &d.model),
        ("firmware_version", &d.firmware_version),
        ("os_version", &d.os_version),
        ("sep_os_version", &d.sep_os_version),
    ] {
        if let Some(v) = v {
            out.insert(k.into(), json!(v));
        }
    }
    if !d.extra.is_empty() {
        out.insert("extra".into(), json!(d.extra));
    }
    let ids: Vec<String> = attested
        .identifiers
        .iter()
        .map(|i| format!("{} {}", i.acme_type(), i.acme_value()))
        .collect();
    out.insert("identifiers".into(), json!(ids));
    Value::Object(out)
}
