//! The devices of a status snapshot: shards of packed devices, copy-on-write, behind an
//! extendible-hashing directory.
//!
//! A status delta changes a handful of devices of a fleet of up to millions, and readers keep
//! old generations alive (the store is an `ArcSwap`). So a new generation must cost what the
//! delta changed, never what the fleet holds — no copy of a map, no overlay that grows and
//! must be folded in. Devices are split by the hash of their id into shards of about a
//! thousand ([`Packed`] devices plus an index of their positions). A generation is a
//! directory of `Arc<Shard>`: a delta copies the directory (one pointer per shard, ≈ 1 000
//! for a million devices) and the few shards it touches, and shares the rest with the
//! generation before. A shard that grows past twice its target splits in two, doubling the
//! directory when it must (extendible hashing, Fagin et al. 1979), so the table grows by
//! deltas alone without a rebuild. Shards are not merged when devices are removed (an empty
//! shard costs a few hundred bytes).
//!
//! Building a table ([`TableBuilder`]) costs O(devices) once; with the expected count given
//! up front the shards are sized right away and nothing moves afterwards, so a snapshot can
//! be built chunk by chunk as it arrives. Freeing a table is a few frees per shard.
//!
//! Measured (benches/RESULTS.md, "Status feed (issue 5)", 1M devices): 68 bytes per device
//! requested; a one-device delta ≈ 20 µs; a delta of k devices copies min(k, shards)
//! shards — ≈ 50 ms in memory once it touches them all (k ≳ 2 000), which is why callers
//! apply large deltas off their async workers (`FeedEvent::is_heavy`).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::packed::{hasher, ArenaFull, DeviceChunk, DeviceView, Packed, Profile};
use crate::status::DeviceRecord;

/// Devices per shard a builder aims at; a shard splits at twice this.
const SHARD_LEN: usize = 1024;
/// Live text per shard (ids, owners) above which it splits too: bounds what a delta copies
/// when ids or owners are long.
const SHARD_BYTES: usize = 256 << 10;
/// Deepest directory: 2^20 shards (a billion devices at the target size). Only hash
/// collisions could push a shard past it; it then grows instead of splitting.
const MAX_DEPTH: u32 = 20;
/// The directory uses hash bits from here up: hashbrown takes a shard index's bucket from
/// the low bits and its tag from the top seven, which must stay varied within a shard.
const DIR_SHIFT: u32 = 32;
/// Devices inserted one by one before a builder sizes the shards' text by their average.
const TEXT_SAMPLE: usize = 256;
/// Most devices a builder sizes its shards for up front (a feed announces the count; a lie
/// must not reserve unbounded memory — more devices still fit, by splitting).
const MAX_EXPECTED: usize = 1 << 24;

fn hash_id(id: &str) -> u64 {
    hasher().hash_one(id)
}

/// An empty shard to point directory entries at for a moment (see `change_shard`).
fn vacant() -> Arc<Shard> {
    static VACANT: std::sync::OnceLock<Arc<Shard>> = std::sync::OnceLock::new();
    VACANT.get_or_init(|| Arc::new(Shard::new(0, 0))).clone()
}

fn dir_index(hash: u64, depth: u32) -> usize {
    ((hash >> DIR_SHIFT) & ((1u64 << depth) - 1)) as usize
}

/// When a shard splits (smaller in tests, to exercise splits with a few devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    shard_len: usize,
    shard_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            shard_len: SHARD_LEN,
            shard_bytes: SHARD_BYTES,
        }
    }
}

/// Devices whose ids share the low `depth` directory bits of their hash.
struct Shard {
    depth: u32,
    packed: Packed,
    /// Positions in `packed`, hashed by id.
    index: HashTable<u32>,
    /// Bytes of `packed`'s text no device refers to any more (replaced or removed).
    garbage: usize,
}

