//! A million-device snapshot through the real wire path, in one process:
//! `FeedHub::events` (the CA's pump and its blocking walker) → `FeedEvent::to_sse` →
//! frames → `portcullis::status_feed::SseParser` → `FeedEvent::parse` → `Follower::on_event`
//! → `StatusStore`. Meanwhile another thread does what a request does: `store.current()`,
//! `decision::decide` (which looks the device up), drop — and records the latency of each.
//!
//! Runs, in order:
//! 1. **live**: CA pump → encoder thread → 16 KiB frames over a bounded channel (≈ 1 MiB, a
//!    socket's worth) → follower thread; the gateway's store starts empty.
//! 2. the CA's events once more, kept as bytes; the SSE parser alone over them at several
//!    frame sizes.
//! 3. **follower process**: this binary re-run as `--follower-child`, reading those bytes from
//!    a pipe: the follower side alone, its time and memory without the CA's in the process —
//!    a fresh snapshot, then the same again (a resync after a CA restart).
//! 4. **control**: the reader with two spinning threads (the same CPU contention, no swap):
//!    what the scheduler alone does to the reader's latency on this 2-vCPU machine.
//! 5. **resync, in process**: the snapshot replayed into the live run's store, which holds
//!    one: the old one is freed by whoever drops the last reference to it.
//! 6. **deltas** on the 1M snapshot: one-device deltas through the wire path after 0, n/96,
//!    n/16.7 and n/16 devices were changed (the sizes at which the overlay design before
//!    the packed shards slowed down and then folded).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use portcullis::status_feed::SseParser;
use portcullis_ca::feed::FeedHub;
use portcullis_policy::decision::decide;
use portcullis_policy::{
    Criterion, Delta, DeviceIdentity, DeviceRecord, DeviceStatus, FeedEvent, Follower, IdSource,
    Liveness, RequestFacts, RoutePolicy, StaleMode, StalenessPolicy, StatusSnapshot, StatusStore,
};

use super::util::{hwm_mb, ms, reset_peak, rss_mb, summary_ms, thread_cpu, Hist};
use crate::sys;

pub struct Options {
    pub devices: usize,
    /// Bytes per frame handed to the SSE parser (a TLS record carries ≤ 16 KiB).
    pub frame: usize,
    pub revoked: usize,
}

// ---------------------------------------------------------------------------------------------
// The fleet.

const B36: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TAGS: &[&str] = &[
    "eng",
    "sales",
    "finance",
    "support",
    "laptop",
    "desktop",
    "contractor",
    "exec",
];
const FIRST: &[&str] = &[
    "alex", "maria", "john", "li", "fatima", "olivia", "noah", "emma", "lucas", "sofia", "omar",
    "hana", "ivan", "chloe", "mateo", "aisha",
];
const LAST: &[&str] = &[
    "smith", "garcia", "chen", "kowalski", "nguyen", "okafor", "muller", "rossi", "tanaka",
    "silva", "dubois", "jensen", "haddad", "novak",
];

/// "C02" + 9 base-36 characters, a bijection of `i` (Apple-style serials, unique).
fn device_id(i: usize) -> String {
    let m = 36u64.pow(9);
    let mut x = (i as u64 * 1_000_003 + 7_777_777) % m;
    let mut buf = [b'0'; 9];
    for b in buf.iter_mut().rev() {
        *b = B36[(x % 36) as usize];
        x /= 36;
    }
    let mut s = String::with_capacity(12);
    s.push_str("C02");
    s.push_str(std::str::from_utf8(&buf).unwrap());
    s
}

fn record(i: usize) -> DeviceRecord {
    let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17;
    let status = match i % 100 {
        0..=96 => DeviceStatus::Active,
        97 | 98 => DeviceStatus::Quarantined,
        _ => DeviceStatus::Retired,
    };
    let mut tags = BTreeSet::new();
    tags.insert(TAGS[(h % 8) as usize].to_string());
    if h & 0x100 != 0 {
        tags.insert(TAGS[((h >> 3) % 8) as usize].to_string());
    }
    let platform = match h % 10 {
        0..=5 => "macos",
        6..=8 => "windows",
        _ => "linux",
    };
    DeviceRecord {
        id: device_id(i),
        status,
        tags,
        owner: Some(format!(
            "{}.{}{}@example.com",
            FIRST[((h >> 5) % FIRST.len() as u64) as usize],
            LAST[((h >> 9) % LAST.len() as u64) as usize],
            (h >> 13) % 100
        )),
        platform: Some(platform.to_string()),
    }
}

