//! The status feed: what the CA pushes to enforcement points, and the follower that turns it
//! into status snapshots. Pure: no sockets, no clock (time is an argument). The CA encodes
//! these events, a remote enforcement point decodes them from Server-Sent Events, and an
//! enforcement point in the CA's own process receives the same values in memory — one
//! protocol, so the two cannot drift.
//!
//! A stream (one CA process lifetime, named by `stream`) is a sequence of generations, each
//! one delta from the last. A subscriber that connects with the stream and generation it has
//! gets the deltas it missed (`hello.resume`); otherwise, or after any gap, it gets a full
//! snapshot: `snapshot` (head), `devices` (chunks), `snapshot_end`. Heartbeats carry the
//! current generation, so a subscriber that missed the last delta notices within a beat.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::device_table::{DuplicateId, TableBuilder};
use crate::packed::DeviceChunk;
use crate::staleness::{Freshness, StaleMode};
use crate::status::{DeviceRecord, StatusSnapshot, StatusStore};

pub use crate::device_lines::{DevicesError, MAX_CHUNK_DEVICES};

/// The path of the feed on the CA's HTTPS listener. v2: `devices` events are lines of
/// tab-separated fields (`device_lines`), no longer JSON.
pub const FEED_PATH: &str = "/feed/v2/status";
/// Devices per `devices` event of a snapshot (about 250 kB of text).
pub const SNAPSHOT_CHUNK: usize = 5000;
/// Devices changed above which applying a delta counts as heavy ([`FeedEvent::is_heavy`]).
pub const HEAVY_DELTA: usize = 64;
/// Largest SSE event a subscriber accepts (a chunk, or a delta of a mass change).
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// The changes from one generation to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub generation: u64,
    /// Devices added or changed (the whole record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<DeviceRecord>,
    /// Device ids deleted from the inventory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Certificate serials (hex) now revoked or on hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoke: Vec<String>,
    /// Serials no longer listed: a hold released, or the certificate expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrevoke: Vec<String>,
    /// What happened, for the audit records of the sessions this cuts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty()
            && self.remove.is_empty()
            && self.revoke.is_empty()
            && self.unrevoke.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub stream: String,
    /// The CA's current generation.
    pub generation: u64,
    /// True: the deltas after the subscriber's generation follow. False: a snapshot follows.
    pub resume: bool,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    pub generation: u64,
    pub devices: usize,
    pub revoked: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub generation: u64,
}

/// One feed event; `name()` is the SSE `event:` field, the JSON of the payload its `data:`.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Hello(Hello),
    Snapshot(SnapshotHead),
    Devices(DeviceChunk),
    SnapshotEnd(Beat),
    Delta(Arc<Delta>),
    Heartbeat(Beat),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("missed a change: at generation {have}, the feed is at {got}; resyncing")]
    Gap { have: u64, got: u64 },
    #[error("feed protocol: {0}")]
    Protocol(String),
    #[error("`devices` event, line {line}: {error}")]
    Devices { line: usize, error: DevicesError },
    #[error("snapshot lists device `{0}` twice")]
    DuplicateDevice(String),
}

