//! Devices packed for fleets of a million: a fixed-size slot per device, the ids and owners
//! in one string arena, and each device's platform + tag set as an index into a small
//! dictionary of [`Profile`]s.
//!
//! Why: a `DeviceRecord` costs ≈ 550 bytes and five heap blocks per device once it sits in a
//! hash set (a `BTreeSet<String>` node alone is 280 bytes), so a million devices took
//! ≈ 600 MB and freeing them seconds (benches/RESULTS.md, status feed). Tag sets repeat
//! heavily across a fleet (a few dozen distinct ones for a million devices), so the set is
//! interned as a whole, not tag by tag. A packed device is 20 bytes plus its id and owner,
//! and a thousand devices are four heap blocks.
//!
//! [`DeviceView`] reads one device in place, from a packed store or from a [`DeviceRecord`];
//! `DeviceRecord` stays the owned form the CA's inventory and the admin API use.

use std::collections::btree_set;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use portcullis_config::DeviceStatus;

use crate::status::DeviceRecord;

/// The hash function of every device table and profile dictionary of this process. Seeded at
/// random once (device ids are chosen by whoever writes the inventory: a fixed function
/// would let them pick colliding ids); the same for all tables, so shards can move between
/// generations of a table without being rehashed.
pub(crate) fn hasher() -> &'static foldhash::fast::RandomState {
    static STATE: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

/// What many devices share: the platform and the set of tags (sorted, no duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    platform: Option<Box<str>>,
    tags: Box<[Box<str>]>,
}

impl Profile {
    /// A profile from a platform and tags in any order (sorted and deduplicated here).
    pub fn new<'a>(platform: Option<&str>, tags: impl IntoIterator<Item = &'a str>) -> Self {
        let mut tags: Vec<Box<str>> = tags.into_iter().map(Box::from).collect();
        tags.sort_unstable();
        tags.dedup();
        Self {
            platform: platform.map(Box::from),
            tags: tags.into_boxed_slice(),
        }
    }

    pub fn of_record(record: &DeviceRecord) -> Self {
        // A BTreeSet is already sorted and free of duplicates.
        Self {
            platform: record.platform.as_deref().map(Box::from),
            tags: record.tags.iter().map(|t| Box::from(t.as_str())).collect(),
        }
    }

    pub fn platform(&self) -> Option<&str> {
        self.platform.as_deref()
    }

    pub fn tags(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        self.tags.iter().map(|t| &**t)
    }

    /// The hash [`Profile::key_hash`] gives its platform and tags.
    pub fn hash_value(&self) -> u64 {
        Self::key_hash(self.platform(), self.tags())
    }

    /// A hash of a platform and a *sorted* tag sequence, equal for a profile and for a
    /// record with the same values (so a record can be looked up without building one).
    pub fn key_hash<'a>(platform: Option<&str>, tags: impl Iterator<Item = &'a str>) -> u64 {
        let mut h = hasher().build_hasher();
        platform.hash(&mut h);
        for t in tags {
            t.hash(&mut h);
        }
        h.finish()
    }

    /// True if this profile has exactly `platform` and the sorted `tags`.
    pub fn is<'a>(
        &self,
        platform: Option<&str>,
        tags: impl ExactSizeIterator<Item = &'a str>,
    ) -> bool {
        self.platform() == platform && self.tags.len() == tags.len() && self.tags().eq(tags)
    }
}

/// `owner_len` of a device without an owner (an owner may be the empty string).
const NO_OWNER: u32 = u32::MAX;

/// One packed device: its id and owner are `text[start..]`, id first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    start: u32,
    id_len: u32,
    owner_len: u32,
    /// Index into the profile dictionary.
    profile: u32,
    status: DeviceStatus,
}

impl Slot {
    fn text_len(&self) -> usize {
        self.id_len as usize + self.owner_len_bytes()
    }

    fn owner_len_bytes(&self) -> usize {
        if self.owner_len == NO_OWNER {
            0
        } else {
            self.owner_len as usize
        }
    }
}

/// The arena would pass 4 GiB (slot offsets are `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaFull;

