//! The trusted inventory: devices, their status, and the history of every status change with
//! who made it and why.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_config::DeviceStatus;
use rusqlite::{params, OptionalExtension, Row};

use super::sqlite::{SqliteStore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub hw_module_id: Option<String>,
    pub platform: Option<String>,
    pub owner: Option<String>,
    pub tags: BTreeSet<String>,
    pub status: DeviceStatus,
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an import row or the admin API says a device should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub id: String,
    pub hw_module_id: Option<String>,
    pub platform: Option<String>,
    pub owner: Option<String>,
    pub tags: BTreeSet<String>,
    pub status: DeviceStatus,
    pub source: String,
}

/// The outcome of an upsert, for dry-run diffs and the change channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    Added(Device),
    Updated {
        before: Device,
        after: Device,
        /// Serials revoked because the new status removes trust (see [`revocation_reason`]).
        revoked: Vec<String>,
    },
    Unchanged(Device),
}

/// A status change made by [`SqliteStore::set_device_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub before: Device,
    pub after: Device,
    /// Serials revoked in the same transaction as the status change.
    pub revoked: Vec<String>,
}

/// RFC 5280 §5.3.1 certificateHold: the one reason that may be undone.
pub const REASON_CERTIFICATE_HOLD: i64 = 6;
/// RFC 5280 §5.3.1 cessationOfOperation.
pub const REASON_CESSATION_OF_OPERATION: i64 = 5;

/// Why a device's certificates are revoked when it leaves `active` (RFC 5280 §5.3.1), as
/// issue 5 maps inventory status onto certificate status: a quarantine is a suspension
/// (certificateHold, 6), because a quarantined device is usually investigated and let back
/// in; a retired device has ceased operation (5), which is final.
///
/// A device returning to `active` releases its held certificates (they leave the CRL and
/// OCSP says `good` again: the removeFromCRL semantic of §5.3.1, expressed in a full CRL by
/// the entry's absence). Retiring a quarantined device turns its holds into
/// cessationOfOperation, keeping the original revocation time. Certificates revoked for any
/// other reason (ACME revokeCert, which never accepts certificateHold) are never released.
pub fn revocation_reason(status: DeviceStatus) -> Option<i64> {
    match status {
        DeviceStatus::Active => None,
        DeviceStatus::Quarantined => Some(REASON_CERTIFICATE_HOLD),
        DeviceStatus::Retired => Some(REASON_CESSATION_OF_OPERATION),
    }
}