impl FeedEvent {
    pub fn name(&self) -> &'static str {
        match self {
            FeedEvent::Hello(_) => "hello",
            FeedEvent::Snapshot(_) => "snapshot",
            FeedEvent::Devices(_) => "devices",
            FeedEvent::SnapshotEnd(_) => "snapshot_end",
            FeedEvent::Delta(_) => "delta",
            FeedEvent::Heartbeat(_) => "heartbeat",
        }
    }

    /// The event's data: one line of JSON, or for `devices` the lines of `device_lines`.
    pub fn data(&self) -> String {
        let json = match self {
            FeedEvent::Hello(v) => serde_json::to_string(v),
            FeedEvent::Snapshot(v) => serde_json::to_string(v),
            FeedEvent::Devices(chunk) => {
                let mut out = String::new();
                crate::device_lines::encode(chunk, "", &mut out);
                return out;
            }
            FeedEvent::SnapshotEnd(v) | FeedEvent::Heartbeat(v) => serde_json::to_string(v),
            FeedEvent::Delta(v) => serde_json::to_string(&**v),
        };
        // Serializing these plain structs cannot fail (string keys, no maps of non-strings).
        json.unwrap_or_default()
    }

    /// One Server-Sent Event (WHATWG HTML §9.2): JSON has no raw newlines, so one `data:`
    /// line; a `devices` event has one `data:` line per device.
    pub fn to_sse(&self) -> String {
        match self {
            FeedEvent::Devices(chunk) => {
                let mut out = String::from("event: devices\n");
                crate::device_lines::encode(chunk, "data: ", &mut out);
                out.push_str("\n\n");
                out
            }
            _ => format!("event: {}\ndata: {}\n\n", self.name(), self.data()),
        }
    }

    /// True for a delta of many devices. Applying one copies a shard per device changed
    /// (≈ 20 µs each; up to the whole table, ≈ 50–100 ms in memory for a million devices and
    /// more where fresh pages fault slowly): callers on an async runtime run it where
    /// blocking is allowed (`block_in_place`, a blocking thread).
    pub fn is_heavy(&self) -> bool {
        matches!(self, FeedEvent::Delta(d) if d.upsert.len() + d.remove.len() > HEAVY_DELTA)
    }

    /// Decodes an event from its SSE name and data. Unknown names are a protocol error: a
    /// subscriber that cannot understand the feed must resync rather than guess.
    pub fn parse(name: &str, data: &str) -> Result<Self, FeedError> {
        fn json<T: for<'de> Deserialize<'de>>(name: &str, data: &str) -> Result<T, FeedError> {
            serde_json::from_str(data)
                .map_err(|e| FeedError::Protocol(format!("`{name}` event: {e}")))
        }
        Ok(match name {
            "hello" => FeedEvent::Hello(json(name, data)?),
            "snapshot" => FeedEvent::Snapshot(json(name, data)?),
            "devices" => FeedEvent::Devices(crate::device_lines::decode(data)?),
            "snapshot_end" => FeedEvent::SnapshotEnd(json(name, data)?),
            "delta" => FeedEvent::Delta(Arc::new(json(name, data)?)),
            "heartbeat" => FeedEvent::Heartbeat(json(name, data)?),
            other => {
                return Err(FeedError::Protocol(format!(
                    "unknown event `{}`",
                    other.chars().take(40).collect::<String>()
                )))
            }
        })
    }
}

/// The events that reproduce `snapshot` of `stream` at `generation` in a new [`Follower`]:
/// a hello, the snapshot head, its devices in chunks, the end. Walks the whole table: call it
/// off the async workers for a large fleet.
pub fn state_events<'a>(
    stream: &str,
    generation: u64,
    snapshot: &'a StatusSnapshot,
) -> impl Iterator<Item = FeedEvent> + 'a {
    let head = [
        FeedEvent::Hello(Hello {
            stream: stream.to_string(),
            generation,
            resume: false,
            heartbeat_ms: 0,
        }),
        FeedEvent::Snapshot(SnapshotHead {
            generation,
            devices: snapshot.device_count(),
            revoked: snapshot.revoked_serials().iter().cloned().collect(),
        }),
    ];
    head.into_iter()
        .chain(
            snapshot
                .device_chunks(SNAPSHOT_CHUNK)
                .map(FeedEvent::Devices),
        )
        .chain(std::iter::once(FeedEvent::SnapshotEnd(Beat { generation })))
}

/// Above this many devices a replaced snapshot is freed later, on another thread.
const LARGE_SNAPSHOT: usize = 50_000;
/// Long enough for requests that loaded the old snapshot to finish their decision.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Drops `snapshots`: small ones at once, large ones after [`RETIRE_AFTER`] in a task that
/// `spawn_blocking` runs (the caller's runtime, so this crate stays free of one).
pub fn retire_later(
    snapshots: Vec<Arc<StatusSnapshot>>,
    spawn_blocking: impl FnOnce(Box<dyn FnOnce() + Send>),
) {
    if snapshots.iter().all(|s| s.device_count() < LARGE_SNAPSHOT) {
        return;
    }
    spawn_blocking(Box::new(move || {
        std::thread::sleep(RETIRE_AFTER);
        drop(snapshots);
    }));
}