fn serial(i: usize) -> String {
    format!(
        "{:032x}",
        (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

// ---------------------------------------------------------------------------------------------
// The reader: what a request does with the store.

struct Reader {
    hist: Hist,
    allowed: u64,
    /// The slowest samples: (ns, seconds since the run's start).
    worst: Vec<(u64, f64)>,
    generations: BTreeSet<u64>,
}

fn identities(devices: usize, n: usize) -> Vec<DeviceIdentity> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = device_id((x % devices as u64) as usize);
            DeviceIdentity {
                uri_sans: vec![format!("spiffe://portcullis.test/device/{id}")],
                device_id: Some(id),
                id_source: Some(IdSource::PermanentIdentifier),
                // Not on the revoked list.
                serial: format!("{:032x}", k as u128 + (1 << 120)),
                fingerprint: [0x42; 32],
                spki_sha256: [0; 32],
                not_before: UNIX_EPOCH,
                not_after: UNIX_EPOCH,
                issuer: "CN=Portcullis Intermediate".into(),
                subject: "CN=device".into(),
                dns_sans: vec![],
                attestation: Some("tpm".into()),
                platform: None,
            }
        })
        .collect()
}

fn spawn_reader(
    store: Arc<StatusStore>,
    ids: Arc<Vec<DeviceIdentity>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> std::thread::JoinHandle<Reader> {
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let policy = RoutePolicy::compile(&[Criterion::Tag("eng".into())], &[]).unwrap();
            let facts = RequestFacts {
                source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                method: "GET",
                path: "/api/items",
            };
            let mut r = Reader {
                hist: Hist::default(),
                allowed: 0,
                worst: Vec::new(),
                generations: BTreeSet::new(),
            };
            let mut last_gen = u64::MAX;
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    let a = Instant::now();
                    let snap = store.current();
                    let d = decide(&policy, &snap, Some(&ids[k % ids.len()]), &facts);
                    let generation = snap.generation;
                    drop(snap);
                    let b = Instant::now();
                    let ns = (b - a).as_nanos() as u64;
                    r.hist.record(ns);
                    r.allowed += u64::from(d.allow);
                    if generation != last_gen {
                        r.generations.insert(generation);
                        last_gen = generation;
                    }
                    if r.worst.len() < 5 || ns > r.worst[r.worst.len() - 1].0 {
                        r.worst.push((ns, (a - t0).as_secs_f64()));
                        r.worst.sort_by_key(|w| std::cmp::Reverse(w.0));
                        r.worst.truncate(5);
                    }
                    k += 1;
                }
            }
            r
        })
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The follower side.

#[derive(Default, Clone)]
struct FollowStats {
    bytes: usize,
    events: usize,
    /// In `SseParser::push`.
    push: Duration,
    /// In `FeedEvent::parse` (`devices` lines into packed chunks; JSON for the rest).
    parse: Duration,
    /// In `on_event` for `devices` chunks (appending to the snapshot being built).
    extend: Duration,
    /// `on_event(snapshot_end)`: finishing the table (the chunks went into its shards as
    /// they came) + publish (swap) + dropping whatever the swap released.
    end: Duration,
    /// From the start of the run to the swap.
    swapped_after: Duration,
    /// CPU time of the follower's thread from its first frame to the swap, and within it
    /// of `snapshot_end`.
    cpu: Duration,
    end_cpu: Duration,
}

/// The follower side of one connection: parser, follower, timings.
struct Feeder {
    parser: SseParser,
    s: FollowStats,
    started: Option<(Instant, Duration)>,
}

impl Feeder {
    fn new() -> Self {
        Self {
            parser: SseParser::default(),
            s: FollowStats::default(),
            started: None,
        }
    }

    /// Feeds one frame; true once a snapshot has been swapped in (then `take` the stats).
    /// Events after the swap in the same frame are applied too.
    fn frame(&mut self, frame: &[u8], follower: &mut Follower) -> bool {
        let (t0, cpu0) = *self
            .started
            .get_or_insert_with(|| (Instant::now(), thread_cpu()));
        let s = &mut self.s;
        s.bytes += frame.len();
        let a = Instant::now();
        let events = self.parser.push(frame).expect("SSE");
        s.push += a.elapsed();
        let mut swapped = false;
        for (name, data) in events {
            let b = Instant::now();
            let event = FeedEvent::parse(&name, &data).expect("a feed event");
            drop(data);
            let c = Instant::now();
            s.parse += c - b;
            let (devices, end) = (
                matches!(event, FeedEvent::Devices(_)),
                matches!(event, FeedEvent::SnapshotEnd(_)),
            );
            let c_cpu = if end { thread_cpu() } else { Duration::ZERO };
            follower
                .on_event(event, SystemTime::now())
                .expect("the follower accepts it");
            s.events += 1;
            if devices {
                s.extend += c.elapsed();
            }
            if end {
                s.end = c.elapsed();
                s.end_cpu = thread_cpu() - c_cpu;
                s.swapped_after = t0.elapsed();
                s.cpu = thread_cpu() - cpu0;
                swapped = true;
            }
        }
        swapped
    }

