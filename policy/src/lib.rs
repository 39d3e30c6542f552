//! The trust decision, and nothing else: no sockets, no files, no clock it does not take as an
//! argument. Gateway and bastion call these same functions, so they cannot disagree.
//!
//! - [`identity`]: what a device certificate says (device id, serial, fingerprints, SANs).
//! - [`verify`]: chain, validity with skew, EKU clientAuth, maximum lifetime.
//! - [`status`]: the inventory snapshot (device → status, revoked serials) and its store;
//!   its devices are packed (`packed`) in copy-on-write shards (`device_table`).
//! - [`feed`]: the status feed's events and the follower that applies them; a snapshot's
//!   `devices` events have their own compact text (`device_lines`).
//! - [`staleness`]: when the status source was last heard, and what silence means.
//! - [`inventory`]: the inventory document format.
//! - [`rules`]: route rules compiled from config criteria.
//! - [`decision`]: the per-request decision with its reason, and the decision cache.

// API CHANGE (issue 5, compact snapshots): `StatusSnapshot::{device, record_of}` return
// `Option<DeviceView<'_>>` and `devices()` iterates `DeviceView`s (accessors `id() status()
// tags() has_tag() owner() platform() to_record()`); `DeviceRecord::view()` lends a record
// as one. `rules::Subject::record` is an `Option<DeviceView>`. `FeedEvent::Devices` carries
// a `DeviceChunk`. New: `StatusSnapshot::device_chunks`, `FeedError::{Devices,
// DuplicateDevice}`, `feed::{DevicesError, MAX_CHUNK_DEVICES}`.
//
// API CHANGE: `Reason::detail` is `Cow<'static, str>` instead of `String`, so that the allow
// path (and a cached hit) does not allocate. It derefs to `&str` as before
// (`&decision.reason.detail` still coerces to `&str`); build one with `.into()`.
//
// Additions (no existing signature changed): identity::{OID_ATTESTATION_FORMAT,
// OID_DEVICE_PLATFORM, *_ARCS, MAX_DEVICE_ID_LEN, serial_hex}; inventory::{normalize_serial,
// InventoryFormat::from_extension, InventoryError::RevokedSerial}; rules::{Subject, Truth,
// parse_fingerprint, RoutePolicy::{allow_len, deny_len, first_allow, first_deny,
// explain_allow_failures}}; status::StatusSnapshot::{record_of, status_of, is_revoked,
// from_records}; TrustAnchors::len; DecisionCache::{entry_count, clear}.

pub mod decision;
mod der;
mod device_lines;
pub mod device_table;
pub mod feed;
pub mod identity;
pub mod inventory;
mod name;
mod packed;
pub mod rules;
pub mod staleness;
pub mod status;
#[cfg(test)]
mod testutil;
pub mod verify;

pub use decision::{Decision, DecisionCache, Reason, RequestFacts};
pub use feed::{Delta, FeedError, FeedEvent, Follower};
pub use identity::{DeviceIdentity, IdSource, IdentityError};
pub use inventory::{parse_inventory, InventoryError, InventoryFormat};
pub use packed::{DeviceChunk, DeviceView, Tags};
pub use portcullis_config::{Criterion, DeviceStatus};
pub use rules::RoutePolicy;
pub use staleness::{Freshness, Liveness, StaleMode, StalenessPolicy};
pub use status::{DeviceRecord, StatusSnapshot, StatusStore};
pub use verify::{TrustAnchors, VerifyError, VerifyOptions};
