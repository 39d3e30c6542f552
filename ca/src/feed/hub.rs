//! The feed's state on the CA: the current snapshot, a bounded log of recent deltas, and a
//! broadcast of new ones. One writer (the producer) calls [`FeedHub::publish`]; any number of
//! subscribers call [`FeedHub::subscribe`] and then [`pump`] events out.
//!
//! The log lets a subscriber that reconnects after a short cut resume with the deltas it
//! missed; anything older, or a subscriber from another stream (a CA restart), gets a full
//! snapshot. Subscribing and publishing take the same lock, so a subscriber's starting point
//! and its first broadcast delta never overlap or leave a hole.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use portcullis_policy::feed::{Beat, Hello, SnapshotHead, SNAPSHOT_CHUNK};
use portcullis_policy::{Delta, FeedEvent, StatusSnapshot};
use tokio::sync::{broadcast, mpsc};

/// Deltas kept for resuming subscribers (a few minutes of heavy churn).
const LOG_LEN: usize = 4096;
/// Deltas a slow subscriber may fall behind before it is made to resume (from the log).
const BROADCAST_LEN: usize = 1024;

pub struct FeedHub {
    /// Names this CA process's sequence of generations (they restart with it).
    stream: String,
    heartbeat: Duration,
    state: Mutex<State>,
}

struct State {
    snapshot: Arc<StatusSnapshot>,
    log: VecDeque<Arc<Delta>>,
    tx: broadcast::Sender<Arc<Delta>>,
}

/// Where a new subscriber starts.
pub enum Start {
    /// The deltas after the subscriber's generation, in order (maybe none).
    Resume(Vec<Arc<Delta>>),
    /// The whole state.
    Snapshot(Arc<StatusSnapshot>),
}

pub struct Subscription {
    pub hello: Hello,
    pub start: Start,
    pub deltas: broadcast::Receiver<Arc<Delta>>,
}