    fn take(&mut self) -> FollowStats {
        self.started = None;
        std::mem::take(&mut self.s)
    }
}

/// Feeds frames to the parser and the follower until the snapshot is swapped in.
fn follow(frames: impl IntoIterator<Item = Bytes>, follower: &mut Follower) -> FollowStats {
    let mut feeder = Feeder::new();
    for frame in frames {
        if feeder.frame(&frame, follower) {
            break;
        }
    }
    feeder.take()
}

fn frames_of(events: &[Bytes], frame: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    for e in events {
        let mut off = 0;
        while off < e.len() {
            let end = (off + frame).min(e.len());
            out.push(e.slice(off..end));
            off = end;
        }
    }
    out
}

fn gateway_store() -> Arc<StatusStore> {
    Arc::new(StatusStore::with_liveness(
        StatusSnapshot::default(),
        Liveness::tracked(StalenessPolicy {
            max_staleness: Duration::from_secs(10),
            mode: StaleMode::BestEffort,
        }),
    ))
}

/// One transfer's results.
struct Run {
    name: &'static str,
    stats: FollowStats,
    reader: Reader,
    rss_before: f64,
    rss_after: f64,
    hwm: f64,
    peak_reset: bool,
    /// CA side of a live run: waiting for the pump/walker, and `to_sse`.
    ca_wait: Duration,
    ca_encode: Duration,
    /// CPU time of the CA-side encoder thread (live run).
    ca_cpu: Duration,
    /// Cores used by the whole process during the run.
    cores: f64,
    /// The retained old snapshot's drop on the follower thread: (wall, CPU).
    old_drop: Option<(Duration, Duration)>,
}