/// A snapshot being received in chunks; published only when complete, so readers never see
/// half a fleet. Each chunk goes straight into the table's shards (O(chunk)); completing it
/// costs O(shards): no step of a large snapshot holds the caller for long (the gateway calls
/// this on a Tokio worker).
struct Building {
    head: SnapshotHead,
    table: TableBuilder,
}

/// Keeps a [`StatusStore`] equal to what a feed says, and applies the staleness policy of the
/// store's [`Liveness`](crate::staleness::Liveness).
pub struct Follower {
    store: Arc<StatusStore>,
    /// Stream and generation of the source we are at (`None` until the first snapshot).
    position: Option<(String, u64)>,
    /// The stream whose snapshot is on its way (a hello without resume); the position moves
    /// to it only when the snapshot is complete, so a cut mid-snapshot resumes correctly.
    incoming: Option<String>,
    /// Generation the current hello announced; events until we reach it are catch-up.
    catching_up_to: Option<u64>,
    building: Option<Building>,
    /// The last state heard, never marked stale (a strict point republishes it on recovery).
    good: Arc<StatusSnapshot>,
    /// Snapshots replaced since the caller last took them (see [`Follower::take_retired`]).
    retired: Vec<Arc<StatusSnapshot>>,
}

impl Follower {
    pub fn new(store: Arc<StatusStore>) -> Self {
        let good = store.current();
        Self {
            store,
            position: None,
            incoming: None,
            catching_up_to: None,
            building: None,
            good,
            retired: Vec::new(),
        }
    }

    /// The snapshots this follower replaced, for the caller to drop off the request path.
    ///
    /// Whoever drops the last reference to a snapshot pays for freeing it, and without this
    /// that is often a request in flight. With packed shards a million-device snapshot frees
    /// in milliseconds (it took the better part of a second with records in a hash set), but
    /// the follower still keeps a reference to every snapshot it replaces until taken here,
    /// so the caller can free them off the request path.
    pub fn take_retired(&mut self) -> Vec<Arc<StatusSnapshot>> {
        std::mem::take(&mut self.retired)
    }

    /// The last state heard: stream, generation and snapshot (`None` before the first
    /// snapshot). A strict point's refusal while stale is not part of it. With
    /// [`state_events`] an enforcement point keeps it on disk and replays it at its next start.
    pub fn last_heard(&self) -> Option<(&str, u64, &Arc<StatusSnapshot>)> {
        let (stream, generation) = self.position.as_ref()?;
        Some((stream, *generation, &self.good))
    }

    /// What to ask the source to resume from.
    pub fn position(&self) -> Option<(&str, u64)> {
        self.position.as_ref().map(|(s, g)| (s.as_str(), *g))
    }

    /// The connection to the source is gone: forget half-received state (the next connection
    /// starts with a hello).
    pub fn disconnected(&mut self) {
        self.building = None;
        self.incoming = None;
        self.catching_up_to = None;
    }

