//! The trusted inventory as a service: every change goes to the store (one transaction with
//! its history row and, when trust is removed, the revocation of the device's certificates)
//! and then onto an in-process change channel, which the status feed exposes to enforcement
//! points.
//!
//! The channel is a `tokio::sync::broadcast`: a subscriber that falls behind by more than its
//! capacity receives `Lagged` and must resynchronise from [`Inventory::devices`]. The store is
//! the truth; the channel only makes it fast.
//!
//! Every change is also an audit event: a `tracing` event with target [`AUDIT_TARGET`]
//! (actor, action, device, from → to, changed fields, reason, revoked serials), beside the
//! store's history rows, so that a log pipeline sees who changed what without reading the
//! database.

pub mod import;

use std::sync::Arc;

use portcullis_config::DeviceStatus;
use tokio::sync::broadcast;

use crate::clock::{unix_seconds, Clock};
use crate::store::{
    Device, DeviceChange, HistoryEntry, NewDevice, SqliteStore, StatusChange, StoreError,
};
use import::ImportRow;

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "portcullis::audit";

/// What an import did (or, in a dry run, would do), row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub dry_run: bool,
    /// `(line, change)` in file order.
    pub changes: Vec<(u64, DeviceChange)>,
}

/// A device's status changed (or a device appeared with a status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryEvent {
    pub device_id: String,
    pub from: Option<DeviceStatus>,
    pub to: DeviceStatus,
    /// Certificates revoked by this change, lowercase hex serials.
    pub revoked_serials: Vec<String>,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