impl Shard {
    fn new(depth: u32, capacity: usize) -> Self {
        let mut packed = Packed::default();
        packed.reserve(capacity, 0);
        Self {
            depth,
            packed,
            index: HashTable::with_capacity(capacity),
            garbage: 0,
        }
    }

    fn find(&self, hash: u64, id: &str) -> Option<u32> {
        self.index
            .find(hash, |&pos| self.packed.id(pos) == id)
            .copied()
    }

    fn insert_new(
        &mut self,
        hash: u64,
        id: &str,
        status: portcullis_config::DeviceStatus,
        profile: u32,
        owner: Option<&str>,
    ) -> Result<(), ArenaFull> {
        let pos = self.packed.push(id, status, profile, owner)?;
        let packed = &self.packed;
        self.index
            .insert_unique(hash, pos, |&p| hash_id(packed.id(p)));
        Ok(())
    }

    /// Sets the device; true if it is new.
    fn upsert(
        &mut self,
        hash: u64,
        device: DeviceView<'_>,
        profile: u32,
    ) -> Result<bool, ArenaFull> {
        match self.find(hash, device.id()) {
            Some(pos) => {
                self.garbage +=
                    self.packed
                        .replace(pos, device.status(), profile, device.owner())?;
                Ok(false)
            }
            None => {
                self.insert_new(hash, device.id(), device.status(), profile, device.owner())?;
                Ok(true)
            }
        }
    }

    /// Removes the device; true if it was there.
    fn remove(&mut self, hash: u64, id: &str) -> bool {
        let Some(pos) = self.find(hash, id) else {
            return false;
        };
        if let Ok(entry) = self.index.find_entry(hash, |&p| p == pos) {
            entry.remove();
        }
        // `swap_remove` moves the last device to `pos`: its index entry follows it.
        let last = self.packed.len() as u32 - 1;
        if pos != last {
            let moved = hash_id(self.packed.id(last));
            if let Some(p) = self.index.find_mut(moved, |&p| p == last) {
                *p = pos;
            }
        }
        self.garbage += self.packed.swap_remove(pos);
        true
    }

    fn overfull(&self, limits: Limits) -> bool {
        let len = self.packed.len();
        self.depth < MAX_DEPTH
            && len >= 2
            && (len > 2 * limits.shard_len
                || self.packed.text_len() - self.garbage > limits.shard_bytes)
    }

    /// The two halves by the next directory bit.
    fn split(&self) -> (Shard, Shard) {
        let bit = 1u64 << (DIR_SHIFT + self.depth);
        let half = self.packed.len() / 2 + 1;
        let mut halves = [
            Shard::new(self.depth + 1, half),
            Shard::new(self.depth + 1, half),
        ];
        // Source profile index → the index in each half.
        let mut remap = vec![[u32::MAX; 2]; self.packed.profiles().len()];
        for pos in 0..self.packed.len() as u32 {
            let (Some(device), Some(profile), Some(profile_id)) = (
                self.packed.view(pos),
                self.packed.profile_of(pos),
                self.packed.profile_id(pos),
            ) else {
                continue;
            };
            let hash = hash_id(device.id());
            let side = usize::from(hash & bit != 0);
            let target = &mut halves[side];
            let local = match remap.get_mut(profile_id as usize) {
                Some(r) if r[side] != u32::MAX => r[side],
                Some(r) => {
                    r[side] = target.packed.push_profile(profile.clone());
                    r[side]
                }
                None => continue,
            };
            // The halves hold less text than the whole: they cannot be fuller than it.
            let _ = target.insert_new(hash, device.id(), device.status(), local, device.owner());
        }
        let [lo, hi] = halves;
        (lo, hi)
    }
}