    /// Applies one event received at `now`. An error means the subscriber must reconnect
    /// (resuming from [`Follower::position`]); what was published stays.
    pub fn on_event(&mut self, event: FeedEvent, now: SystemTime) -> Result<(), FeedError> {
        match event {
            FeedEvent::Hello(h) => {
                self.building = None;
                self.incoming = None;
                if h.resume {
                    match &self.position {
                        Some((stream, g)) if *stream == h.stream && *g <= h.generation => {}
                        _ => {
                            return Err(FeedError::Protocol(
                                "hello resumes a stream or generation we do not have".into(),
                            ))
                        }
                    }
                } else {
                    self.incoming = Some(h.stream);
                }
                self.catching_up_to = Some(h.generation);
            }
            FeedEvent::Snapshot(head) => {
                if self.incoming.is_none() {
                    return Err(FeedError::Protocol(
                        "snapshot without a hello announcing it".into(),
                    ));
                }
                self.building = Some(Building {
                    table: TableBuilder::new(head.devices),
                    head,
                });
            }
            FeedEvent::Devices(chunk) => {
                let Some(b) = self.building.as_mut() else {
                    return Err(FeedError::Protocol("devices outside a snapshot".into()));
                };
                if b.table.len() + chunk.len() > b.head.devices {
                    return Err(FeedError::Protocol(
                        "more devices than the snapshot announced".into(),
                    ));
                }
                b.table
                    .extend(&chunk)
                    .map_err(|DuplicateId(id)| FeedError::DuplicateDevice(id))?;
            }
            FeedEvent::SnapshotEnd(end) => {
                let Some(b) = self.building.take() else {
                    return Err(FeedError::Protocol(
                        "snapshot_end without a snapshot".into(),
                    ));
                };
                if end.generation != b.head.generation || b.table.len() != b.head.devices {
                    return Err(FeedError::Protocol(format!(
                        "snapshot ended with {} of {} devices at generation {} (began at {})",
                        b.table.len(),
                        b.head.devices,
                        end.generation,
                        b.head.generation
                    )));
                }
                let mut snapshot = StatusSnapshot::from_table(b.table.finish(), b.head.revoked);
                snapshot.generation = b.head.generation;
                snapshot.produced_at = Some(now);
                snapshot.cause = Some(Arc::from("status feed snapshot"));
                let stream = self.incoming.take().unwrap_or_default();
                self.position = Some((stream, b.head.generation));
                self.publish(snapshot);
            }
            FeedEvent::Delta(delta) => {
                let Some((_, have)) = self.position.as_mut().filter(|_| self.incoming.is_none())
                else {
                    return Err(FeedError::Protocol("delta before a snapshot".into()));
                };
                if self.building.is_some() {
                    return Err(FeedError::Protocol("delta inside a snapshot".into()));
                }
                if delta.generation != *have + 1 {
                    return Err(FeedError::Gap {
                        have: *have,
                        got: delta.generation,
                    });
                }
                *have = delta.generation;
                let mut next = self.good.apply(&delta);
                next.produced_at = Some(now);
                self.publish(next);
            }
            FeedEvent::Heartbeat(beat) => {
                if let Some((_, have)) = self.position.as_ref().filter(|_| self.incoming.is_none())
                {
                    if beat.generation > *have {
                        return Err(FeedError::Gap {
                            have: *have,
                            got: beat.generation,
                        });
                    }
                }
            }
        }
        let caught_up = match (self.catching_up_to, &self.position) {
            (Some(target), Some((_, have))) => *have >= target && self.incoming.is_none(),
            _ => false,
        };
        if caught_up {
            self.catching_up_to = None;
        }
        if self.catching_up_to.is_none() && self.position.is_some() {
            self.heard(now);
        }
        Ok(())
    }

    /// Publishes a new state; while a strict refusal is in force it stays marked (catching up
    /// after an outage must not open the door before the last missed change is applied).
    fn publish(&mut self, next: StatusSnapshot) {
        let previous = self.store.current();
        let old_good = std::mem::replace(&mut self.good, Arc::new(next.clone()));
        let mut shown = next;
        shown.stale_since = previous.stale_since;
        self.store.publish(shown);
        self.retired.push(previous);
        self.retired.push(old_good);
    }

    /// The source was heard (and we are caught up): leave a strict refusal, if in one.
    fn heard(&mut self, now: SystemTime) {
        let liveness = self.store.liveness();
        liveness.heard(now);
        if liveness.acting_stale() {
            liveness.set_acting_stale(false);
            if self.store.current().stale_since.is_some() {
                self.retired.push(self.store.current());
                self.store.publish((*self.good).clone());
            }
        }
    }

    /// Applies the staleness policy at `now`: past `max_staleness`, a strict point publishes
    /// the last state marked stale (every device refused, sessions cut); a best-effort point
    /// keeps it. Returns the freshness, for the caller's log.
    pub fn check_staleness(&mut self, now: SystemTime) -> Freshness {
        let liveness = self.store.liveness();
        let freshness = liveness.freshness(now);
        let stale = matches!(freshness, Freshness::Stale { .. });
        if stale && !liveness.acting_stale() {
            liveness.set_acting_stale(true);
            let strict = liveness.policy().map(|p| p.mode) == Some(StaleMode::Strict);
            if strict {
                let mut marked = (*self.good).clone();
                marked.stale_since = liveness.last_heard();
                marked.cause = Some(Arc::from("status feed stale (strict mode)"));
                self.retired.push(self.store.current());
                self.store.publish(marked);
            }
        }
        freshness
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staleness::{Liveness, StalenessPolicy};
    use portcullis_config::DeviceStatus;
    use std::time::{Duration, UNIX_EPOCH};

    fn rec(id: &str, status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status,
            tags: Default::default(),
            owner: None,
            platform: None,
        }
    }

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn hello(stream: &str, generation: u64, resume: bool) -> FeedEvent {
        FeedEvent::Hello(Hello {
            stream: stream.into(),
            generation,
            resume,
            heartbeat_ms: 1000,
        })
    }