impl FeedHub {
    /// A hub starting at `initial` (its generation becomes 1 of a new stream).
    pub fn new(mut initial: StatusSnapshot, heartbeat: Duration, now: SystemTime) -> Self {
        initial.generation = 1;
        initial.produced_at = Some(now);
        let (tx, _) = broadcast::channel(BROADCAST_LEN);
        Self {
            stream: uuid::Uuid::new_v4().simple().to_string(),
            heartbeat,
            state: Mutex::new(State {
                snapshot: Arc::new(initial),
                log: VecDeque::with_capacity(LOG_LEN),
                tx,
            }),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn current(&self) -> Arc<StatusSnapshot> {
        self.state().snapshot.clone()
    }

    /// Makes `delta` the next generation (its `generation` is assigned here) and sends it to
    /// every subscriber. Returns the generation.
    pub fn publish(&self, mut delta: Delta, now: SystemTime) -> u64 {
        let mut state = self.state();
        delta.generation = state.snapshot.generation + 1;
        let mut next = state.snapshot.apply(&delta);
        next.produced_at = Some(now);
        state.snapshot = Arc::new(next);
        let delta = Arc::new(delta);
        if state.log.len() == LOG_LEN {
            state.log.pop_front();
        }
        state.log.push_back(delta.clone());
        // No receivers is fine: nobody is subscribed yet.
        let _ = state.tx.send(delta);
        state.snapshot.generation
    }

    /// Starts a subscription for a subscriber at `since` (its stream and generation).
    pub fn subscribe(&self, since: Option<(&str, u64)>) -> Subscription {
        let state = self.state();
        let generation = state.snapshot.generation;
        let resume = since.and_then(|(stream, have)| {
            if stream != self.stream || have > generation {
                return None;
            }
            if have == generation {
                return Some(Vec::new());
            }
            // The log holds consecutive generations ending at `generation`.
            let first = state.log.front()?.generation;
            if have + 1 < first {
                return None;
            }
            Some(
                state
                    .log
                    .iter()
                    .filter(|d| d.generation > have)
                    .cloned()
                    .collect(),
            )
        });
        let hello = Hello {
            stream: self.stream.clone(),
            generation,
            resume: resume.is_some(),
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        Subscription {
            hello,
            start: match resume {
                Some(deltas) => Start::Resume(deltas),
                None => Start::Snapshot(state.snapshot.clone()),
            },
            deltas: state.tx.subscribe(),
        }
    }

    /// A subscription for `since` and a task sending its events into a channel; the task ends
    /// when the receiver is dropped, or when the subscriber falls too far behind (it then
    /// reconnects and resumes from the log).
    pub fn events(self: &Arc<Self>, since: Option<(&str, u64)>) -> mpsc::Receiver<FeedEvent> {
        let (tx, rx) = mpsc::channel(64);
        let sub = self.subscribe(since);
        tokio::spawn(pump(self.clone(), sub, tx));
        rx
    }
}

/// Sends the hello, the starting point and then live deltas and heartbeats into `out`.
pub async fn pump(hub: Arc<FeedHub>, sub: Subscription, out: mpsc::Sender<FeedEvent>) {
    let Subscription {
        hello,
        start,
        mut deltas,
    } = sub;
    let mut at = hello.generation;
    if out.send(FeedEvent::Hello(hello)).await.is_err() {
        return;
    }
    match start {
        Start::Resume(missed) => {
            for d in missed {
                if out.send(FeedEvent::Delta(d)).await.is_err() {
                    return;
                }
            }
        }
        Start::Snapshot(snapshot) => {
            if !send_snapshot(snapshot, &out).await {
                return;
            }
        }
    }
    let mut beat = tokio::time::interval(hub.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        let event = tokio::select! {
            _ = out.closed() => return,
            d = deltas.recv() => match d {
                // Already sent with the starting point.
                Ok(d) if d.generation <= at => continue,
                Ok(d) => {
                    at = d.generation;
                    FeedEvent::Delta(d)
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "status feed subscriber too slow; it will resume");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = beat.tick() => FeedEvent::Heartbeat(Beat { generation: at }),
        };
        if out.send(event).await.is_err() {
            return;
        }
    }
}

/// The snapshot as a head, chunks of devices and an end. Chunks are cut on a blocking thread
/// (a million devices take ≈ 0.1 s to walk) and handed over one at a time.
async fn send_snapshot(snapshot: Arc<StatusSnapshot>, out: &mpsc::Sender<FeedEvent>) -> bool {
    let generation = snapshot.generation;
    let head = SnapshotHead {
        generation,
        devices: snapshot.device_count(),
        revoked: snapshot.revoked_serials().iter().cloned().collect(),
    };
    if out.send(FeedEvent::Snapshot(head)).await.is_err() {
        return false;
    }
    let (tx, mut rx) = mpsc::channel::<portcullis_policy::DeviceChunk>(2);
    let walker = tokio::task::spawn_blocking(move || {
        for chunk in snapshot.device_chunks(SNAPSHOT_CHUNK) {
            if tx.blocking_send(chunk).is_err() {
                return;
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        if out.send(FeedEvent::Devices(chunk)).await.is_err() {
            return false;
        }
    }
    if walker.await.is_err() {
        return false;
    }
    out.send(FeedEvent::SnapshotEnd(Beat { generation }))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::DeviceStatus;
    use portcullis_policy::{DeviceRecord, Follower, StatusStore};

    fn rec(id: &str, status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status,
            tags: Default::default(),
            owner: None,
            platform: None,
        }
    }

    fn change(id: &str, status: DeviceStatus) -> Delta {
        Delta {
            upsert: vec![rec(id, status)],
            ..Delta::default()
        }
    }

    async fn drain(rx: &mut mpsc::Receiver<FeedEvent>, f: &mut Follower, n: usize) {
        for _ in 0..n {
            let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event")
                .expect("open");
            f.on_event(e, SystemTime::now()).unwrap();
        }
    }

    #[tokio::test]
    async fn a_follower_gets_the_snapshot_then_deltas_and_resumes_from_the_log() {
        let now = SystemTime::now();
        let hub = Arc::new(FeedHub::new(
            StatusSnapshot::from_records(
                (0..12_000).map(|i| rec(&format!("d{i}"), DeviceStatus::Active)),
                ["0a".to_string()],
            ),
            Duration::from_secs(60),
            now,
        ));
        let store = Arc::new(StatusStore::new(StatusSnapshot::default()));
        let mut follower = Follower::new(store.clone());
        let mut rx = hub.events(None);
        // hello, head, 3 chunks, end
        drain(&mut rx, &mut follower, 6).await;
        assert_eq!(store.current().device_count(), 12_000);
        assert!(store.current().is_serial_revoked("0a"));

        hub.publish(change("d1", DeviceStatus::Quarantined), now);
        drain(&mut rx, &mut follower, 1).await;
        assert_eq!(
            store.current().device("d1").unwrap().status(),
            DeviceStatus::Quarantined
        );

        // Cut; two changes happen; the follower resumes and gets exactly those.
        drop(rx);
        follower.disconnected();
        hub.publish(change("d2", DeviceStatus::Retired), now);
        hub.publish(change("d3", DeviceStatus::Quarantined), now);
        let (stream, at) = follower.position().unwrap();
        let sub = hub.subscribe(Some((stream, at)));
        assert!(sub.hello.resume);
        match &sub.start {
            Start::Resume(d) => assert_eq!(d.len(), 2),
            Start::Snapshot(_) => panic!("expected a resume"),
        }
        let mut rx = hub.events(Some((stream, at)));
        drain(&mut rx, &mut follower, 3).await;
        assert_eq!(
            store.current().device("d3").unwrap().status(),
            DeviceStatus::Quarantined
        );

        // Another stream (a CA restart) or a generation from the future: a snapshot.
        for since in [Some(("other", 2)), Some((hub.stream(), 999)), None] {
            assert!(matches!(hub.subscribe(since).start, Start::Snapshot(_)));
        }
    }

    #[tokio::test]
    async fn a_subscriber_older_than_the_log_gets_a_snapshot() {
        let now = SystemTime::now();
        let hub = FeedHub::new(StatusSnapshot::default(), Duration::from_secs(60), now);
        for i in 0..LOG_LEN + 5 {
            hub.publish(change(&format!("d{i}"), DeviceStatus::Active), now);
        }
        let stream = hub.stream().to_string();
        assert!(matches!(
            hub.subscribe(Some((&stream, 2))).start,
            Start::Snapshot(_)
        ));
        let recent = hub.current().generation - 3;
        match hub.subscribe(Some((&stream, recent))).start {
            Start::Resume(d) => assert_eq!(d.len(), 3),
            Start::Snapshot(_) => panic!("recent enough to resume"),
        }
    }
}