impl Clone for Shard {
    /// A copy is made when a delta changes a shard that an older generation still holds:
    /// the moment to leave accumulated garbage behind.
    fn clone(&self) -> Self {
        let packed = if self.garbage > 0 && self.garbage >= self.packed.text_len() / 2 {
            self.packed.compacted()
        } else {
            self.packed.clone()
        };
        let garbage = if packed.text_len() == self.packed.text_len() {
            self.garbage
        } else {
            0
        };
        Self {
            depth: self.depth,
            packed,
            // `compacted` keeps positions, so the index stays valid.
            index: self.index.clone(),
            garbage,
        }
    }
}

#[derive(Clone)]
pub(crate) struct DeviceTable {
    /// Bits of the directory index; `dir.len() == 1 << depth`.
    depth: u32,
    /// A shard of local depth `d` appears at every index with its low `d` bits.
    dir: Arc<Vec<Arc<Shard>>>,
    len: usize,
    limits: Limits,
}

impl Default for DeviceTable {
    fn default() -> Self {
        Self::with_limits(Limits::default())
    }
}

impl fmt::Debug for DeviceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTable")
            .field("len", &self.len)
            .field("shards", &self.shards().count())
            .field("depth", &self.depth)
            .finish()
    }
}

impl DeviceTable {
    fn with_limits(limits: Limits) -> Self {
        Self {
            depth: 0,
            dir: Arc::new(vec![Arc::new(Shard::new(0, 0))]),
            len: 0,
            limits,
        }
    }

    /// A table of `records`; a later record with the id of an earlier one replaces it.
    pub fn from_records(records: impl IntoIterator<Item = DeviceRecord>) -> Self {
        let records = records.into_iter();
        let mut builder = TableBuilder::new(records.size_hint().0);
        for r in records {
            let profile = builder.intern(r.platform.as_deref(), r.tags.iter().map(String::as_str));
            builder.insert(r.view(), &profile);
        }
        builder.finish()
    }