    #[test]
    fn the_state_a_follower_heard_replays_into_a_new_one() {
        let first = Arc::new(StatusStore::new(StatusSnapshot::default()));
        let mut follower = Follower::new(first.clone());
        assert!(follower.last_heard().is_none(), "nothing heard yet");
        follower.on_event(hello("s1", 4, false), t(0)).unwrap();
        for e in snapshot_events(4, vec![rec("a", DeviceStatus::Active)]) {
            follower.on_event(e, t(0)).unwrap();
        }
        let delta = Delta {
            generation: 5,
            upsert: vec![rec("b", DeviceStatus::Quarantined)],
            revoke: vec!["0b".into()],
            ..Delta::default()
        };
        follower
            .on_event(FeedEvent::Delta(Arc::new(delta)), t(1))
            .unwrap();
        let (stream, generation, snapshot) = follower.last_heard().unwrap();
        assert_eq!((stream, generation), ("s1", 5));
        let events: Vec<FeedEvent> = state_events(stream, generation, snapshot).collect();

        // Through the wire form, as the file keeps it.
        let second = Arc::new(StatusStore::new(StatusSnapshot::default()));
        let mut restored = Follower::new(second.clone());
        for e in events {
            let e = FeedEvent::parse(e.name(), &e.data()).unwrap();
            restored.on_event(e, t(9)).unwrap();
        }
        assert_eq!(restored.position(), Some(("s1", 5)));
        let (a, b) = (first.current(), second.current());
        assert_eq!(b.generation, 5);
        assert_eq!(b.device_count(), 2);
        assert_eq!(
            b.device("b").map(|d| d.status()),
            Some(DeviceStatus::Quarantined)
        );
        assert_eq!(a.revoked_serials(), b.revoked_serials());
        assert!(b.is_serial_revoked("0b"));
    }

    fn snapshot_events(generation: u64, devices: Vec<DeviceRecord>) -> Vec<FeedEvent> {
        vec![
            FeedEvent::Snapshot(SnapshotHead {
                generation,
                devices: devices.len(),
                revoked: vec!["0A".into()],
            }),
            FeedEvent::Devices(DeviceChunk::from_records(&devices)),
            FeedEvent::SnapshotEnd(Beat { generation }),
        ]
    }

    fn delta(generation: u64, upsert: Vec<DeviceRecord>) -> FeedEvent {
        FeedEvent::Delta(Arc::new(Delta {
            generation,
            upsert,
            cause: Some("test".into()),
            ..Delta::default()
        }))
    }

    fn strict_store(mode: StaleMode) -> Arc<StatusStore> {
        Arc::new(StatusStore::with_liveness(
            StatusSnapshot::default(),
            Liveness::tracked(StalenessPolicy {
                max_staleness: Duration::from_secs(10),
                mode,
            }),
        ))
    }

    fn status(store: &StatusStore, id: &str) -> Option<DeviceStatus> {
        store.current().device(id).map(|r| r.status())
    }