pub struct Inventory {
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<InventoryEvent>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("subscribers", &self.events.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Inventory {
    pub fn new(store: Arc<SqliteStore>, clock: Arc<dyn Clock>, channel_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(channel_capacity.max(1));
        Self {
            store,
            clock,
            events,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<InventoryEvent> {
        self.events.subscribe()
    }

    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        self.store.device(id)
    }

    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.store.devices()
    }

    /// Every status change of a device, oldest first.
    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.device_history(id)
    }

    /// The TPM endorsement keys bound or pinned to a device (open TPM enrollment, `enroll`).
    pub fn device_eks(&self, id: &str) -> Result<Vec<crate::store::EkBinding>, StoreError> {
        self.store.device_eks(id)
    }

    /// Pins an EK (SHA-256 of its SubjectPublicKeyInfo, lowercase hex) to a device: it then
    /// enrolls only with that TPM, so its first enrollment is proven too (no trust on first
    /// enrollment). Audited like every inventory change.
    pub fn pin_ek(
        &self,
        id: &str,
        ek_sha256: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.store
            .pin_device_ek(id, ek_sha256, unix_seconds(self.clock.now()))?;
        tracing::info!(
            target: AUDIT_TARGET,
            actor,
            action = "pin_ek",
            device = id,
            ek_sha256,
            reason,
            "inventory change"
        );
        Ok(())
    }

    /// Forgets every EK of a device (its TPM was replaced); the next enrollment binds anew.
    pub fn unbind_eks(&self, id: &str, actor: &str, reason: &str) -> Result<usize, StoreError> {
        if self.store.device(id)?.is_none() {
            return Err(StoreError::NotFound("device"));
        }
        let removed = self.store.unbind_device_eks(id)?;
        tracing::info!(
            target: AUDIT_TARGET,
            actor,
            action = "unbind_eks",
            device = id,
            removed,
            reason,
            "inventory change"
        );
        Ok(removed)
    }

    /// Applies parsed import rows in one transaction (see
    /// [`SqliteStore::upsert_devices_with`]); with `dry_run` the same transaction is rolled
    /// back, so the outcome is exactly what applying would do. Devices new to the inventory
    /// get `default_source` unless their row names one.
    pub fn import(
        &self,
        rows: &[ImportRow],
        default_source: &str,
        actor: &str,
        reason: &str,
        dry_run: bool,
    ) -> Result<ImportOutcome, StoreError> {
        self.apply(rows, default_source, "import", actor, reason, dry_run)
    }

    /// [`Inventory::import`] with the audit log's `action` named by the caller (the admin
    /// API's `PUT` is a one-row apply with `action = "put"`).
    pub fn apply(
        &self,
        rows: &[ImportRow],
        default_source: &str,
        action: &str,
        actor: &str,
        reason: &str,
        dry_run: bool,
    ) -> Result<ImportOutcome, StoreError> {
        let now = self.clock.now();
        let changes = self.store.upsert_devices_with(
            rows,
            |r| r.patch.id.as_str(),
            |r, current| r.patch.resolve(current, default_source),
            actor,
            reason,
            now,
            !dry_run,
        )?;
        if !dry_run {
            for change in &changes {
                self.after_upsert(change, action, actor, reason, unix_seconds(now));
            }
        }
        Ok(ImportOutcome {
            dry_run,
            changes: rows.iter().map(|r| r.line).zip(changes).collect(),
        })
    }

    /// Inserts or updates a device (imports, the admin API). Publishes when the status is new
    /// or changed; field edits that leave the status alone are not trust events.
    pub fn upsert(
        &self,
        device: &NewDevice,
        actor: &str,
        reason: &str,
    ) -> Result<DeviceChange, StoreError> {
        let now = self.clock.now();
        let change = self.store.upsert_device(device, actor, reason, now)?;
        self.after_upsert(&change, "upsert", actor, reason, unix_seconds(now));
        Ok(change)
    }

    /// Audits and publishes one committed upsert.
    fn after_upsert(
        &self,
        change: &DeviceChange,
        action: &str,
        actor: &str,
        reason: &str,
        at: i64,
    ) {
        let (device, from, to, revoked, fields) = match change {
            // A new device: every field is new, written `*`.
            DeviceChange::Added(d) => (d, None, d.status, &[][..], vec!["*".to_string()]),
            DeviceChange::Updated {
                before,
                after,
                revoked,
            } => (
                after,
                Some(before.status),
                after.status,
                &revoked[..],
                import::field_changes(before, after)
                    .into_iter()
                    .map(|c| c.field)
                    .collect(),
            ),
            DeviceChange::Unchanged(_) => return,
        };
        audit(
            action, actor, &device.id, from, to, &fields, reason, revoked,
        );
        // Field edits that leave the status alone are not trust events.
        if from != Some(to) {
            self.publish(InventoryEvent {
                device_id: device.id.clone(),
                from,
                to,
                revoked_serials: revoked.to_vec(),
                actor: actor.to_string(),
                reason: reason.to_string(),
                at,
            });
        }
    }

    /// Sets a device's status; publishes if it changed.
    pub fn set_status(
        &self,
        id: &str,
        status: DeviceStatus,
        actor: &str,
        reason: &str,
    ) -> Result<StatusChange, StoreError> {
        let now = self.clock.now();
        let change = self
            .store
            .set_device_status(id, status, actor, reason, now)?;
        if change.before.status != change.after.status {
            audit(
                "set_status",
                actor,
                id,
                Some(change.before.status),
                change.after.status,
                &["status".to_string()],
                reason,
                &change.revoked,
            );
            self.publish(InventoryEvent {
                device_id: id.to_string(),
                from: Some(change.before.status),
                to: change.after.status,
                revoked_serials: change.revoked.clone(),
                actor: actor.to_string(),
                reason: reason.to_string(),
                at: unix_seconds(now),
            });
        }
        Ok(change)
    }

    fn publish(&self, event: InventoryEvent) {
        // No subscriber is not an error: the change is in the store either way.
        let _ = self.events.send(event);
    }
}

/// One audit event per committed change (never for a no-op or a dry run).
#[allow(clippy::too_many_arguments)]
fn audit(
    action: &str,
    actor: &str,
    device: &str,
    from: Option<DeviceStatus>,
    to: DeviceStatus,
    fields: &[String],
    reason: &str,
    revoked: &[String],
) {
    tracing::info!(
        target: AUDIT_TARGET,
        actor,
        action,
        device,
        from = from.map(DeviceStatus::as_str).unwrap_or("none"),
        to = to.as_str(),
        fields = ?fields,
        reason,
        revoked_serials = ?revoked,
        "inventory change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::{Duration, UNIX_EPOCH};

    fn laptop(status: DeviceStatus) -> NewDevice {
        NewDevice {
            id: "SN-1".into(),
            hw_module_id: None,
            platform: Some("macos".into()),
            owner: None,
            tags: Default::default(),
            status,
            source: "mdm".into(),
        }
    }

    #[test]
    fn status_changes_are_published_and_edits_are_not() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(50)));
        let inv = Inventory::new(store, clock, 16);
        let mut rx = inv.subscribe();
        inv.upsert(&laptop(DeviceStatus::Active), "import", "initial")
            .unwrap();
        let e = rx.try_recv().unwrap();
        assert_eq!((e.from, e.to, e.at), (None, DeviceStatus::Active, 50));
        let mut edited = laptop(DeviceStatus::Active);
        edited.owner = Some("bob@example.com".into());
        inv.upsert(&edited, "import", "owner").unwrap();
        assert!(rx.try_recv().is_err(), "an edit is not a trust event");
        inv.set_status(
            "SN-1",
            DeviceStatus::Quarantined,
            "admin:alice",
            "EDR alert",
        )
        .unwrap();
        let e = rx.try_recv().unwrap();
        assert_eq!(
            (e.from, e.to, e.actor.as_str(), e.reason.as_str()),
            (
                Some(DeviceStatus::Active),
                DeviceStatus::Quarantined,
                "admin:alice",
                "EDR alert"
            )
        );
        inv.set_status("SN-1", DeviceStatus::Quarantined, "admin:alice", "again")
            .unwrap();
        assert!(rx.try_recv().is_err(), "no change, no event");
    }
}

