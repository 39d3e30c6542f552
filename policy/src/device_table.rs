//! The devices of a status snapshot: a large immutable base shared between generations, and a
//! small overlay of the changes since the base was built.
//!
//! A status delta touches a handful of devices; copying a million-device map for each one
//! would cost a few hundred milliseconds and double the memory for a moment. Instead a new
//! generation shares the base (`Arc`) and copies only the overlay. When the overlay has grown
//! past a sixteenth of the base it is folded in. Lookups check the overlay first; an empty
//! overlay costs one branch.
//!
//! Measured (benches/RESULTS.md, status feed): a delta costs O(overlay) — milliseconds at a
//! few thousand overlay entries, tens of milliseconds at 60 000 — and the fold O(n), seconds
//! at a million devices, paid by the delta that triggers it. A persistent map (O(log n) per
//! change, no fold) is the next design for fleets that size.
//!
//! The base is a set of records keyed by their own id (`ById`), so an id is stored once.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::status::DeviceRecord;

/// Below this many overlay entries the base is never rebuilt (small fleets: always cheap).
const MIN_OVERLAY_BEFORE_FOLD: usize = 1024;

/// A record hashed and compared by its id, so a set of them is a map from id.
#[derive(Debug, Clone)]
struct ById(DeviceRecord);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.as_str().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceTable {
    base: Arc<HashSet<ById>>,
    /// id → the record now (`Some`) or "removed" (`None`), shadowing the base.
    overlay: Arc<HashMap<String, Option<DeviceRecord>>>,
    len: usize,
}

impl DeviceTable {
    pub fn from_records(records: impl IntoIterator<Item = DeviceRecord>) -> Self {
        let base: HashSet<ById> = records.into_iter().map(ById).collect();
        Self {
            len: base.len(),
            base: Arc::new(base),
            overlay: Arc::default(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&DeviceRecord> {
        if !self.overlay.is_empty() {
            if let Some(entry) = self.overlay.get(id) {
                return entry.as_ref();
            }
        }
        self.base.get(id).map(|r| &r.0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeviceRecord> {
        let shadowed = |r: &&ById| !self.overlay.contains_key(r.0.id.as_str());
        self.base
            .iter()
            .filter(shadowed)
            .map(|r| &r.0)
            .chain(self.overlay.values().flatten())
    }

    /// A new table with `upsert` records set and `remove` ids gone; `self` is untouched.
    pub fn with_changes<'a>(
        &self,
        upsert: impl IntoIterator<Item = &'a DeviceRecord>,
        remove: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let mut overlay = (*self.overlay).clone();
        let mut len = self.len;
        let base = &self.base;
        let mut set = |id: &str, next: Option<DeviceRecord>| {
            let existed = match overlay.get(id) {
                Some(entry) => entry.is_some(),
                None => base.contains(id),
            };
            len = len + usize::from(next.is_some()) - usize::from(existed);
            overlay.insert(id.to_owned(), next);
        };
        for r in upsert {
            set(&r.id, Some(r.clone()));
        }
        for id in remove {
            set(id, None);
        }
        let table = Self {
            base: self.base.clone(),
            overlay: Arc::new(overlay),
            len,
        };
        if table.overlay.len() > MIN_OVERLAY_BEFORE_FOLD.max(table.base.len() / 16) {
            table.folded()
        } else {
            table
        }
    }

    /// The same devices with the overlay folded into a new base.
    fn folded(&self) -> Self {
        Self::from_records(self.iter().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::DeviceStatus;

    fn rec(id: &str, status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status,
            tags: Default::default(),
            owner: None,
            platform: None,
        }
    }

    fn ids(t: &DeviceTable) -> Vec<String> {
        let mut v: Vec<String> = t.iter().map(|r| r.id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn changes_shadow_the_base_and_leave_the_old_table_alone() {
        let t0 = DeviceTable::from_records([
            rec("a", DeviceStatus::Active),
            rec("b", DeviceStatus::Active),
        ]);
        let t1 = t0.with_changes(
            &[
                rec("a", DeviceStatus::Quarantined),
                rec("c", DeviceStatus::Active),
            ],
            &["b".to_string(), "zz".to_string()],
        );
        assert_eq!(t1.get("a").unwrap().status, DeviceStatus::Quarantined);
        assert!(t1.get("b").is_none());
        assert!(t1.get("zz").is_none());
        assert_eq!(t1.len(), 2);
        assert_eq!(ids(&t1), ["a", "c"]);
        // The old generation is unchanged (readers may still hold it).
        assert_eq!(t0.get("a").unwrap().status, DeviceStatus::Active);
        assert_eq!(ids(&t0), ["a", "b"]);
        assert_eq!(t0.len(), 2);
        // Re-adding a removed id counts it again.
        let t2 = t1.with_changes(&[rec("b", DeviceStatus::Retired)], &[]);
        assert_eq!(t2.len(), 3);
        assert_eq!(t2.get("b").unwrap().status, DeviceStatus::Retired);
    }

    #[test]
    fn a_large_overlay_is_folded_into_the_base() {
        let mut t = DeviceTable::from_records([rec("seed", DeviceStatus::Active)]);
        for i in 0..=MIN_OVERLAY_BEFORE_FOLD {
            t = t.with_changes(&[rec(&format!("d{i}"), DeviceStatus::Active)], &[]);
        }
        assert!(t.overlay.is_empty(), "folded after the threshold");
        assert_eq!(t.len(), MIN_OVERLAY_BEFORE_FOLD + 2);
        assert_eq!(t.iter().count(), t.len());
        assert!(t.get("d7").is_some() && t.get("seed").is_some());
    }
}