/// Replays pre-encoded frames into `follower` with a reader running.
/// With `retain_old`, this thread holds a reference to the store's snapshot during the
/// transfer and drops it 100 ms after the swap (so that no reader can be the last holder).
fn replay(
    name: &'static str,
    frames: &[Bytes],
    follower: &mut Follower,
    store: &Arc<StatusStore>,
    ids: &Arc<Vec<DeviceIdentity>>,
    retain_old: bool,
) -> Run {
    settle();
    let rss_before = rss_mb();
    let peak_reset = reset_peak();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let ticks0 = sys::self_ticks();
    let reader = spawn_reader(store.clone(), ids.clone(), stop.clone(), t0);
    std::thread::sleep(Duration::from_millis(100));
    let old = retain_old.then(|| store.current());
    let stats = follow(frames.iter().cloned(), follower);
    let mut old_drop = None;
    if let Some(old) = old {
        std::thread::sleep(Duration::from_millis(100));
        let (t, cpu) = (Instant::now(), thread_cpu());
        drop(old);
        old_drop = Some((t.elapsed(), thread_cpu() - cpu));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let reader = reader.join().unwrap();
    let cores = (sys::self_ticks() - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    Run {
        name,
        stats,
        reader,
        rss_before,
        rss_after: rss_mb(),
        hwm: hwm_mb(),
        peak_reset,
        ca_wait: Duration::ZERO,
        ca_encode: Duration::ZERO,
        ca_cpu: Duration::ZERO,
        cores,
        old_drop,
    }
}

/// Lets mimalloc return freed pages (its purge delay is 10 ms) before a memory reading.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

// ---------------------------------------------------------------------------------------------
// The follower in a process of its own (a gateway's memory, without the CA's in it).

/// One snapshot received by the child: memory and time, in MB and ms.
#[derive(Clone, Default)]
struct ChildRound {
    rss_before: f64,
    rss_after: f64,
    hwm: f64,
    peak_reset: bool,
    total_ms: f64,
    cpu_ms: f64,
    push_ms: f64,
    parse_ms: f64,
    extend_ms: f64,
    end_ms: f64,
    end_cpu_ms: f64,
    devices: usize,
}

const CHILD_MARK: &str = "FOLLOWER-CHILD ";

impl ChildRound {
    fn to_line(&self) -> String {
        serde_json::json!([
            self.rss_before,
            self.rss_after,
            self.hwm,
            self.peak_reset,
            self.total_ms,
            self.cpu_ms,
            self.push_ms,
            self.parse_ms,
            self.extend_ms,
            self.end_ms,
            self.end_cpu_ms,
            self.devices
        ])
        .to_string()
    }

    fn from_line(line: &str) -> Self {
        let v: Vec<serde_json::Value> = serde_json::from_str(line).expect("a child line");
        let f = |i: usize| v[i].as_f64().unwrap_or(f64::NAN);
        Self {
            rss_before: f(0),
            rss_after: f(1),
            hwm: f(2),
            peak_reset: v[3].as_bool().unwrap_or(false),
            total_ms: f(4),
            cpu_ms: f(5),
            push_ms: f(6),
            parse_ms: f(7),
            extend_ms: f(8),
            end_ms: f(9),
            end_cpu_ms: f(10),
            devices: f(11) as usize,
        }
    }
}

/// `--follower-child`: reads the SSE stream on stdin in `frame`-byte reads, follows it, and
/// prints one line per snapshot swapped in.
pub fn child(frame: usize) {
    use std::io::Read;
    let store = gateway_store();
    let mut follower = Follower::new(store.clone());
    let mut feeder = Feeder::new();
    let mut buf = vec![0u8; frame];
    let mut stdin = std::io::stdin().lock();
    let (mut rss_before, mut peak_reset) = (rss_mb(), reset_peak());
    loop {
        let n = stdin.read(&mut buf).expect("read stdin");
        if n == 0 {
            return;
        }
        if feeder.frame(&buf[..n], &mut follower) {
            let s = feeder.take();
            settle();
            let round = ChildRound {
                rss_before,
                rss_after: rss_mb(),
                hwm: hwm_mb(),
                peak_reset,
                total_ms: ms(s.swapped_after),
                cpu_ms: ms(s.cpu),
                push_ms: ms(s.push),
                parse_ms: ms(s.parse),
                extend_ms: ms(s.extend),
                end_ms: ms(s.end),
                end_cpu_ms: ms(s.end_cpu),
                devices: store.current().device_count(),
            };
            println!("{CHILD_MARK}{}", round.to_line());
            (rss_before, peak_reset) = (rss_mb(), reset_peak());
        }
    }
}

/// Runs the follower child on `rounds` copies of the encoded snapshot.
fn run_child(encoded: &[Bytes], frame: usize, rounds: usize) -> Vec<ChildRound> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .args(["--follower-child", "--frame", &frame.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the follower child");
    let mut stdin = child.stdin.take().unwrap();
    let events = encoded.to_vec();
    let writer = std::thread::spawn(move || {
        for _ in 0..rounds {
            for e in &events {
                stdin.write_all(e).expect("write to the child");
            }
        }
    });
    let out = child.wait_with_output().expect("the follower child");
    writer.join().unwrap();
    assert!(out.status.success(), "the follower child failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(CHILD_MARK))
        .map(ChildRound::from_line)
        .collect()
}

// ---------------------------------------------------------------------------------------------

pub fn run(o: &Options) {
    let machine = sys::Machine::probe();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = o.devices;
    let rss_start = rss_mb();

    // CA side: the records (what the store would return), the snapshot, the hub. The records
    // are streamed into the table, not collected first: a freed 1M-record `Vec` (≈ 550 MB)
    // would stay in the process's RSS and hide the hub's own size.
    let revoked: Vec<String> = (0..o.revoked).map(serial).collect();
    let t = Instant::now();
    let snapshot = StatusSnapshot::from_records((0..n).map(record), revoked);
    let t_from_records = t.elapsed();
    let t = Instant::now();
    let hub = Arc::new(FeedHub::new(
        snapshot,
        portcullis_ca::feed::HEARTBEAT,
        SystemTime::now(),
    ));
    let t_hub = t.elapsed();
    settle();
    let rss_ca = rss_mb();
    let hub_bytes = hub.current().device_footprint().total();
    let ids = Arc::new(identities(n, 4096));

    // 1. Live, into an empty store; the store and follower are kept for what follows.
    let store = gateway_store();
    let mut follower = Follower::new(store.clone());
    let live = {
        settle();
        let rss_before = rss_mb();
        let peak_reset = reset_peak();
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let ticks0 = sys::self_ticks();
        let reader = spawn_reader(store.clone(), ids.clone(), stop.clone(), t0);
        std::thread::sleep(Duration::from_millis(100));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
        let t_start = Instant::now();
        let mut events = {
            let _guard = rt.enter();
            hub.events(None)
        };
        let frame = o.frame;
        let encoder = std::thread::Builder::new()
            .name("ca-encoder".into())
            .spawn(move || {
                let (mut wait, mut encode) = (Duration::ZERO, Duration::ZERO);
                let cpu0 = thread_cpu();
                loop {
                    let a = Instant::now();
                    let Some(event) = events.blocking_recv() else {
                        break;
                    };
                    let b = Instant::now();
                    wait += b - a;
                    let end = matches!(event, FeedEvent::SnapshotEnd(_));
                    let bytes = Bytes::from(event.to_sse());
                    drop(event);
                    encode += b.elapsed();
                    let mut off = 0;
                    while off < bytes.len() {
                        let to = (off + frame).min(bytes.len());
                        if tx.send(bytes.slice(off..to)).is_err() {
                            return (wait, encode, thread_cpu() - cpu0);
                        }
                        off = to;
                    }
                    if end {
                        break;
                    }
                }
                (wait, encode, thread_cpu() - cpu0)
            })
            .unwrap();
        let mut stats = follow(rx.iter(), &mut follower);
        // From the subscription, not from the first frame.
        stats.swapped_after = t_start.elapsed();
        let (ca_wait, ca_encode, ca_cpu) = encoder.join().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let reader = reader.join().unwrap();
        let cores = (sys::self_ticks() - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
        assert_eq!(store.current().device_count(), n);
        settle();
        Run {
            name:
                "1. live, in process: CA pump → `to_sse` → frames → parser → follower, empty store",
            stats,
            reader,
            rss_before,
            rss_after: rss_mb(),
            hwm: hwm_mb(),
            peak_reset,
            ca_wait,
            ca_encode,
            ca_cpu,
            cores,
            old_drop: None,
        }
    };

    // 2. The CA's part once more, kept as bytes: the events of a snapshot subscription.
    let t = Instant::now();
    let encoded: Vec<Bytes> = rt.block_on(async {
        let mut rx = hub.events(None);
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            let end = matches!(e, FeedEvent::SnapshotEnd(_));
            out.push(Bytes::from(e.to_sse()));
            if end {
                break;
            }
        }
        out
    });
    let t_encode = t.elapsed();
    let wire_bytes: usize = encoded.iter().map(|b| b.len()).sum();
    let n_events = encoded.len();
    let largest_event = encoded.iter().map(|b| b.len()).max().unwrap_or(0);

    // The SSE parser alone at a few frame sizes.
    let mut parser_only = Vec::new();
    for frame in [o.frame, 64 * 1024, usize::MAX] {
        let frames = if frame == usize::MAX {
            encoded.clone()
        } else {
            frames_of(&encoded, frame)
        };
        let mut p = SseParser::default();
        let t = Instant::now();
        let mut count = 0;
        for f in &frames {
            count += p.push(f).unwrap().len();
        }
        assert_eq!(count, n_events);
        parser_only.push((frame, t.elapsed()));
    }

    // 3. The follower alone, in a process of its own: a fresh snapshot, then a resync.
    let child = run_child(&encoded, o.frame, 2);
    assert_eq!(child.len(), 2, "two snapshots swapped in by the child");
    assert!(child.iter().all(|c| c.devices == n));

    // 4. Control: the reader against the 1M store with two spinning threads, no swap.
    let control = {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        let reader = spawn_reader(store.clone(), ids.clone(), stop.clone(), t0);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
        reader.join().unwrap()
    };

    // 4b. The reader alone on the 1M store: the per-request check on a big table.
    let alone = {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = spawn_reader(store.clone(), ids.clone(), stop.clone(), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    };

    // 5. Resync in process: the same snapshot replayed into the store that holds one.
    let frames = frames_of(&encoded, o.frame);
    let resync = replay(
        "5a. resync, in process: the snapshot replayed into the live run's full store",
        &frames,
        &mut follower,
        &store,
        &ids,
        false,
    );
    // The same, with the old snapshot kept by the follower's thread and dropped after the
    // swap: what a deferred drop of the old generation would give.
    let resync_held = replay(
        "5b. resync again, the old snapshot held by the follower thread, dropped 100 ms after the swap",
        &frames,
        &mut follower,
        &store,
        &ids,
        true,
    );
    drop(frames);

    // 6. Deltas on the 1M snapshot, through the wire path.
    let deltas = deltas(&mut follower, &store, &ids, n);
    let bd = store.current().device_footprint();

    // Freeing a 1M-device snapshot: the last references (follower and store).
    drop(encoded);
    let rss_end = rss_mb();
    let (t, cpu) = (Instant::now(), thread_cpu());
    drop(follower);
    drop(store);
    let (t_drop, t_drop_cpu) = (t.elapsed(), thread_cpu() - cpu);
    drop(hub);

    // ----------------------------------------------------------------------------------------
    let us = |ns: u64| format!("{:.1} µs", ns as f64 / 1e3);
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "## Status feed: a {n}-device snapshot — {}",
        time::OffsetDateTime::now_utc()
    );
    println!();
    println!(
        "Machine: {} CPU(s), {}, {}; load average before {} / after {}. Allocator: mimalloc (as the \
         binary). Reads/frames handed to the SSE parser: {} bytes. Revoked serials in the snapshot: {}.",
        machine.nproc,
        machine.cpu_model,
        machine.memory,
        machine.loadavg_before,
        sys::loadavg(),
        o.frame,
        o.revoked
    );
    println!();
    println!(
        "CA side: `StatusSnapshot::from_records` over the generated records (streamed, generation included) {:.0} ms, \
         `FeedHub::new` {:.1} ms; process RSS {:.0} → {:.0} MB with the hub's snapshot ({:.1} MB \
         requested by its table). One snapshot subscription drained and encoded \
         (pump + walker + `to_sse`, one consumer): {:.0} ms, {} events, {:.1} MB of SSE ({:.0} bytes per device, \
         largest event {:.2} MB).",
        ms(t_from_records),
        ms(t_hub),
        rss_start,
        rss_ca,
        mb(hub_bytes),
        ms(t_encode),
        n_events,
        mb(wire_bytes),
        wire_bytes as f64 / n as f64,
        mb(largest_event),
    );
    println!();
    println!("| run | subscription/first byte → swapped (follower thread CPU) | in `SseParser::push` | in `FeedEvent::parse` | appending chunks | `snapshot_end` = build + swap (CPU) | CA wait / encode (CA thread CPU) | RSS growth after | peak RSS growth |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in [&live, &resync, &resync_held] {
        println!(
            "| {} | {:.0} ms ({:.0}) | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms ({:.0}) | {} | {:+.0} MB | {} |",
            r.name,
            ms(r.stats.swapped_after),
            ms(r.stats.cpu),
            ms(r.stats.push),
            ms(r.stats.parse),
            ms(r.stats.extend),
            ms(r.stats.end),
            ms(r.stats.end_cpu),
            if r.ca_encode.is_zero() {
                "— (pre-encoded)".to_string()
            } else {
                format!("{:.0} / {:.0} ms ({:.0})", ms(r.ca_wait), ms(r.ca_encode), ms(r.ca_cpu))
            },
            r.rss_after - r.rss_before,
            if r.peak_reset {
                format!("{:+.0} MB", r.hwm - r.rss_before)
            } else {
                format!("(VmHWM not resettable) {:.0} MB abs.", r.hwm)
            },
        );
    }
    for (k, c) in child.iter().enumerate() {
        println!(
            "| 3{}. follower process alone (stdin pipe, {}-byte reads), {} | {:.0} ms ({:.0}) | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms ({:.0}) | — | {:+.0} MB | {} |",
            ["a", "b"][k],
            o.frame,
            ["fresh: empty store", "resync: a full store, the same snapshot again"][k],
            c.total_ms,
            c.cpu_ms,
            c.push_ms,
            c.parse_ms,
            c.extend_ms,
            c.end_ms,
            c.end_cpu_ms,
            c.rss_after - c.rss_before,
            if c.peak_reset {
                format!("{:+.0} MB", c.hwm - c.rss_before)
            } else {
                format!("(VmHWM not resettable) {:.0} MB abs.", c.hwm)
            },
        );
    }
    println!();
    println!(
        "Live run: the process (CA + follower + reader) used {:.2} cores; its RSS growth includes the CA's \
         in-flight chunks (the pump's 64-event channel). Child process RSS at start {:.0} MB.",
        live.cores, child[0].rss_before
    );
    println!(
        "SSE parser alone over all {:.1} MB: {}.",
        mb(wire_bytes),
        parser_only
            .iter()
            .map(|(f, t)| if *f == usize::MAX {
                format!("{:.0} ms with one frame per event", ms(*t))
            } else {
                format!("{:.0} ms in {f}-byte frames", ms(*t))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Dropping the last references to the {n}-device snapshot (follower + store) at the end: {:.0} ms ({:.0} ms CPU). \
         Run 5b's deferred drop of the old snapshot on the follower thread: {}.",
        ms(t_drop),
        ms(t_drop_cpu),
        resync_held
            .old_drop
            .map_or("—".into(), |(w, c)| format!("{:.0} ms ({:.0} ms CPU)", ms(w), ms(c)))
    );
    println!();
    println!("Reader thread (`store.current()` + `decide` + drop, timed per call):");
    println!();
    println!("| run | calls | p50 | p99 | p99.9 | p99.99 | max | slowest calls (ms @ s since the reader started) | generations seen |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    let reader_row = |name: &str, r: &Reader| {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} ({}–{}) |",
            r.hist.n,
            us(r.hist.quantile(0.5)),
            us(r.hist.quantile(0.99)),
            us(r.hist.quantile(0.999)),
            us(r.hist.quantile(0.9999)),
            us(r.hist.max),
            r.worst
                .iter()
                .map(|(ns, at)| format!("{:.1} @{at:.2}", *ns as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(", "),
            r.generations.len(),
            r.generations.first().unwrap_or(&0),
            r.generations.last().unwrap_or(&0),
        );
    };
    reader_row(live.name, &live.reader);
    reader_row(
        "4. control: reader + 2 spinning threads on the full store, no swap (2 s)",
        &control,
    );
    reader_row("4b. reader alone on the full store, no swap (1 s)", &alone);
    reader_row(resync.name, &resync.reader);
    reader_row(resync_held.name, &resync_held.reader);
    reader_row("6. deltas, incl. bulk churn (below)", &deltas.reader);
    println!();
    println!(
        "Swap instants, s since the reader started: live {:.2}, resync 5a {:.2}, 5b {:.2} (old dropped at {:.2}); \
         the delta at the former fold point applied from {:.2} to {:.2}.",
        0.1 + live.stats.swapped_after.as_secs_f64(),
        0.1 + resync.stats.swapped_after.as_secs_f64(),
        0.1 + resync_held.stats.swapped_after.as_secs_f64(),
        0.2 + resync_held.stats.swapped_after.as_secs_f64(),
        deltas.fold_at,
        deltas.fold_at + deltas.fold_ms / 1e3,
    );
    println!();
    println!(
        "Where a follower's memory goes ({} devices in {} shards; bytes requested from the allocator \
         (capacities), before its rounding):",
        bd.devices, bd.shards
    );
    println!();
    println!("| part | MB | bytes/device |");
    println!("|---|---:|---:|");
    for (name, b) in [
        (
            "device slots (20 B: status, profile, offsets into the text)",
            bd.slots,
        ),
        ("text: ids and owners, one arena per shard", bd.text),
        (
            "shard indexes (hashbrown `HashTable<u32>` of positions)",
            bd.index,
        ),
        (
            "profile dictionaries (pointers to shared platform + tag sets)",
            bd.profiles,
        ),
        ("directory and shard headers", bd.directory),
        ("total requested", bd.total()),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            mb(b),
            b as f64 / bd.devices.max(1) as f64
        );
    }
    println!(
        "\nThe follower process's RSS growth for the fresh snapshot was {:+.0} MB: allocator rounding, pages \
         and the revoked serials ≈ {:+.0} MB on top of the requested bytes.",
        child[0].rss_after - child[0].rss_before,
        child[0].rss_after - child[0].rss_before - mb(bd.total())
    );
    println!();
    println!("Deltas on the {n}-device snapshot (one device each through the wire path: `to_sse` → parser → parse → `on_event`):");
    println!();
    println!("| devices changed before | deltas | p50 | max | note |");
    println!("|---:|---:|---:|---:|---|");
    for g in &deltas.groups {
        let [p50, _, _, max] = summary_ms(&g.ms);
        println!(
            "| {} | {} | {:.3} ms | {:.3} ms | {} |",
            g.overlay,
            g.ms.len(),
            p50,
            max,
            g.note
        );
    }
    println!(
        "\nThe delta at the former fold point (n/16 = {} devices changed): {:.3} ms ({:.3} ms CPU), peak RSS growth {:+.0} MB. Bulk deltas of the churn: {}.",
        (n / 16).max(1024),
        deltas.fold_ms,
        deltas.fold_cpu_ms,
        deltas.fold_peak_mb,
        deltas
            .bulk
            .iter()
            .map(|(k, t)| format!("{k} devices {t:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("(RSS before the final frees: {rss_end:.0} MB.)");
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let fresh = &child[0];
    let growth = fresh.rss_after - fresh.rss_before;
    let peak = fresh.hwm - fresh.rss_before;
    println!(
        "Targets (issue 5): ≤ 1 s → live transfer + swap {:.0} ms, follower process alone {:.0} ms \
         ({:.0} ms CPU) — {}; ≤ 150 MB → follower process RSS growth {:.0} MB (peak {:.0} MB; resync \
         peak above the old snapshot {:.0} MB) — {}; no stall → reader max during the live swap {}, \
         resync 5a {}, resync 5b (deferred drop) {}, deltas/fold {}; control with the same contention \
         and no swap {} (p99.9: {} / {} / {} / {} vs {}).",
        ms(live.stats.swapped_after),
        fresh.total_ms,
        fresh.cpu_ms,
        verdict(live.stats.swapped_after <= Duration::from_secs(1) && fresh.total_ms <= 1000.0),
        growth,
        peak,
        child[1].hwm - child[1].rss_before,
        verdict(growth <= 150.0 && peak <= 150.0),
        us(live.reader.hist.max),
        us(resync.reader.hist.max),
        us(resync_held.reader.hist.max),
        us(deltas.reader.hist.max),
        us(control.hist.max),
        us(live.reader.hist.quantile(0.999)),
        us(resync.reader.hist.quantile(0.999)),
        us(resync_held.reader.hist.quantile(0.999)),
        us(deltas.reader.hist.quantile(0.999)),
        us(control.hist.quantile(0.999)),
    );
    println!();
}

struct DeltaGroup {
    overlay: usize,
    ms: Vec<f64>,
    note: &'static str,
}

struct Deltas {
    groups: Vec<DeltaGroup>,
    bulk: Vec<(usize, f64)>,
    fold_ms: f64,
    fold_cpu_ms: f64,
    fold_peak_mb: f64,
    /// When the fold happened, s since the reader started.
    fold_at: f64,
    reader: Reader,
}

fn deltas(
    follower: &mut Follower,
    store: &Arc<StatusStore>,
    ids: &Arc<Vec<DeviceIdentity>>,
    n: usize,
) -> Deltas {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let reader = spawn_reader(store.clone(), ids.clone(), stop.clone(), t0);
    let mut next_device = 0usize;
    let mut parser = SseParser::default();
    // A delta through the wire path; returns its time in ms.
    let mut apply = |follower: &mut Follower, upsert: Vec<DeviceRecord>| -> f64 {
        let generation = follower.position().expect("following").1 + 1;
        let t = Instant::now();
        let text = FeedEvent::Delta(Arc::new(Delta {
            generation,
            upsert,
            cause: Some("C02XXXXXXXXX active → quarantined by bench: lost".into()),
            ..Delta::default()
        }))
        .to_sse();
        for (name, data) in parser.push(text.as_bytes()).unwrap() {
            let e = FeedEvent::parse(&name, &data).unwrap();
            follower.on_event(e, SystemTime::now()).unwrap();
        }
        ms(t.elapsed())
    };
    // `k` devices not changed before (each would have added one overlay entry before).
    let mut change = |k: usize| -> Vec<DeviceRecord> {
        (0..k)
            .map(|_| {
                let mut r = record(next_device % n);
                r.status = DeviceStatus::Quarantined;
                next_device += 1;
                r
            })
            .collect()
    };
    // The overlay design folded when the overlay exceeded max(1024, base/16).
    let threshold = (n / 16).max(1024);
    let mut groups = Vec::new();
    let mut bulk = Vec::new();
    let mut overlay = 0usize;
    for (target, note) in [
        (0usize, "fresh snapshot"),
        (threshold / 6, ""),
        (threshold * 24 / 25, "just below the former fold threshold"),
    ] {
        if target > overlay {
            let t = apply(follower, change(target - overlay));
            bulk.push((target - overlay, t));
            overlay = target;
        }
        let ms: Vec<f64> = (0..100).map(|_| apply(follower, change(1))).collect();
        groups.push(DeltaGroup { overlay, ms, note });
        overlay += 100;
    }
    // Up to the threshold exactly, then the delta that folded.
    if threshold > overlay {
        let t = apply(follower, change(threshold - overlay));
        bulk.push((threshold - overlay, t));
    }
    settle();
    let rss = rss_mb();
    reset_peak();
    let fold_at = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu();
    let fold_ms = apply(follower, change(1));
    let fold_cpu_ms = ms(thread_cpu() - cpu);
    let fold_peak_mb = hwm_mb() - rss;
    let after: Vec<f64> = (0..100).map(|_| apply(follower, change(1))).collect();
    groups.push(DeltaGroup {
        overlay: 1,
        ms: after,
        note: "after the former fold point",
    });
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    Deltas {
        groups,
        bulk,
        fold_ms,
        fold_cpu_ms,
        fold_peak_mb,
        fold_at,
        reader: reader.join().unwrap(),
    }
}