/// Devices packed: slots, one arena of text, a dictionary of profiles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Packed {
    slots: Vec<Slot>,
    text: String,
    profiles: Vec<Arc<Profile>>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Heap bytes held: (slots, text, profile dictionary) — capacities, and each distinct
    /// profile counted where its `Arc` is counted.
    pub fn heap_bytes(&self) -> (usize, usize, usize) {
        (
            self.slots.capacity() * std::mem::size_of::<Slot>(),
            self.text.capacity(),
            self.profiles.capacity() * std::mem::size_of::<Arc<Profile>>(),
        )
    }

    pub fn reserve(&mut self, devices: usize, text: usize) {
        self.slots.reserve(devices);
        self.text.reserve(text);
    }

    /// The id of the device at `pos` ("" past the end: callers pass positions they hold).
    pub fn id(&self, pos: u32) -> &str {
        match self.slots.get(pos as usize) {
            Some(s) => self.str_at(s.start as usize, s.id_len as usize),
            None => "",
        }
    }

    fn str_at(&self, start: usize, len: usize) -> &str {
        self.text.get(start..start + len).unwrap_or_default()
    }

    pub fn view(&self, pos: u32) -> Option<DeviceView<'_>> {
        let s = self.slots.get(pos as usize)?;
        let start = s.start as usize;
        let id_len = s.id_len as usize;
        let owner =
            (s.owner_len != NO_OWNER).then(|| self.str_at(start + id_len, s.owner_len as usize));
        Some(DeviceView {
            id: self.str_at(start, id_len),
            owner,
            status: s.status,
            profile: ProfileRef::Packed(self.profiles.get(s.profile as usize)?),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = DeviceView<'_>> + '_ {
        (0..self.slots.len() as u32).filter_map(|pos| self.view(pos))
    }

    pub fn profiles(&self) -> &[Arc<Profile>] {
        &self.profiles
    }

    pub fn profile_id(&self, pos: u32) -> Option<u32> {
        self.slots.get(pos as usize).map(|s| s.profile)
    }

    pub fn profile_of(&self, pos: u32) -> Option<&Arc<Profile>> {
        self.profiles
            .get(self.slots.get(pos as usize)?.profile as usize)
    }

    /// Adds `profile` to the dictionary unconditionally; its index.
    pub fn push_profile(&mut self, profile: Arc<Profile>) -> u32 {
        self.profiles.push(profile);
        self.profiles.len() as u32 - 1
    }

    /// The index of `profile` in the dictionary, added if absent (compared by pointer, then
    /// by value: a linear scan, for the few devices of a delta; bulk builders keep a map).
    pub fn profile_index(&mut self, profile: &Arc<Profile>) -> u32 {
        let found = self
            .profiles
            .iter()
            .position(|p| Arc::ptr_eq(p, profile))
            .or_else(|| self.profiles.iter().position(|p| **p == **profile));
        match found {
            Some(i) => i as u32,
            None => self.push_profile(profile.clone()),
        }
    }

    /// Appends a device whose profile is `profile` (an index into this dictionary).
    pub fn push(
        &mut self,
        id: &str,
        status: DeviceStatus,
        profile: u32,
        owner: Option<&str>,
    ) -> Result<u32, ArenaFull> {
        let slot = self.write(id, status, profile, owner)?;
        self.slots.push(slot);
        Ok(self.slots.len() as u32 - 1)
    }

    /// Appends a device whose id and owner a closure writes into the arena (the wire
    /// decoder unescapes straight into it). `write` returns the id's length; everything it
    /// wrote after that is the owner, if `has_owner`.
    pub fn push_with<E>(
        &mut self,
        status: DeviceStatus,
        profile: u32,
        has_owner: bool,
        write: impl FnOnce(&mut String) -> Result<usize, E>,
    ) -> Result<Result<u32, ArenaFull>, E> {
        let start = self.text.len();
        let id_len = match write(&mut self.text) {
            Ok(n) => n,
            Err(e) => {
                self.text.truncate(start);
                return Err(e);
            }
        };
        let total = self.text.len() - start;
        let owner_len = total.saturating_sub(id_len);
        let fits = self.text.len() <= u32::MAX as usize
            && id_len <= total
            && owner_len < NO_OWNER as usize
            && (has_owner || owner_len == 0);
        if !fits {
            self.text.truncate(start);
            return Ok(Err(ArenaFull));
        }
        self.slots.push(Slot {
            start: start as u32,
            id_len: id_len as u32,
            owner_len: if has_owner {
                owner_len as u32
            } else {
                NO_OWNER
            },
            profile,
            status,
        });
        Ok(Ok(self.slots.len() as u32 - 1))
    }

    fn write(
        &mut self,
        id: &str,
        status: DeviceStatus,
        profile: u32,
        owner: Option<&str>,
    ) -> Result<Slot, ArenaFull> {
        let owner_text = owner.unwrap_or_default();
        let end = self.text.len() + id.len() + owner_text.len();
        let (Ok(start), Ok(id_len), Ok(owner_len)) = (
            u32::try_from(self.text.len()),
            u32::try_from(id.len()),
            u32::try_from(owner_text.len()),
        ) else {
            return Err(ArenaFull);
        };
        if end > u32::MAX as usize || owner_len == NO_OWNER {
            return Err(ArenaFull);
        }
        self.text.push_str(id);
        self.text.push_str(owner_text);
        Ok(Slot {
            start,
            id_len,
            owner_len: if owner.is_some() { owner_len } else { NO_OWNER },
            profile,
            status,
        })
    }

    /// Replaces the device at `pos` (same id). The old text stays in the arena as garbage;
    /// returns its length.
    pub fn replace(
        &mut self,
        pos: u32,
        status: DeviceStatus,
        profile: u32,
        owner: Option<&str>,
    ) -> Result<usize, ArenaFull> {
        let Some(old) = self.slots.get(pos as usize).copied() else {
            return Ok(0);
        };
        let id_range = old.start as usize..(old.start + old.id_len) as usize;
        // Unchanged owner: only the small fields move, nothing is appended.
        let same_owner = match owner {
            None => old.owner_len == NO_OWNER,
            Some(o) => {
                old.owner_len != NO_OWNER && self.str_at(id_range.end, old.owner_len as usize) == o
            }
        };
        if same_owner {
            if let Some(s) = self.slots.get_mut(pos as usize) {
                s.status = status;
                s.profile = profile;
            }
            return Ok(0);
        }
        let id = self.text.get(id_range).unwrap_or_default().to_owned();
        let slot = self.write(&id, status, profile, owner)?;
        if let Some(s) = self.slots.get_mut(pos as usize) {
            *s = slot;
        }
        Ok(old.text_len())
    }

    /// Removes the device at `pos`, moving the last one into its place; returns the length
    /// of the text left behind as garbage.
    pub fn swap_remove(&mut self, pos: u32) -> usize {
        if (pos as usize) < self.slots.len() {
            self.slots.swap_remove(pos as usize).text_len()
        } else {
            0
        }
    }

    /// A copy without garbage text or unused profiles; slot order (positions) unchanged.
    pub fn compacted(&self) -> Self {
        let mut out = Packed {
            slots: Vec::with_capacity(self.slots.len()),
            text: String::with_capacity(self.slots.iter().map(Slot::text_len).sum()),
            profiles: Vec::new(),
        };
        let mut remap = vec![u32::MAX; self.profiles.len()];
        for s in &self.slots {
            let start = s.start as usize;
            let bytes = self
                .text
                .get(start..start + s.text_len())
                .unwrap_or_default();
            let profile = match remap.get_mut(s.profile as usize) {
                Some(r) if *r != u32::MAX => *r,
                Some(r) => {
                    let p = self.profiles.get(s.profile as usize).cloned();
                    *r = out.push_profile(p.unwrap_or_default());
                    *r
                }
                None => 0,
            };
            out.slots.push(Slot {
                start: out.text.len() as u32,
                profile,
                ..*s
            });
            out.text.push_str(bytes);
        }
        out
    }
}

/// One device, read in place: from a packed table or chunk, or from a [`DeviceRecord`].
#[derive(Clone, Copy)]
pub struct DeviceView<'a> {
    id: &'a str,
    owner: Option<&'a str>,
    status: DeviceStatus,
    profile: ProfileRef<'a>,
}

