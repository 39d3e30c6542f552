//! Open TPM enrollment (`crate::enroll`): which endorsement key (EK) belongs to which inventory
//! device, and the AK certificates issued on the strength of it.
//!
//! The binding rules live here, next to the rows they read, so that the check made when an
//! enrollment starts and the one made inside the committing transaction are the same code:
//! - an EK belongs to at most one device (the EK hash is the primary key);
//! - a device that has EK rows (pinned by an operator or bound by an earlier enrollment)
//!   enrols only with one of those EKs: a second genuine TPM cannot take over a device id
//!   that is already bound. A replaced TPM is unbound by an operator
//!   ([`SqliteStore::unbind_device_eks`]).

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::sqlite::{SqliteStore, StoreError};

/// Where an EK row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkOrigin {
    /// An operator said this EK is the device's TPM.
    Pinned,
    /// An enrollment with an EK certificate bound it (trust on first enrollment).
    Enrolled,
}

impl EkOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            EkOrigin::Pinned => "pinned",
            EkOrigin::Enrolled => "enrolled",
        }
    }
}

/// One EK bound to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkBinding {
    /// SHA-256 of the EK's SubjectPublicKeyInfo DER, lowercase hex.
    pub ek_hash: String,
    pub device_id: String,
    pub origin: EkOrigin,
    pub tpm_manufacturer: Option<String>,
    pub tpm_model: Option<String>,
    pub tpm_version: Option<String>,
    pub created_at: i64,
    /// The last successful credential activation with this EK.
    pub enrolled_at: Option<i64>,
}

/// Why an EK may not be used for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkConflict {
    /// The EK is bound to another device (its id).
    BoundToOtherDevice(String),
    /// The device is bound to (or pinned to) other EKs; their hashes.
    DeviceHasOtherEk(Vec<String>),
}

/// What a finished enrollment commits: the EK binding and the AK certificate, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    pub device_id: String,
    pub ek_hash: String,
    pub tpm_manufacturer: Option<String>,
    pub tpm_model: Option<String>,
    pub tpm_version: Option<String>,
    /// Lowercase hex.
    pub ak_serial: String,
    pub ak_name: Vec<u8>,
    pub ak_not_before: i64,
    pub ak_not_after: i64,
    pub ak_der: Vec<u8>,
    pub at: i64,
}

const EK_COLUMNS: &str =
    "ek_hash, device_id, origin, tpm_manufacturer, tpm_model, tpm_version, created_at, enrolled_at";

fn ek_from_row(r: &Row<'_>) -> rusqlite::Result<EkBinding> {
    let origin: String = r.get("origin")?;
    let origin = match origin.as_str() {
        "pinned" => EkOrigin::Pinned,
        "enrolled" => EkOrigin::Enrolled,
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown EK origin `{other}`").into(),
            ))
        }
    };
    Ok(EkBinding {
        ek_hash: r.get("ek_hash")?,
        device_id: r.get("device_id")?,
        origin,
        tpm_manufacturer: r.get("tpm_manufacturer")?,
        tpm_model: r.get("tpm_model")?,
        tpm_version: r.get("tpm_version")?,
        created_at: r.get("created_at")?,
        enrolled_at: r.get("enrolled_at")?,
    })
}

fn eks_of(conn: &rusqlite::Connection, device_id: &str) -> rusqlite::Result<Vec<EkBinding>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EK_COLUMNS} FROM device_eks WHERE device_id = ?1 ORDER BY ek_hash"
    ))?;
    let rows = stmt.query_map([device_id], ek_from_row)?;
    rows.collect()
}

fn ek_row(conn: &rusqlite::Connection, ek_hash: &str) -> rusqlite::Result<Option<EkBinding>> {
    conn.query_row(
        &format!("SELECT {EK_COLUMNS} FROM device_eks WHERE ek_hash = ?1"),
        [ek_hash],
        ek_from_row,
    )
    .optional()
}

/// The binding rules (module doc) over what the database holds.
fn conflict(
    conn: &rusqlite::Connection,
    device_id: &str,
    ek_hash: &str,
) -> rusqlite::Result<Option<EkConflict>> {
    if let Some(row) = ek_row(conn, ek_hash)? {
        if row.device_id != device_id {
            return Ok(Some(EkConflict::BoundToOtherDevice(row.device_id)));
        }
        return Ok(None);
    }
    let others: Vec<String> = eks_of(conn, device_id)?
        .into_iter()
        .map(|b| b.ek_hash)
        .collect();
    if others.is_empty() {
        Ok(None)
    } else {
        Ok(Some(EkConflict::DeviceHasOtherEk(others)))
    }
}