    pub fn get(&self, id: &str) -> Option<DeviceView<'_>> {
        let hash = hash_id(id);
        let shard = self.dir.get(dir_index(hash, self.depth))?;
        shard.find(hash, id).and_then(|pos| shard.packed.view(pos))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Each shard once: the one at the lowest of its directory indexes, which is below
    /// `1 << its depth`.
    fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.dir
            .iter()
            .enumerate()
            .filter(|(i, s)| *i < (1usize << s.depth))
            .map(|(_, s)| &**s)
    }

    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint {
            devices: self.len,
            directory: self.dir.capacity() * std::mem::size_of::<Arc<Shard>>(),
            ..Footprint::default()
        };
        for s in self.shards() {
            let (slots, text, profiles) = s.packed.heap_bytes();
            f.shards += 1;
            f.slots += slots;
            f.text += text;
            f.profiles += profiles;
            f.index += s.index.allocation_size();
            f.directory += std::mem::size_of::<Shard>() + 16;
        }
        f
    }

    /// Every device, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = DeviceView<'_>> {
        self.shards().flat_map(|s| s.packed.iter())
    }

    /// The devices in chunks of up to `size`, for the feed's snapshot events.
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = DeviceChunk> + '_ {
        let size = size.max(1);
        let mut devices = self.iter().peekable();
        std::iter::from_fn(move || {
            devices.peek()?;
            let mut chunk = DeviceChunk::with_capacity(size);
            for d in devices.by_ref().take(size) {
                chunk.push(d);
            }
            Some(chunk)
        })
    }

    /// A new table with `upsert` records set and `remove` ids gone; `self` is untouched.
    /// Costs the directory and the shards touched, not the table.
    pub fn with_changes<'a>(
        &self,
        upsert: impl IntoIterator<Item = &'a DeviceRecord>,
        remove: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let mut table = self.clone();
        for r in upsert {
            table.upsert(r.view());
        }
        for id in remove {
            table.remove(id);
        }
        table
    }

    fn upsert(&mut self, device: DeviceView<'_>) {
        let hash = hash_id(device.id());
        let i = dir_index(hash, self.depth);
        let limits = self.limits;
        let changed = self.change_shard(i, |shard| {
            let profile = shard.packed.profile_index(&device.profile_arc());
            let added = match shard.upsert(hash, device, profile) {
                Ok(true) => 1,
                Ok(false) => 0,
                // Only a shard that cannot split can fill 4 GiB. Dropping the device
                // (unknown: refused) is safer than keeping its previous status.
                Err(ArenaFull) => -isize::from(shard.remove(hash, device.id())),
            };
            (added, shard.overfull(limits))
        });
        if let Some((added, overfull)) = changed {
            self.len = self.len.saturating_add_signed(added);
            if overfull {
                self.split(i);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        let hash = hash_id(id);
        let i = dir_index(hash, self.depth);
        // Nothing to copy for an id that is not here.
        if self.dir.get(i).and_then(|s| s.find(hash, id)).is_none() {
            return;
        }
        if self.change_shard(i, |shard| shard.remove(hash, id)) == Some(true) {
            self.len -= 1;
        }
    }

    /// Runs `change` on the shard at directory index `i`, copied first if another
    /// generation holds it (copy-on-write). A shard shallower than the directory sits at
    /// several indexes; all of them get the changed shard.
    fn change_shard<R>(&mut self, i: usize, change: impl FnOnce(&mut Shard) -> R) -> Option<R> {
        let dir = Arc::make_mut(&mut self.dir);
        let mut shard = dir.get(i)?.clone();
        let step = 1usize << shard.depth;
        let first = i & (step - 1);
        // Our own directory's references must not count as sharing, or `make_mut` would
        // copy every shallow shard: park them on an empty shard meanwhile.
        let parked = vacant();
        for entry in dir.iter_mut().skip(first).step_by(step) {
            *entry = parked.clone();
        }
        let result = change(Arc::make_mut(&mut shard));
        for entry in dir.iter_mut().skip(first).step_by(step) {
            *entry = shard.clone();
        }
        Some(result)
    }

    /// Splits the shard at directory index `i` (and its halves, while overfull).
    fn split(&mut self, i: usize) {
        let mut pending = vec![i];
        while let Some(i) = pending.pop() {
            let dir = Arc::make_mut(&mut self.dir);
            let Some(shard) = dir.get(i).cloned() else {
                continue;
            };
            if !shard.overfull(self.limits) {
                continue;
            }
            if shard.depth == self.depth {
                dir.extend_from_within(..);
                self.depth += 1;
            }
            let (lo, hi) = shard.split();
            let (lo, hi) = (Arc::new(lo), Arc::new(hi));
            let step = 1usize << shard.depth;
            let bits = i & (step - 1);
            for (j, entry) in dir.iter_mut().enumerate().skip(bits).step_by(step) {
                *entry = if (j >> shard.depth) & 1 == 1 {
                    hi.clone()
                } else {
                    lo.clone()
                };
            }
            pending.push(bits);
            pending.push(bits | step);
        }
    }
}

/// Heap bytes a device table holds, by part (capacities: what was asked of the allocator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub devices: usize,
    pub shards: usize,
    /// Fixed-size device slots.
    pub slots: usize,
    /// Ids and owners (and garbage not yet compacted).
    pub text: usize,
    /// The shards' position indexes.
    pub index: usize,
    /// The shards' profile dictionaries (pointers; the profiles are shared).
    pub profiles: usize,
    /// The directory and the shard headers.
    pub directory: usize,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.slots + self.text + self.index + self.profiles + self.directory
    }
}

/// A device id that a snapshot lists twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateId(pub String);

/// Builds a table from many devices: the shards are sized for the expected count and never
/// split while building, each keeps a map from profile to its dictionary index, and equal
/// profiles are shared across shards.
pub(crate) struct TableBuilder {
    depth: u32,
    shards: Vec<Shard>,
    /// Per shard: the address of a shared profile → its index in the shard's dictionary.
    local: Vec<HashMap<usize, u32, foldhash::fast::FixedState>>,
    /// One `Arc` per distinct profile, looked up by value.
    interner: HashTable<Arc<Profile>>,
    per_shard: usize,
    text_sized: bool,
    /// Text bytes of the first devices inserted one by one (to size the shards' text).
    sample_text: usize,
    len: usize,
    limits: Limits,
}