#[derive(Clone, Copy)]
enum ProfileRef<'a> {
    Packed(&'a Arc<Profile>),
    Record(&'a DeviceRecord),
}

impl<'a> DeviceView<'a> {
    pub fn id(&self) -> &'a str {
        self.id
    }

    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    pub fn owner(&self) -> Option<&'a str> {
        self.owner
    }

    pub fn platform(&self) -> Option<&'a str> {
        match self.profile {
            ProfileRef::Packed(p) => p.platform(),
            ProfileRef::Record(r) => r.platform.as_deref(),
        }
    }

    /// The tags, sorted.
    pub fn tags(&self) -> Tags<'a> {
        Tags(match self.profile {
            ProfileRef::Packed(p) => TagsRepr::Packed(p.tags.iter()),
            ProfileRef::Record(r) => TagsRepr::Record(r.tags.iter()),
        })
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        match self.profile {
            ProfileRef::Packed(p) => p.tags.binary_search_by(|t| (**t).cmp(tag)).is_ok(),
            ProfileRef::Record(r) => r.tags.contains(tag),
        }
    }

    pub fn to_record(&self) -> DeviceRecord {
        DeviceRecord {
            id: self.id.to_owned(),
            status: self.status,
            tags: self.tags().map(str::to_owned).collect(),
            owner: self.owner.map(str::to_owned),
            platform: self.platform().map(str::to_owned),
        }
    }

    /// The shared profile, when the view is of a packed device.
    pub(crate) fn packed_profile(&self) -> Option<&'a Arc<Profile>> {
        match self.profile {
            ProfileRef::Packed(p) => Some(p),
            ProfileRef::Record(_) => None,
        }
    }

    /// The profile as a value, shared when packed.
    pub(crate) fn profile_arc(&self) -> Arc<Profile> {
        match self.profile {
            ProfileRef::Packed(p) => p.clone(),
            ProfileRef::Record(r) => Arc::new(Profile::of_record(r)),
        }
    }

    /// Same platform and tags as `other`.
    pub(crate) fn same_profile(&self, other: &DeviceView<'_>) -> bool {
        if let (ProfileRef::Packed(a), ProfileRef::Packed(b)) = (self.profile, other.profile) {
            if Arc::ptr_eq(a, b) {
                return true;
            }
        }
        self.platform() == other.platform() && self.tags().eq(other.tags())
    }
}