#[cfg(test)]
mod import_and_audit_tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn inventory() -> Inventory {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(50)));
        Inventory::new(store, clock, 16)
    }

    /// The audit lines written while `f` runs (JSON, one per event).
    fn audit_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["target"] == AUDIT_TARGET)
            .collect()
    }

    #[test]
    fn every_committed_change_is_one_audit_event_and_dry_runs_none() {
        let inv = inventory();
        let rows = import::parse(
            b"id,status,owner\nSN-1,active,alice\nSN-2,active,bob\n",
            import::ImportFormat::Csv,
        )
        .unwrap();
        let mut rx = inv.subscribe();
        let dry = audit_lines(|| {
            let out = inv.import(&rows, "import", "alice", "dry", true).unwrap();
            assert_eq!(out.changes.len(), 2);
        });
        assert!(dry.is_empty(), "{dry:?}");
        assert!(rx.try_recv().is_err(), "a dry run publishes nothing");
        assert!(inv.devices().unwrap().is_empty());

        let applied = audit_lines(|| {
            inv.import(&rows, "import", "alice", "initial", false)
                .unwrap();
        });
        assert_eq!(applied.len(), 2);
        let f = &applied[0]["fields"];
        assert_eq!(f["action"], "import");
        assert_eq!(f["actor"], "alice");
        assert_eq!(f["device"], "SN-1");
        assert_eq!(
            (f["from"].as_str(), f["to"].as_str()),
            (Some("none"), Some("active"))
        );
        assert_eq!(rx.try_recv().unwrap().device_id, "SN-1");
        assert_eq!(rx.try_recv().unwrap().device_id, "SN-2");

        let unchanged = audit_lines(|| {
            inv.import(&rows, "import", "alice", "again", false)
                .unwrap();
        });
        assert!(unchanged.is_empty(), "no change, no audit event");

        let status = audit_lines(|| {
            inv.set_status("SN-2", DeviceStatus::Retired, "bob", "lost")
                .unwrap();
        });
        assert_eq!(status.len(), 1);
        let f = &status[0]["fields"];
        assert_eq!(
            (
                f["action"].as_str(),
                f["from"].as_str(),
                f["to"].as_str(),
                f["reason"].as_str()
            ),
            (
                Some("set_status"),
                Some("active"),
                Some("retired"),
                Some("lost")
            )
        );
        assert!(f["revoked_serials"].is_string(), "{f}");
    }
}
