//! The status snapshot: device id → status, and revoked serials. Versioned by a generation that
//! only grows; replaced whole, readers never lock.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_config::DeviceStatus;

use crate::device_table::DeviceTable;
use crate::feed::Delta;
use crate::identity::DeviceIdentity;
use crate::packed::{DeviceChunk, DeviceView};
use crate::staleness::Liveness;

/// A device as the inventory holds it (owned; the CA's store and admin API, deltas). A
/// snapshot stores devices packed and lends them out as [`DeviceView`]s.
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
    devices: DeviceTable,
    /// Revoked certificate serials, lowercase hex as in `DeviceIdentity::serial`.
    revoked: Arc<HashSet<String>>,
    /// When the source produced this snapshot (for staleness metrics).
    pub produced_at: Option<SystemTime>,
    /// Set only by a `strict` enforcement point whose status feed has been silent past
    /// `max_staleness`, to when it was last heard: every device is refused until it is heard
    /// again (Teleport's strict locking mode).
    pub stale_since: Option<SystemTime>,
    /// The change that produced this generation, as the feed describes it ("SN-1 quarantined
    /// by alice: lost"), so that the sessions it cuts are audited with their cause.
    pub cause: Option<Arc<str>>,
}

impl StatusSnapshot {
    pub fn device(&self, id: &str) -> Option<DeviceView<'_>> {
        self.devices.get(id)
    }

    /// Every device, in no particular order.
    pub fn devices(&self) -> impl Iterator<Item = DeviceView<'_>> {
        self.devices.iter()
    }

    /// Every device, in chunks of up to `size` (the feed's `devices` events).
    pub fn device_chunks(&self, size: usize) -> impl Iterator<Item = DeviceChunk> + '_ {
        self.devices.chunks(size)
    }

    /// Heap bytes the devices take, by part (for benchmarks and capacity planning).
    pub fn device_footprint(&self) -> crate::device_table::Footprint {
        self.devices.footprint()
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn revoked_serials(&self) -> &HashSet<String> {
        &self.revoked
    }

    /// True if `serial` (lowercase hex, as `DeviceIdentity::serial`) is revoked.
    pub fn is_serial_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }

    /// The inventory record of the device a certificate names (none without a device id).
    pub fn record_of(&self, identity: &DeviceIdentity) -> Option<DeviceView<'_>> {
        self.devices.get(identity.device_id.as_deref()?)
    }

    /// The inventory status of the device a certificate names; `None` if it names none or the
    /// device is not in the inventory.
    pub fn status_of(&self, identity: &DeviceIdentity) -> Option<DeviceStatus> {
        self.record_of(identity).map(|r| r.status())
    }

    /// True if the certificate's serial is on the revoked list (serials compare in the form of
    /// `identity::serial_hex`).
    pub fn is_revoked(&self, identity: &DeviceIdentity) -> bool {
        self.is_serial_revoked(identity.serial.as_str())
    }

    /// A snapshot from records and revoked serials (generation 0; the store assigns one).
    /// Serials are normalized (`inventory::normalize_serial`); ones that are not hex are dropped.
    pub fn from_records(
        records: impl IntoIterator<Item = DeviceRecord>,
        revoked_serials: impl IntoIterator<Item = String>,
    ) -> Self {
        Self::from_table(DeviceTable::from_records(records), revoked_serials)
    }

    pub(crate) fn from_table(
        devices: DeviceTable,
        revoked_serials: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            devices,
            revoked: Arc::new(
                revoked_serials
                    .into_iter()
                    .filter_map(|s| crate::inventory::normalize_serial(&s))
                    .collect(),
            ),
            ..Self::default()
        }
    }

    /// The snapshot `delta` leads to: its generation and cause, the devices and serials it
    /// names changed, everything else shared with `self` (cheap for a large fleet, see
    /// `device_table`). Serials are normalized like [`StatusSnapshot::from_records`].
    pub fn apply(&self, delta: &Delta) -> Self {
        let revoked = if delta.revoke.is_empty() && delta.unrevoke.is_empty() {
            self.revoked.clone()
        } else {
            let mut set = (*self.revoked).clone();
            for s in delta
                .unrevoke
                .iter()
                .filter_map(|s| crate::inventory::normalize_serial(s))
            {
                set.remove(&s);
            }
            set.extend(
                delta
                    .revoke
                    .iter()
                    .filter_map(|s| crate::inventory::normalize_serial(s)),
            );
            Arc::new(set)
        };
        Self {
            generation: delta.generation,
            devices: self.devices.with_changes(&delta.upsert, &delta.remove),
            revoked,
            produced_at: self.produced_at,
            stale_since: None,
            cause: delta.cause.as_deref().map(Arc::from),
        }
    }

    /// The delta that turns `self` into `next` (O(devices); used when a source can only
    /// rebuild whole). Its generation is `next`'s.
    pub fn diff(&self, next: &StatusSnapshot) -> Delta {
        let upsert = next
            .devices()
            .filter(|r| self.device(r.id()) != Some(*r))
            .map(|r| r.to_record())
            .collect();
        let remove = self
            .devices()
            .filter(|r| next.device(r.id()).is_none())
            .map(|r| r.id().to_owned())
            .collect();
        Delta {
            generation: next.generation,
            upsert,
            remove,
            revoke: next.revoked.difference(&self.revoked).cloned().collect(),
            unrevoke: self.revoked.difference(&next.revoked).cloned().collect(),
            cause: None,
        }
    }
}

/// Holds the current snapshot; `publish` replaces it and wakes subscribers.
pub struct StatusStore {
    current: ArcSwap<StatusSnapshot>,
    changes: tokio::sync::watch::Sender<u64>,
    liveness: Liveness,
}

impl StatusStore {
    /// A store whose source is never stale (a file, or the CA in this process).
    pub fn new(initial: StatusSnapshot) -> Self {
        Self::with_liveness(initial, Liveness::default())
    }

    /// A store fed by a status feed, whose silence `liveness` tracks.
    pub fn with_liveness(initial: StatusSnapshot, liveness: Liveness) -> Self {
        let (changes, _) = tokio::sync::watch::channel(initial.generation);
        Self {
            current: ArcSwap::from_pointee(initial),
            changes,
            liveness,
        }
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
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
        assert_eq!(snap.record_of(&identity).map(|r| r.id()), Some("dev-1"));
        assert!(
            snap.is_revoked(&identity),
            "00:8A:01 and 8a01 are the same serial"
        );
        assert_eq!(snap.revoked_serials().len(), 1);

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
        let initial = StatusSnapshot {
            generation: 5,
            ..Default::default()
        };
        let store = StatusStore::new(initial);
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