impl DeviceRecord {
    /// This record as a [`DeviceView`] (what the decision functions read).
    pub fn view(&self) -> DeviceView<'_> {
        DeviceView {
            id: &self.id,
            owner: self.owner.as_deref(),
            status: self.status,
            profile: ProfileRef::Record(self),
        }
    }
}

impl PartialEq for DeviceView<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.status == other.status
            && self.owner == other.owner
            && self.same_profile(other)
    }
}

impl Eq for DeviceView<'_> {}

impl PartialEq<DeviceRecord> for DeviceView<'_> {
    fn eq(&self, other: &DeviceRecord) -> bool {
        *self == other.view()
    }
}

impl fmt::Debug for DeviceView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceView")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("tags", &self.tags().collect::<Vec<_>>())
            .field("owner", &self.owner)
            .field("platform", &self.platform())
            .finish()
    }
}

/// The tags of a [`DeviceView`], sorted.
pub struct Tags<'a>(TagsRepr<'a>);

enum TagsRepr<'a> {
    Packed(std::slice::Iter<'a, Box<str>>),
    Record(btree_set::Iter<'a, String>),
}

impl<'a> Iterator for Tags<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            TagsRepr::Packed(i) => i.next().map(|t| &**t),
            TagsRepr::Record(i) => i.next().map(String::as_str),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            TagsRepr::Packed(i) => i.size_hint(),
            TagsRepr::Record(i) => i.size_hint(),
        }
    }
}

impl ExactSizeIterator for Tags<'_> {}

/// Up to a few thousand devices in packed form: a `devices` event of a snapshot, in memory
/// (the CA's walker makes them, the follower reads them; [`crate::device_lines`] is their
/// text on the wire).
#[derive(Clone, Default)]
pub struct DeviceChunk {
    pub(crate) packed: Packed,
    /// Profile addresses already in this chunk's dictionary (a cache for [`Self::push`]).
    seen: std::collections::HashMap<usize, u32, foldhash::fast::FixedState>,
}