fn device_status(tx: &Transaction<'_>, device_id: &str) -> Result<String, StoreError> {
    tx.query_row(
        "SELECT status FROM devices WHERE id = ?1",
        [device_id],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .ok_or(StoreError::NotFound("device"))
}

impl SqliteStore {
    /// The EKs bound or pinned to a device.
    pub fn device_eks(&self, device_id: &str) -> Result<Vec<EkBinding>, StoreError> {
        Ok(eks_of(&self.conn(), device_id)?)
    }

    /// The binding of one EK (by hash), if any.
    pub fn ek_binding(&self, ek_hash: &str) -> Result<Option<EkBinding>, StoreError> {
        Ok(ek_row(&self.conn(), ek_hash)?)
    }

    /// `Some` when `device_id` may not enrol with `ek_hash` (module doc).
    pub fn ek_conflict(
        &self,
        device_id: &str,
        ek_hash: &str,
    ) -> Result<Option<EkConflict>, StoreError> {
        Ok(conflict(&self.conn(), device_id, ek_hash)?)
    }

    /// Pins an EK to a device: from now on the device enrols only with it, and may do so with
    /// a bare EK public area (no EK certificate). Refused when the EK belongs to another device.
    /// Pinning an EK the device is already bound to turns the binding into a pin.
    pub fn pin_device_ek(
        &self,
        device_id: &str,
        ek_hash: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        device_status(&tx, device_id)?;
        if let Some(row) = ek_row(&tx, ek_hash)? {
            if row.device_id != device_id {
                return Err(StoreError::Conflict(format!(
                    "EK {ek_hash} is bound to device {}",
                    row.device_id
                )));
            }
        }
        tx.execute(
            "INSERT INTO device_eks (ek_hash, device_id, origin, created_at) VALUES (?1, ?2, 'pinned', ?3)
             ON CONFLICT (ek_hash) DO UPDATE SET origin = 'pinned'",
            params![ek_hash, device_id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets every EK of a device (its TPM was replaced). The AK certificates issued stay on
    /// record. Returns how many EK rows were removed.
    pub fn unbind_device_eks(&self, device_id: &str) -> Result<usize, StoreError> {
        let conn = self.conn();
        Ok(conn.execute("DELETE FROM device_eks WHERE device_id = ?1", [device_id])?)
    }

    /// AK certificates issued to a device, as (serial, DER), oldest first.
    pub fn ak_certificates(&self, device_id: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT serial, der FROM ak_certificates WHERE device_id = ?1 ORDER BY issued_at, serial",
        )?;
        let rows = stmt.query_map([device_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Commits a finished enrollment in one transaction: the device must still exist and be
    /// `active` (a quarantine between start and finish wins), the binding rules must still
    /// hold (two enrollments racing for one device: the first commit wins), then the EK is
    /// bound (or its binding refreshed) and the AK certificate recorded.
    ///
    /// `Ok(Err(conflict))` when the binding rules refuse; nothing is written then.
    pub fn record_enrollment(
        &self,
        rec: &EnrollmentRecord,
    ) -> Result<Result<(), EkConflict>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let status = device_status(&tx, &rec.device_id)?;
        if status != "active" {
            return Err(StoreError::DeviceNotActive {
                device: rec.device_id.clone(),
                status,
            });
        }
        if let Some(c) = conflict(&tx, &rec.device_id, &rec.ek_hash)? {
            return Ok(Err(c));
        }
        tx.execute(
            "INSERT INTO device_eks (ek_hash, device_id, origin, tpm_manufacturer, tpm_model, tpm_version, created_at, enrolled_at)
             VALUES (?1, ?2, 'enrolled', ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (ek_hash) DO UPDATE SET
                 enrolled_at = excluded.enrolled_at,
                 tpm_manufacturer = COALESCE(excluded.tpm_manufacturer, tpm_manufacturer),
                 tpm_model = COALESCE(excluded.tpm_model, tpm_model),
                 tpm_version = COALESCE(excluded.tpm_version, tpm_version)",
            params![
                rec.ek_hash,
                rec.device_id,
                rec.tpm_manufacturer,
                rec.tpm_model,
                rec.tpm_version,
                rec.at
            ],
        )?;
        tx.execute(
            "INSERT INTO ak_certificates (serial, device_id, ek_hash, ak_name, not_before, not_after, der, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                rec.ak_serial,
                rec.device_id,
                rec.ek_hash,
                rec.ak_name,
                rec.ak_not_before,
                rec.ak_not_after,
                rec.ak_der,
                rec.at
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use portcullis_config::DeviceStatus;

    use super::*;
    use crate::store::NewDevice;

    fn store_with(devices: &[(&str, DeviceStatus)]) -> SqliteStore {
        let s = SqliteStore::open_in_memory().unwrap();
        for (id, status) in devices {
            s.upsert_device(
                &NewDevice {
                    id: (*id).into(),
                    hw_module_id: None,
                    platform: None,
                    owner: None,
                    tags: BTreeSet::new(),
                    status: *status,
                    source: "test".into(),
                },
                "test",
                "setup",
                std::time::SystemTime::now(),
            )
            .unwrap();
        }
        s
    }

    fn record(device: &str, ek: &str, serial: &str) -> EnrollmentRecord {
        EnrollmentRecord {
            device_id: device.into(),
            ek_hash: ek.into(),
            tpm_manufacturer: Some("id:00001014".into()),
            tpm_model: Some("swtpm".into()),
            tpm_version: Some("id:20191023".into()),
            ak_serial: serial.into(),
            ak_name: vec![0, 0x0b, 1],
            ak_not_before: 1,
            ak_not_after: 2,
            ak_der: vec![0x30, 0],
            at: 10,
        }
    }

    #[test]
    fn enroll_store_binds_an_ek_to_one_device_only() {
        let s = store_with(&[("a", DeviceStatus::Active), ("b", DeviceStatus::Active)]);
        assert_eq!(s.ek_conflict("a", "ek1").unwrap(), None);
        s.record_enrollment(&record("a", "ek1", "01"))
            .unwrap()
            .unwrap();
        // The same EK again for the same device: a renewal of the binding.
        s.record_enrollment(&record("a", "ek1", "02"))
            .unwrap()
            .unwrap();
        assert_eq!(s.ak_certificates("a").unwrap().len(), 2);
        let b = s.ek_binding("ek1").unwrap().unwrap();
        assert_eq!((b.origin, b.enrolled_at), (EkOrigin::Enrolled, Some(10)));
        // Another device with the bound EK, and the bound device with another EK.
        assert_eq!(
            s.record_enrollment(&record("b", "ek1", "03")).unwrap(),
            Err(EkConflict::BoundToOtherDevice("a".into()))
        );
        assert_eq!(
            s.ek_conflict("a", "ek2").unwrap(),
            Some(EkConflict::DeviceHasOtherEk(vec!["ek1".into()]))
        );
        assert!(s.ak_certificates("b").unwrap().is_empty());
        // Unbinding frees both.
        assert_eq!(s.unbind_device_eks("a").unwrap(), 1);
        assert_eq!(s.ek_conflict("b", "ek1").unwrap(), None);
    }

    #[test]
    fn enroll_store_refuses_inactive_and_unknown_devices_in_the_transaction() {
        let s = store_with(&[("q", DeviceStatus::Quarantined)]);
        assert!(matches!(
            s.record_enrollment(&record("q", "ek1", "01")),
            Err(StoreError::DeviceNotActive { .. })
        ));
        assert!(matches!(
            s.record_enrollment(&record("nobody", "ek1", "01")),
            Err(StoreError::NotFound("device"))
        ));
        assert_eq!(s.ek_binding("ek1").unwrap(), None);
    }

    #[test]
    fn enroll_store_pins() {
        let s = store_with(&[("a", DeviceStatus::Active), ("b", DeviceStatus::Active)]);
        s.pin_device_ek("a", "ek1", 5).unwrap();
        assert_eq!(s.device_eks("a").unwrap()[0].origin, EkOrigin::Pinned);
        assert!(matches!(
            s.pin_device_ek("b", "ek1", 5),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.pin_device_ek("nobody", "ek9", 5),
            Err(StoreError::NotFound("device"))
        ));
        // An enrollment with the pinned EK keeps the pin.
        s.record_enrollment(&record("a", "ek1", "01"))
            .unwrap()
            .unwrap();
        assert_eq!(s.device_eks("a").unwrap()[0].origin, EkOrigin::Pinned);
    }
}
