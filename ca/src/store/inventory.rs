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
    Updated { before: Device, after: Device },
    Unchanged(Device),
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
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        let before = tx.query_row(&sql, [&new.id], device_from_row).optional()?;
        let tags =
            serde_json::to_string(&new.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let change = match before {
            None => {
                tx.execute(
                    "INSERT INTO devices (id, hw_module_id, platform, owner, tags, status, source, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    params![new.id, new.hw_module_id, new.platform, new.owner, tags, new.status.as_str(), new.source, now],
                )?;
                insert_history(&tx, &new.id, now, None, new.status, actor, reason)?;
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
                    if before.status != new.status {
                        insert_history(
                            &tx,
                            &new.id,
                            now,
                            Some(before.status),
                            new.status,
                            actor,
                            reason,
                        )?;
                    }
                    let after = tx.query_row(&sql, [&new.id], device_from_row)?;
                    DeviceChange::Updated { before, after }
                }
            }
        };
        tx.commit()?;
        Ok(change)
    }

    /// Sets a device's status, recording who and why. Returns the device before and after.
    pub fn set_device_status(
        &self,
        id: &str,
        status: DeviceStatus,
        actor: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<(Device, Device), StoreError> {
        let now = unix(now);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        let before = tx
            .query_row(&sql, [id], device_from_row)
            .optional()?
            .ok_or(StoreError::NotFound("device"))?;
        if before.status != status {
            tx.execute(
                "UPDATE devices SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), now],
            )?;
            insert_history(&tx, id, now, Some(before.status), status, actor, reason)?;
        }
        let after = tx.query_row(&sql, [id], device_from_row)?;
        tx.commit()?;
        Ok((before, after))
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
        let DeviceChange::Updated { before, after } = change else {
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
        let (before, after) = store
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
