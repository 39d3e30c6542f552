//! The status snapshot: device id → status, and revoked serials. Versioned by a generation that
//! only grows; replaced whole, readers never lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_config::DeviceStatus;

use crate::identity::DeviceIdentity;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub status: DeviceStatus,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub generation: u64,
    pub devices: HashMap<String, DeviceRecord>,
    /// Revoked certificate serials, lowercase hex as in `DeviceIdentity::serial`.
    pub revoked_serials: HashSet<String>,
    /// When the source produced this snapshot (for staleness metrics).
    pub produced_at: Option<SystemTime>,
}

impl StatusSnapshot {
    pub fn device(&self, id: &str) -> Option<&DeviceRecord> {
        self.devices.get(id)
    }

    /// The inventory record of the device a certificate names (none without a device id).
    pub fn record_of(&self, identity: &DeviceIdentity) -> Option<&DeviceRecord> {
        self.devices.get(identity.device_id.as_deref()?)
    }

    /// The inventory status of the device a certificate names; `None` if it names none or the
    /// device is not in the inventory.
    pub fn status_of(&self, identity: &DeviceIdentity) -> Option<DeviceStatus> {
        self.record_of(identity).map(|r| r.status)
    }

    /// True if the certificate's serial is on the revoked list (serials compare in the form of
    /// `identity::serial_hex`).
    pub fn is_revoked(&self, identity: &DeviceIdentity) -> bool {
        self.revoked_serials.contains(identity.serial.as_str())
    }

    /// A snapshot from records and revoked serials (generation 0; the store assigns one).
    /// Serials are normalized (`inventory::normalize_serial`); ones that are not hex are dropped.
    pub fn from_records(
        records: impl IntoIterator<Item = DeviceRecord>,
        revoked_serials: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            generation: 0,
            devices: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
            revoked_serials: revoked_serials
                .into_iter()
                .filter_map(|s| crate::inventory::normalize_serial(&s))
                .collect(),
            produced_at: None,
        }
    }
}

/// Holds the current snapshot; `publish` replaces it and wakes subscribers.
pub struct StatusStore {
    current: ArcSwap<StatusSnapshot>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl StatusStore {
    pub fn new(initial: StatusSnapshot) -> Self {
        let (changes, _) = tokio::sync::watch::channel(initial.generation);
        Self {
            current: ArcSwap::from_pointee(initial),
            changes,
        }
    }

    pub fn current(&self) -> Arc<StatusSnapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot. The generation is forced above the current one so it only grows.
    pub fn publish(&self, mut next: StatusSnapshot) -> u64 {
        let prev = self.current.load().generation;
        if next.generation <= prev {
            // Saturating: a feed that sent u64::MAX must not wrap the generation back to 0,
            // which would let cached decisions of an old generation match again.
            next.generation = prev.saturating_add(1);
        }
        let generation = next.generation;
        self.current.store(Arc::new(next));
        self.changes.send_replace(generation);
        generation
    }

    /// A receiver that sees each new generation (the connection registry listens here).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    fn record(id: &str, status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status,
            tags: BTreeSet::new(),
            owner: None,
            platform: None,
        }
    }

    #[test]
    fn lookups_by_identity() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).serial(&[0x8a, 0x01]).build();
        let identity = DeviceIdentity::from_der(cert.der(), testutil::TRUST_DOMAIN).unwrap();
        let snap = StatusSnapshot::from_records(
            [
                record("dev-1", DeviceStatus::Quarantined),
                record("dev-2", DeviceStatus::Active),
            ],
            ["00:8A:01".to_owned(), "not hex".to_owned()],
        );
        assert_eq!(snap.status_of(&identity), Some(DeviceStatus::Quarantined));
        assert_eq!(
            snap.record_of(&identity).map(|r| r.id.as_str()),
            Some("dev-1")
        );
        assert!(
            snap.is_revoked(&identity),
            "00:8A:01 and 8a01 are the same serial"
        );
        assert_eq!(snap.revoked_serials.len(), 1);

        let mut anonymous = identity.clone();
        anonymous.device_id = None;
        assert_eq!(snap.status_of(&anonymous), None);
        let mut unknown = identity;
        unknown.device_id = Some("dev-9".into());
        unknown.serial = "8a02".into();
        assert_eq!(snap.status_of(&unknown), None);
        assert!(!snap.is_revoked(&unknown));
    }

    #[test]
    fn publish_only_grows_the_generation() {
        let store = StatusStore::new(StatusSnapshot {
            generation: 5,
            ..Default::default()
        });
        let mut rx = store.subscribe();
        assert_eq!(
            store.publish(StatusSnapshot {
                generation: 3,
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            store.publish(StatusSnapshot {
                generation: 10,
                ..Default::default()
            }),
            10
        );
        assert_eq!(store.current().generation, 10);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 10);
    }
}