/// Revokes every unrevoked certificate of `device_id` if `status` removes trust; returns the
/// serials. Runs inside the caller's transaction, so the status and the revocations commit
/// together: there is no moment where a device is quarantined and its certificate still good.
fn revoke_for_status(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    status: DeviceStatus,
    now: i64,
) -> rusqlite::Result<Vec<String>> {
    let Some(reason) = revocation_reason(status) else {
        // Back to active: release the holds (RFC 5280 §5.3.1, removeFromCRL). Only
        // certificateHold is ever undone; the caller's transaction makes the release and the
        // status change one event.
        tx.execute(
            "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL WHERE device_id = ?1 AND revoked_at IS NOT NULL AND revocation_reason = ?2",
            params![device_id, REASON_CERTIFICATE_HOLD],
        )?;
        return Ok(Vec::new());
    };
    if reason != REASON_CERTIFICATE_HOLD {
        // A hold becoming final (quarantined → retired): the certificate stays revoked from
        // the time it was held, now with the final reason.
        tx.execute(
            "UPDATE certificates SET revocation_reason = ?2 WHERE device_id = ?1 AND revoked_at IS NOT NULL AND revocation_reason = ?3",
            params![device_id, reason, REASON_CERTIFICATE_HOLD],
        )?;
    }
    let mut stmt = tx.prepare(
        "SELECT serial FROM certificates WHERE device_id = ?1 AND revoked_at IS NULL ORDER BY serial",
    )?;
    let serials: Vec<String> = stmt
        .query_map([device_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    tx.execute(
        "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3 WHERE device_id = ?1 AND revoked_at IS NULL",
        params![device_id, now, reason],
    )?;
    Ok(serials)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: i64,
    pub from: Option<DeviceStatus>,
    pub to: DeviceStatus,
    pub actor: String,
    pub reason: String,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn status_of(s: String) -> rusqlite::Result<DeviceStatus> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn device_from_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    let tags: String = r.get("tags")?;
    Ok(Device {
        id: r.get("id")?,
        hw_module_id: r.get("hw_module_id")?,
        platform: r.get("platform")?,
        owner: r.get("owner")?,
        tags: serde_json::from_str(&tags).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })?,
        status: status_of(r.get("status")?)?,
        source: r.get("source")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

const DEVICE_COLUMNS: &str =
    "id, hw_module_id, platform, owner, tags, status, source, created_at, updated_at";

impl SqliteStore {
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        Ok(conn.query_row(&sql, [id], device_from_row).optional()?)
    }

    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))?;
        let rows = stmt.query_map([], device_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or updates a device (idempotent: the same input twice changes nothing the
    /// second time). A status change is recorded in the history in the same transaction.
    pub fn upsert_device(
        &self,
        new: &NewDevice,
        actor: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<DeviceChange, StoreError> {
        let now = unix(now);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let change = upsert_in_tx(&tx, new, actor, reason, now)?;
        tx.commit()?;
        Ok(change)
    }

    /// Applies `items` (an import) in ONE transaction: `resolve` merges each item with the
    /// device's current row, read inside that transaction (so a concurrent change is never
    /// overwritten with a stale value); the result is upserted, its status change recorded
    /// and, when trust is removed, the device's certificates revoked. Any failure rolls
    /// everything back.
    ///
    /// With `commit == false` (a dry run) the very same statements run and are then rolled
    /// back, so the diff a dry run reports is exactly what an apply would do — including the
    /// serials it would revoke — and nothing is written.
    ///
    /// Two items for one device are refused: their order would decide the result.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert_devices_with<T>(
        &self,
        items: &[T],
        id_of: impl Fn(&T) -> &str,
        resolve: impl Fn(&T, Option<&Device>) -> NewDevice,
        actor: &str,
        reason: &str,
        now: SystemTime,
        commit: bool,
    ) -> Result<Vec<DeviceChange>, StoreError> {
        let mut seen = BTreeSet::new();
        for item in items {
            let id = id_of(item);
            if !seen.insert(id) {
                return Err(StoreError::Conflict(format!(
                    "device `{id}` appears more than once"
                )));
            }
        }
        let now = unix(now);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        let mut changes = Vec::with_capacity(items.len());
        for item in items {
            let current = tx
                .query_row(&sql, [id_of(item)], device_from_row)
                .optional()?;
            let new = resolve(item, current.as_ref());
            if new.id != id_of(item) {
                // `resolve` is ours, but an id mix-up would write one device's data onto
                // another: refuse rather than trust it.
                return Err(StoreError::Conflict(format!(
                    "resolved device `{}` for `{}`",
                    new.id,
                    id_of(item)
                )));
            }
            changes.push(upsert_in_tx(&tx, &new, actor, reason, now)?);
        }
        if commit {
            tx.commit()?;
        } else {
            tx.rollback()?;
        }
        Ok(changes)
    }

    /// Sets a device's status, recording who and why; leaving `active` revokes the device's
    /// certificates in the same transaction.
    pub fn set_device_status(
        &self,
        id: &str,
        status: DeviceStatus,
        actor: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<StatusChange, StoreError> {
        let now = unix(now);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        let before = tx
            .query_row(&sql, [id], device_from_row)
            .optional()?
            .ok_or(StoreError::NotFound("device"))?;
        let mut revoked = Vec::new();
        if before.status != status {
            tx.execute(
                "UPDATE devices SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), now],
            )?;
            insert_history(&tx, id, now, Some(before.status), status, actor, reason)?;
            revoked = revoke_for_status(&tx, id, status, now)?;
        }
        let after = tx.query_row(&sql, [id], device_from_row)?;
        tx.commit()?;
        Ok(StatusChange {
            before,
            after,
            revoked,
        })
    }

    pub fn device_history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, from_status, to_status, actor, reason FROM device_history WHERE device_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id], |r| {
            let from: Option<String> = r.get(1)?;
            Ok(HistoryEntry {
                at: r.get(0)?,
                from: from.map(status_of).transpose()?,
                to: status_of(r.get(2)?)?,
                actor: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The body of an upsert, inside the caller's transaction.
fn upsert_in_tx(
    tx: &rusqlite::Transaction<'_>,
    new: &NewDevice,
    actor: &str,
    reason: &str,
    now: i64,
) -> Result<DeviceChange, StoreError> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
    let before = tx.query_row(&sql, [&new.id], device_from_row).optional()?;
    let tags = serde_json::to_string(&new.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let change = match before {
        None => {
            tx.execute(
                "INSERT INTO devices (id, hw_module_id, platform, owner, tags, status, source, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![new.id, new.hw_module_id, new.platform, new.owner, tags, new.status.as_str(), new.source, now],
            )?;
            insert_history(tx, &new.id, now, None, new.status, actor, reason)?;
            let after = tx.query_row(&sql, [&new.id], device_from_row)?;
            DeviceChange::Added(after)
        }
        Some(before) => {
            let same = before.hw_module_id == new.hw_module_id
                && before.platform == new.platform
                && before.owner == new.owner
                && before.tags == new.tags
                && before.status == new.status
                && before.source == new.source;
            if same {
                DeviceChange::Unchanged(before)
            } else {
                tx.execute(
                    "UPDATE devices SET hw_module_id = ?2, platform = ?3, owner = ?4, tags = ?5, status = ?6,
                     source = ?7, updated_at = ?8 WHERE id = ?1",
                    params![new.id, new.hw_module_id, new.platform, new.owner, tags, new.status.as_str(), new.source, now],
                )?;
                let mut revoked = Vec::new();
                if before.status != new.status {
                    insert_history(
                        tx,
                        &new.id,
                        now,
                        Some(before.status),
                        new.status,
                        actor,
                        reason,
                    )?;
                    revoked = revoke_for_status(tx, &new.id, new.status, now)?;
                }
                let after = tx.query_row(&sql, [&new.id], device_from_row)?;
                DeviceChange::Updated {
                    before,
                    after,
                    revoked,
                }
            }
        }
    };
    Ok(change)
}

fn insert_history(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    at: i64,
    from: Option<DeviceStatus>,
    to: DeviceStatus,
    actor: &str,
    reason: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO device_history (device_id, at, from_status, to_status, actor, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, at, from.map(DeviceStatus::as_str), to.as_str(), actor, reason],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn laptop(status: DeviceStatus) -> NewDevice {
        NewDevice {
            id: "SN-1".into(),
            hw_module_id: None,
            platform: Some("macos".into()),
            owner: Some("alice@example.com".into()),
            tags: ["eng".to_string()].into(),
            status,
            source: "mdm".into(),
        }
    }

    #[test]
    fn upsert_is_idempotent_and_records_status_history() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(100);
        assert!(matches!(
            store
                .upsert_device(&laptop(DeviceStatus::Active), "import", "initial", t)
                .unwrap(),
            DeviceChange::Added(_)
        ));
        assert!(matches!(
            store
                .upsert_device(&laptop(DeviceStatus::Active), "import", "again", t)
                .unwrap(),
            DeviceChange::Unchanged(_)
        ));
        let change = store
            .upsert_device(
                &laptop(DeviceStatus::Quarantined),
                "import",
                "mdm says so",
                t,
            )
            .unwrap();
        let DeviceChange::Updated { before, after, .. } = change else {
            panic!("expected an update")
        };
        assert_eq!(
            (before.status, after.status),
            (DeviceStatus::Active, DeviceStatus::Quarantined)
        );
        let history = store.device_history("SN-1").unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].from, Some(DeviceStatus::Active));
        assert_eq!(history[1].reason, "mdm says so");
    }

    #[test]
    fn set_status_records_actor_and_reason_and_refuses_unknown_devices() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(100);
        store
            .upsert_device(&laptop(DeviceStatus::Active), "import", "initial", t)
            .unwrap();
        let StatusChange { before, after, .. } = store
            .set_device_status("SN-1", DeviceStatus::Retired, "admin:bob", "lost", t)
            .unwrap();
        assert_eq!(before.status, DeviceStatus::Active);
        assert_eq!(after.status, DeviceStatus::Retired);
        let last = store.device_history("SN-1").unwrap().pop().unwrap();
        assert_eq!(
            (last.actor.as_str(), last.reason.as_str()),
            ("admin:bob", "lost")
        );
        assert!(matches!(
            store.set_device_status("nope", DeviceStatus::Active, "a", "b", t),
            Err(StoreError::NotFound("device"))
        ));
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;
    use crate::store::{AcmeStore, NewCert};
    use std::time::Duration;

    fn device(status: DeviceStatus) -> NewDevice {
        NewDevice {
            id: "SN-9".into(),
            hw_module_id: None,
            platform: None,
            owner: None,
            tags: Default::default(),
            status,
            source: "manual".into(),
        }
    }

    fn cert(store: &SqliteStore, serial: &str, device: &str) {
        store
            .record_certificate(&NewCert {
                serial,
                fingerprint: serial,
                der: b"",
                chain_pem: "",
                not_before: 0,
                not_after: 10,
                device_id: Some(device),
            })
            .unwrap();
    }

    #[test]
    fn leaving_active_revokes_the_device_certificates_in_the_same_change() {
        let store = SqliteStore::open_in_memory().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(100);
        store
            .upsert_device(&device(DeviceStatus::Active), "import", "initial", t)
            .unwrap();
        cert(&store, "0a", "SN-9");
        cert(&store, "0b", "SN-9");
        cert(&store, "0c", "SN-other");
        let change = store
            .set_device_status("SN-9", DeviceStatus::Quarantined, "admin", "lost", t)
            .unwrap();
        assert_eq!(change.revoked, vec!["0a".to_string(), "0b".to_string()]);
        let a = store.certificate("0a").unwrap().unwrap();
        assert_eq!((a.revoked_at, a.revocation_reason), (Some(100), Some(6)));
        assert_eq!(store.certificate("0c").unwrap().unwrap().revoked_at, None);
        // A certificate revoked for another reason (ACME keyCompromise) is never released.
        cert(&store, "0e", "SN-9");
        store.revoke_certificate("0e", 1, 90).unwrap();
        // Back to active releases the holds (RFC 5280 §5.3.1) and nothing else.
        let change = store
            .set_device_status("SN-9", DeviceStatus::Active, "admin", "found", t)
            .unwrap();
        assert!(change.revoked.is_empty());
        let a = store.certificate("0a").unwrap().unwrap();
        assert_eq!((a.revoked_at, a.revocation_reason), (None, None));
        let e = store.certificate("0e").unwrap().unwrap();
        assert_eq!((e.revoked_at, e.revocation_reason), (Some(90), Some(1)));
        // Quarantined again, then retired: the holds become final with their first time.
        let later = t + Duration::from_secs(50);
        store
            .set_device_status("SN-9", DeviceStatus::Quarantined, "admin", "again", t)
            .unwrap();
        store
            .set_device_status("SN-9", DeviceStatus::Retired, "admin", "gone", later)
            .unwrap();
        let a = store.certificate("0a").unwrap().unwrap();
        assert_eq!((a.revoked_at, a.revocation_reason), (Some(100), Some(5)));
        store
            .set_device_status("SN-9", DeviceStatus::Active, "admin", "undo", later)
            .unwrap();
        assert_eq!(
            store.certificate("0a").unwrap().unwrap().revocation_reason,
            Some(5),
            "cessationOfOperation is final"
        );
        // Retiring through an import (upsert) revokes a newer certificate with reason 5.
        cert(&store, "0d", "SN-9");
        let DeviceChange::Updated { revoked, .. } = store
            .upsert_device(&device(DeviceStatus::Retired), "import", "disposed", t)
            .unwrap()
        else {
            panic!("expected an update")
        };
        assert_eq!(revoked, vec!["0d".to_string()]);
        assert_eq!(
            store.certificate("0d").unwrap().unwrap().revocation_reason,
            Some(5)
        );
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use std::time::Duration;

    fn dev(id: &str, status: DeviceStatus) -> NewDevice {
        NewDevice {
            id: id.into(),
            hw_module_id: None,
            platform: None,
            owner: None,
            tags: Default::default(),
            status,
            source: "import".into(),
        }
    }

    fn apply(
        store: &SqliteStore,
        items: &[NewDevice],
        commit: bool,
    ) -> Result<Vec<DeviceChange>, StoreError> {
        store.upsert_devices_with(
            items,
            |d| d.id.as_str(),
            |d, _| d.clone(),
            "import",
            "batch",
            UNIX_EPOCH + Duration::from_secs(7),
            commit,
        )
    }

    #[test]
    fn a_dry_run_reports_the_changes_and_writes_nothing() {
        let store = SqliteStore::open_in_memory().unwrap();
        let changes = apply(&store, &[dev("A", DeviceStatus::Active)], false).unwrap();
        assert!(matches!(changes[0], DeviceChange::Added(_)));
        assert!(store.devices().unwrap().is_empty());
        assert!(store.device_history("A").unwrap().is_empty());
        apply(&store, &[dev("A", DeviceStatus::Active)], true).unwrap();
        assert_eq!(store.devices().unwrap().len(), 1);
    }

    #[test]
    fn one_bad_item_rolls_back_the_whole_batch() {
        let store = SqliteStore::open_in_memory().unwrap();
        let items = [
            dev("A", DeviceStatus::Active),
            dev("B", DeviceStatus::Active),
        ];
        let err = store
            .upsert_devices_with(
                &items,
                |d| d.id.as_str(),
                // The second item resolves to another device: refused after A was written.
                |d, _| {
                    let mut d = d.clone();
                    if d.id == "B" {
                        d.id = "A".into();
                    }
                    d
                },
                "import",
                "batch",
                UNIX_EPOCH,
                true,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        assert!(store.devices().unwrap().is_empty(), "A was rolled back");
    }

    #[test]
    fn duplicate_ids_in_one_batch_are_refused() {
        let store = SqliteStore::open_in_memory().unwrap();
        let items = [
            dev("A", DeviceStatus::Active),
            dev("A", DeviceStatus::Retired),
        ];
        assert!(matches!(
            apply(&store, &items, true),
            Err(StoreError::Conflict(_))
        ));
        assert!(store.devices().unwrap().is_empty());
    }
}