impl DeviceChunk {
    pub fn with_capacity(devices: usize) -> Self {
        let mut chunk = Self::default();
        chunk.packed.reserve(devices, devices * 40);
        chunk
    }

    pub fn len(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = DeviceView<'_>> + '_ {
        self.packed.iter()
    }

    /// Appends a copy of `device` (no check for a duplicate id: the follower makes it).
    pub fn push(&mut self, device: DeviceView<'_>) {
        let profile = match device.packed_profile() {
            Some(p) => {
                let key = Arc::as_ptr(p) as usize;
                match self.seen.get(&key) {
                    Some(&i) => i,
                    None => {
                        let i = self.packed.profile_index(p);
                        // Only addresses this chunk keeps alive: a profile found by value
                        // may be freed later and its address reused by another.
                        if self
                            .packed
                            .profiles
                            .get(i as usize)
                            .is_some_and(|q| Arc::ptr_eq(q, p))
                        {
                            self.seen.insert(key, i);
                        }
                        i
                    }
                }
            }
            None => self.packed.profile_index(&device.profile_arc()),
        };
        // A chunk is bounded by its callers (thousands of devices): it cannot reach 4 GiB.
        let _ = self
            .packed
            .push(device.id(), device.status(), profile, device.owner());
    }

    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a DeviceRecord>) -> Self {
        let mut chunk = Self::default();
        for r in records {
            chunk.push(r.view());
        }
        chunk
    }

    pub(crate) fn from_packed(packed: Packed) -> Self {
        Self {
            packed,
            seen: Default::default(),
        }
    }
}

impl PartialEq for DeviceChunk {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for DeviceChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn record(
        id: &str,
        owner: Option<&str>,
        platform: Option<&str>,
        tags: &[&str],
    ) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status: DeviceStatus::Quarantined,
            tags: tags.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
            owner: owner.map(Into::into),
            platform: platform.map(Into::into),
        }
    }

    #[test]
    fn a_packed_device_reads_back_as_its_record() {
        let records = [
            record(
                "a",
                Some("alice@example.com"),
                Some("macos"),
                &["eng", "laptop"],
            ),
            record("b", Some(""), None, &[]),
            record("c", None, Some("macos"), &["laptop", "eng"]),
        ];
        let chunk = DeviceChunk::from_records(&records);
        assert_eq!(chunk.len(), 3);
        assert_eq!(chunk.packed.profiles().len(), 2, "a and c share a profile");
        for (view, record) in chunk.iter().zip(&records) {
            assert_eq!(view, *record);
            assert_eq!(view.to_record(), *record);
        }
        let b = chunk.packed.view(1).unwrap();
        assert_eq!(b.owner(), Some(""), "an empty owner is not a missing one");
        assert!(chunk.packed.view(0).unwrap().has_tag("laptop"));
        assert!(!chunk.packed.view(0).unwrap().has_tag("lap"));
        assert!(records[0].view().has_tag("eng"));
    }

    #[test]
    fn replace_and_remove_leave_garbage_that_compaction_drops() {
        let mut p = Packed::default();
        let prof = p.push_profile(Arc::new(Profile::new(None, [])));
        let other = p.push_profile(Arc::new(Profile::new(Some("linux"), ["x"])));
        p.push("one", DeviceStatus::Active, prof, Some("o1"))
            .unwrap();
        p.push("two", DeviceStatus::Active, prof, None).unwrap();
        assert_eq!(p.replace(0, DeviceStatus::Retired, prof, Some("o1")), Ok(0));
        assert_eq!(
            p.replace(0, DeviceStatus::Retired, prof, Some("new")),
            Ok(5)
        );
        assert_eq!(p.view(0).unwrap().owner(), Some("new"));
        assert_eq!(p.swap_remove(0), 6);
        assert_eq!(p.id(0), "two");
        let c = p.compacted();
        assert_eq!(c.text_len(), 3);
        assert_eq!(c.profiles().len(), 1, "unused profiles dropped");
        assert_eq!(c.view(0).unwrap(), p.view(0).unwrap());
        let _ = other;
    }
}