impl TableBuilder {
    pub fn new(expected: usize) -> Self {
        Self::with_limits(expected, Limits::default())
    }

    fn with_limits(expected: usize, limits: Limits) -> Self {
        let expected = expected.min(MAX_EXPECTED);
        let mut depth = 0;
        while (expected >> depth) > limits.shard_len && depth < MAX_DEPTH {
            depth += 1;
        }
        let mean = expected.div_ceil(1 << depth);
        // Room for the spread of a hash partition (≈ √mean) without a reallocation.
        let per_shard = if expected == 0 {
            0
        } else {
            mean + 4 * mean.isqrt() + 8
        };
        Self {
            depth,
            shards: (0..1usize << depth)
                .map(|_| Shard::new(depth, per_shard))
                .collect(),
            local: (0..1usize << depth).map(|_| HashMap::default()).collect(),
            interner: HashTable::new(),
            per_shard,
            text_sized: false,
            sample_text: 0,
            len: 0,
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The shared profile with these values.
    pub fn intern<'a>(
        &mut self,
        platform: Option<&str>,
        tags: impl ExactSizeIterator<Item = &'a str> + Clone,
    ) -> Arc<Profile> {
        let hash = Profile::key_hash(platform, tags.clone());
        if let Some(p) = self.interner.find(hash, |p| p.is(platform, tags.clone())) {
            return p.clone();
        }
        let p = Arc::new(Profile::new(platform, tags));
        self.interner
            .insert_unique(hash, p.clone(), |p| p.hash_value());
        p
    }

    /// Reserves each shard's text for `per_device` bytes per expected device, once: grown by
    /// doubling instead, it would be copied a dozen times and end up to half empty.
    fn size_text(&mut self, per_device: usize) {
        if self.text_sized {
            return;
        }
        self.text_sized = true;
        for s in &mut self.shards {
            s.packed.reserve(0, self.per_shard * (per_device + 1));
        }
    }

    /// Sets `device` with the shared `profile` (from [`Self::intern`]); true if new, false
    /// if it replaced a device with the same id.
    pub fn insert(&mut self, device: DeviceView<'_>, profile: &Arc<Profile>) -> bool {
        if !self.text_sized {
            self.sample_text += device.id().len() + device.owner().map_or(0, str::len);
            // After a sample of devices, size the text by their average.
            if self.len + 1 == TEXT_SAMPLE {
                self.size_text(self.sample_text.div_ceil(TEXT_SAMPLE));
            }
        }
        let hash = hash_id(device.id());
        let i = dir_index(hash, self.depth);
        let (Some(shard), Some(local)) = (self.shards.get_mut(i), self.local.get_mut(i)) else {
            return false;
        };
        let index = *local
            .entry(Arc::as_ptr(profile) as usize)
            .or_insert_with(|| shard.packed.push_profile(profile.clone()));
        match shard.upsert(hash, device, index) {
            Ok(true) => {
                self.len += 1;
                true
            }
            Ok(false) => false,
            // A shard of a builder holds at most the devices given: 4 GiB of text in one
            // would need a single id or owner that size. Left out (unknown: refused).
            Err(ArenaFull) => {
                if shard.remove(hash, device.id()) {
                    self.len -= 1;
                }
                false
            }
        }
    }

    /// Adds a chunk of a snapshot; an id already added is an error.
    pub fn extend(&mut self, chunk: &DeviceChunk) -> Result<(), DuplicateId> {
        if !chunk.is_empty() {
            self.size_text(chunk.packed.text_len().div_ceil(chunk.len()));
        }
        let shared: Vec<Arc<Profile>> = chunk
            .packed
            .profiles()
            .iter()
            .map(|p| self.intern(p.platform(), p.tags()))
            .collect();
        for pos in 0..chunk.len() as u32 {
            let (Some(device), Some(profile)) = (
                chunk.packed.view(pos),
                chunk
                    .packed
                    .profile_id(pos)
                    .and_then(|i| shared.get(i as usize)),
            ) else {
                continue;
            };
            let before = self.len;
            if !self.insert(device, profile) && self.len == before {
                return Err(DuplicateId(device.id().to_owned()));
            }
        }
        Ok(())
    }

    /// The table. Costs one allocation per shard, unless the expected count was too low
    /// (then the overfull shards split).
    pub fn finish(self) -> DeviceTable {
        let mut table = DeviceTable {
            depth: self.depth,
            dir: Arc::new(self.shards.into_iter().map(Arc::new).collect()),
            len: self.len,
            limits: self.limits,
        };
        for i in 0..table.dir.len() {
            if table.dir.get(i).is_some_and(|s| s.overfull(table.limits)) {
                table.split(i);
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::DeviceStatus;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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
        let mut v: Vec<String> = t.iter().map(|r| r.id().to_owned()).collect();
        v.sort();
        v
    }

    const SMALL: Limits = Limits {
        shard_len: 2,
        shard_bytes: 64,
    };

    #[test]
    fn changes_leave_the_old_table_alone() {
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
        assert_eq!(t1.get("a").unwrap().status(), DeviceStatus::Quarantined);
        assert!(t1.get("b").is_none());
        assert!(t1.get("zz").is_none());
        assert_eq!(t1.len(), 2);
        assert_eq!(ids(&t1), ["a", "c"]);
        // The old generation is unchanged (readers may still hold it).
        assert_eq!(t0.get("a").unwrap().status(), DeviceStatus::Active);
        assert_eq!(ids(&t0), ["a", "b"]);
        assert_eq!(t0.len(), 2);
        // Re-adding a removed id counts it again.
        let t2 = t1.with_changes(&[rec("b", DeviceStatus::Retired)], &[]);
        assert_eq!(t2.len(), 3);
        assert_eq!(t2.get("b").unwrap().status(), DeviceStatus::Retired);
    }

    #[test]
    fn a_table_grows_by_deltas_alone_and_shares_untouched_shards() {
        let mut t = DeviceTable::with_limits(SMALL);
        for i in 0..500 {
            t = t.with_changes(&[rec(&format!("d{i}"), DeviceStatus::Active)], &[]);
        }
        assert_eq!(t.len(), 500);
        assert!(t.depth >= 7, "split to depth {}", t.depth);
        assert_eq!(t.iter().count(), 500);
        assert!((0..500).all(|i| t.get(&format!("d{i}")).is_some()));
        let next = t.with_changes(&[rec("d7", DeviceStatus::Retired)], &[]);
        let shared = t
            .shards()
            .zip(next.shards())
            .filter(|(a, b)| std::ptr::eq(*a, *b))
            .count();
        assert_eq!(shared, t.shards().count() - 1, "only d7's shard was copied");
    }

    #[test]
    fn a_builder_sizes_for_the_expected_count_and_refuses_duplicates() {
        let b = TableBuilder::new(1_000_000);
        assert_eq!(b.shards.len(), 1024);
        assert!(b.per_shard >= 977 && b.per_shard < 1200, "{}", b.per_shard);
        let b = TableBuilder::new(usize::MAX);
        assert_eq!(
            b.depth, 14,
            "a lie about the count reserves 16M devices at most"
        );

        let mut b = TableBuilder::with_limits(3, SMALL);
        let chunk = DeviceChunk::from_records(&[
            rec("a", DeviceStatus::Active),
            rec("b", DeviceStatus::Active),
        ]);
        b.extend(&chunk).unwrap();
        let again = DeviceChunk::from_records(&[rec("b", DeviceStatus::Retired)]);
        assert_eq!(b.extend(&again), Err(DuplicateId("b".into())));
        // More than expected still fits: finish splits.
        let more: Vec<DeviceRecord> = (0..50)
            .map(|i| rec(&format!("m{i}"), DeviceStatus::Active))
            .collect();
        b.extend(&DeviceChunk::from_records(&more)).unwrap();
        let t = b.finish();
        assert_eq!(t.len(), 52);
        assert!(t.shards().all(|s| !s.overfull(SMALL)));
        assert_eq!(t.get("a").unwrap().status(), DeviceStatus::Active);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(DeviceRecord),
        Remove(String),
        /// Keep this generation and check later that nothing changed it.
        Keep,
    }

    fn device() -> impl Strategy<Value = DeviceRecord> {
        (
            0..40u8,
            0..3u8,
            proptest::option::of("[a-c]{0,3}"),
            proptest::option::of(prop_oneof!["macos", "linux"]),
            proptest::collection::btree_set(prop_oneof!["eng", "ops", "vip"], 0..3),
        )
            .prop_map(|(id, status, owner, platform, tags)| DeviceRecord {
                // Long ids sometimes, so that the byte limit splits shards too.
                id: if id % 7 == 0 {
                    format!("device-with-a-long-id-{id}")
                } else {
                    format!("d{id}")
                },
                status: [
                    DeviceStatus::Active,
                    DeviceStatus::Quarantined,
                    DeviceStatus::Retired,
                ][status as usize],
                tags,
                owner,
                platform,
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => device().prop_map(Op::Upsert),
            2 => (0..40u8).prop_map(|i| Op::Remove(format!("d{i}"))),
            1 => Just(Op::Keep),
        ]
    }

    fn check(t: &DeviceTable, model: &BTreeMap<String, DeviceRecord>) {
        assert_eq!(t.len(), model.len());
        let mut all: Vec<DeviceRecord> = t.iter().map(|v| v.to_record()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all, model.values().cloned().collect::<Vec<_>>());
        for (id, r) in model {
            assert_eq!(t.get(id), Some(r.view()), "{id}");
        }
        assert!(t.get("absent").is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Lookups, iteration and length equal a `BTreeMap` after any sequence of changes
        /// (small shards, so that they split), and kept generations never change.
        #[test]
        fn the_table_behaves_like_a_map(
            initial in proptest::collection::vec(device(), 0..30),
            ops in proptest::collection::vec(op(), 1..60),
            batch in 1..4usize,
        ) {
            let mut builder = TableBuilder::with_limits(initial.len() / 2, SMALL);
            let mut model = BTreeMap::new();
            for r in &initial {
                let p = builder.intern(r.platform.as_deref(), r.tags.iter().map(String::as_str));
                builder.insert(r.view(), &p);
                model.insert(r.id.clone(), r.clone());
            }
            let mut t = builder.finish();
            check(&t, &model);
            let mut kept = Vec::new();
            for ops in ops.chunks(batch) {
                let upsert: Vec<DeviceRecord> = ops.iter().filter_map(|o| match o {
                    Op::Upsert(r) => Some(r.clone()),
                    _ => None,
                }).collect();
                let remove: Vec<String> = ops.iter().filter_map(|o| match o {
                    Op::Remove(id) => Some(id.clone()),
                    _ => None,
                }).collect();
                if ops.iter().any(|o| matches!(o, Op::Keep)) {
                    kept.push((t.clone(), model.clone()));
                }
                t = t.with_changes(&upsert, &remove);
                for r in upsert {
                    model.insert(r.id.clone(), r);
                }
                for id in remove {
                    model.remove(&id);
                }
                check(&t, &model);
            }
            for (t, model) in &kept {
                check(t, model);
            }
            // Chunks carry every device once.
            let from_chunks: usize = t.chunks(3).map(|c| c.len()).sum();
            prop_assert_eq!(from_chunks, model.len());
        }
    }
}
