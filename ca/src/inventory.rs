//! The trusted inventory as a service: every change goes to the store (one transaction with
//! its history row and, when trust is removed, the revocation of the device's certificates)
//! and then onto an in-process change channel, which the status feed exposes to enforcement
//! points.
//!
//! The channel is a `tokio::sync::broadcast`: a subscriber that falls behind by more than its
//! capacity receives `Lagged` and must resynchronise from [`Inventory::devices`]. The store is
//! the truth; the channel only makes it fast.

use std::sync::Arc;

use portcullis_config::DeviceStatus;
use tokio::sync::broadcast;

use crate::clock::{unix_seconds, Clock};
use crate::store::{Device, DeviceChange, NewDevice, SqliteStore, StatusChange, StoreError};

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
        let event = match &change {
            DeviceChange::Added(d) => Some((None, d.status, Vec::new())),
            DeviceChange::Updated {
                before,
                after,
                revoked,
            } if before.status != after.status => {
                Some((Some(before.status), after.status, revoked.clone()))
            }
            _ => None,
        };
        if let Some((from, to, revoked_serials)) = event {
            self.publish(InventoryEvent {
                device_id: device.id.clone(),
                from,
                to,
                revoked_serials,
                actor: actor.to_string(),
                reason: reason.to_string(),
                at: unix_seconds(now),
            });
        }
        Ok(change)
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
            tracing::info!(
                device = id,
                from = %change.before.status,
                to = %change.after.status,
                actor,
                reason,
                revoked = change.revoked.len(),
                "device status changed"
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