    #[test]
    fn a_snapshot_then_deltas_then_a_gap() {
        let store = strict_store(StaleMode::BestEffort);
        let mut f = Follower::new(store.clone());
        f.on_event(hello("s1", 7, false), t(0)).unwrap();
        assert_eq!(
            store.liveness().last_heard(),
            None,
            "catching up is not heard"
        );
        for e in snapshot_events(7, vec![rec("a", DeviceStatus::Active)]) {
            f.on_event(e, t(0)).unwrap();
        }
        assert_eq!(status(&store, "a"), Some(DeviceStatus::Active));
        assert!(store.current().is_serial_revoked("0a"));
        assert_eq!(f.position(), Some(("s1", 7)));
        assert_eq!(store.liveness().last_heard(), Some(t(0)));

        f.on_event(delta(8, vec![rec("a", DeviceStatus::Quarantined)]), t(1))
            .unwrap();
        assert_eq!(status(&store, "a"), Some(DeviceStatus::Quarantined));
        assert_eq!(store.current().cause.as_deref(), Some("test"));
        f.on_event(FeedEvent::Heartbeat(Beat { generation: 8 }), t(2))
            .unwrap();

        // Generation 9 never arrived.
        assert_eq!(
            f.on_event(delta(10, vec![]), t(3)),
            Err(FeedError::Gap {
                have: 8,
                got: 9 + 1
            })
        );
        assert_eq!(
            f.on_event(FeedEvent::Heartbeat(Beat { generation: 9 }), t(3)),
            Err(FeedError::Gap { have: 8, got: 9 })
        );
        assert_eq!(status(&store, "a"), Some(DeviceStatus::Quarantined), "kept");

        // Resume from 8: the server replays 9.
        f.disconnected();
        f.on_event(hello("s1", 9, true), t(4)).unwrap();
        f.on_event(delta(9, vec![rec("b", DeviceStatus::Active)]), t(4))
            .unwrap();
        assert_eq!(status(&store, "b"), Some(DeviceStatus::Active));
        assert_eq!(f.position(), Some(("s1", 9)));
    }

    #[test]
    fn malformed_sequences_are_refused() {
        let store = strict_store(StaleMode::BestEffort);
        let mut f = Follower::new(store.clone());
        assert!(f.on_event(delta(1, vec![]), t(0)).is_err(), "delta first");
        assert!(
            f.on_event(hello("s1", 3, true), t(0)).is_err(),
            "resume unknown"
        );
        f.on_event(hello("s1", 3, false), t(0)).unwrap();
        f.on_event(
            FeedEvent::Snapshot(SnapshotHead {
                generation: 3,
                devices: 1,
                revoked: vec![],
            }),
            t(0),
        )
        .unwrap();
        assert!(
            f.on_event(
                FeedEvent::Devices(DeviceChunk::from_records(&[
                    rec("a", DeviceStatus::Active),
                    rec("b", DeviceStatus::Active)
                ])),
                t(0)
            )
            .is_err(),
            "more devices than announced"
        );
        f.on_event(hello("s1", 3, false), t(0)).unwrap();
        f.on_event(
            FeedEvent::Snapshot(SnapshotHead {
                generation: 3,
                devices: 2,
                revoked: vec![],
            }),
            t(0),
        )
        .unwrap();
        assert!(
            f.on_event(FeedEvent::SnapshotEnd(Beat { generation: 3 }), t(0))
                .is_err(),
            "a short snapshot is not published"
        );
        assert_eq!(store.current().device_count(), 0);
        // The same id twice in one snapshot (across chunks or in one).
        f.on_event(hello("s1", 3, false), t(0)).unwrap();
        f.on_event(
            FeedEvent::Snapshot(SnapshotHead {
                generation: 3,
                devices: 3,
                revoked: vec![],
            }),
            t(0),
        )
        .unwrap();
        let one =
            || FeedEvent::Devices(DeviceChunk::from_records(&[rec("a", DeviceStatus::Active)]));
        f.on_event(one(), t(0)).unwrap();
        assert_eq!(
            f.on_event(one(), t(0)),
            Err(FeedError::DuplicateDevice("a".into()))
        );
        assert_eq!(store.current().device_count(), 0);
        assert!(matches!(
            FeedEvent::parse("devices", "{\"devices\":1,\"profiles\":[]}\nx\ta\t0"),
            Err(FeedError::Devices {
                line: 2,
                error: DevicesError::Profile { .. }
            })
        ));
        assert!(FeedEvent::parse("delta", "{\"generation\":\"x\"}").is_err());
        assert!(FeedEvent::parse("surprise", "{}").is_err());
        assert!(FeedEvent::parse("heartbeat", "").is_err());
    }

    #[test]
    fn a_cut_mid_snapshot_keeps_the_old_position() {
        let store = strict_store(StaleMode::BestEffort);
        let mut f = Follower::new(store.clone());
        f.on_event(hello("s1", 4, false), t(0)).unwrap();
        for e in snapshot_events(4, vec![rec("a", DeviceStatus::Active)]) {
            f.on_event(e, t(0)).unwrap();
        }
        // The CA restarted (stream s2); its snapshot is cut off halfway.
        f.disconnected();
        f.on_event(hello("s2", 1, false), t(1)).unwrap();
        f.on_event(snapshot_events(1, vec![])[0].clone(), t(1))
            .unwrap();
        f.disconnected();
        assert_eq!(
            f.position(),
            Some(("s1", 4)),
            "still where the last whole state was"
        );
        assert_eq!(status(&store, "a"), Some(DeviceStatus::Active));
        assert!(
            f.on_event(delta(5, vec![]), t(1)).is_ok(),
            "s1 deltas would still apply"
        );
    }

    #[test]
    fn events_round_trip_through_sse_text() {
        let events = [
            hello("s", 1, true),
            delta(2, vec![rec("a", DeviceStatus::Retired)]),
            FeedEvent::Heartbeat(Beat { generation: 2 }),
        ];
        for e in events {
            let text = e.to_sse();
            let mut lines = text.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            assert_eq!(FeedEvent::parse(name, data).unwrap(), e);
        }
        // `devices`: one `data:` line per device after the header, joined by LF on receipt.
        let chunk = FeedEvent::Devices(DeviceChunk::from_records(&[
            rec("a", DeviceStatus::Active),
            rec("b\tc", DeviceStatus::Quarantined),
        ]));
        let text = chunk.to_sse();
        assert!(
            text.ends_with("\n\n") && text.matches("data: ").count() == 3,
            "{text}"
        );
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(
            FeedEvent::parse("devices", &data.join("\n")).unwrap(),
            chunk
        );
        assert_eq!(chunk.data(), data.join("\n"));
        // A delta of many devices is heavy (its caller runs it where blocking is allowed).
        let many: Vec<DeviceRecord> = (0..=HEAVY_DELTA)
            .map(|i| rec(&format!("d{i}"), DeviceStatus::Active))
            .collect();
        assert!(delta(3, many).is_heavy());
        assert!(!delta(3, vec![rec("a", DeviceStatus::Active)]).is_heavy());
        assert!(!chunk.is_heavy());
    }

    #[test]
    fn strict_refuses_everyone_when_stale_and_recovers_when_caught_up() {
        let store = strict_store(StaleMode::Strict);
        let mut f = Follower::new(store.clone());
        f.on_event(hello("s1", 1, false), t(0)).unwrap();
        for e in snapshot_events(1, vec![rec("a", DeviceStatus::Active)]) {
            f.on_event(e, t(0)).unwrap();
        }
        assert!(matches!(f.check_staleness(t(10)), Freshness::Fresh { .. }));
        assert!(store.current().stale_since.is_none());
        assert!(matches!(f.check_staleness(t(11)), Freshness::Stale { .. }));
        assert_eq!(store.current().stale_since, Some(t(0)));
        assert_eq!(
            status(&store, "a"),
            Some(DeviceStatus::Active),
            "state kept"
        );

        // Reconnected; the hello alone does not end the refusal, catching up does.
        f.disconnected();
        f.on_event(hello("s1", 2, true), t(20)).unwrap();
        assert!(store.current().stale_since.is_some());
        f.on_event(delta(2, vec![rec("a", DeviceStatus::Quarantined)]), t(20))
            .unwrap();
        let now = store.current();
        assert!(now.stale_since.is_none());
        assert_eq!(now.device("a").unwrap().status(), DeviceStatus::Quarantined);
    }

    #[test]
    fn best_effort_keeps_the_last_state() {
        let store = strict_store(StaleMode::BestEffort);
        let mut f = Follower::new(store.clone());
        f.on_event(hello("s1", 1, false), t(0)).unwrap();
        for e in snapshot_events(1, vec![rec("a", DeviceStatus::Active)]) {
            f.on_event(e, t(0)).unwrap();
        }
        assert!(matches!(f.check_staleness(t(100)), Freshness::Stale { .. }));
        assert!(store.current().stale_since.is_none());
        assert!(store.liveness().acting_stale());
        assert_eq!(status(&store, "a"), Some(DeviceStatus::Active));
    }
}
