//! The status feed (issue 5): how fast a status change reaches enforcement points, and what a
//! million-device snapshot costs to send, receive and swap in. Figures in benches/RESULTS.md.
//!
//! ```text
//! cargo bench --bench status_feed                               # both parts
//! cargo bench --bench status_feed -- --only propagation --changes 300
//! cargo bench --bench status_feed -- --only snapshot --devices 1000000 --frame 16384
//! ```
//!
//! - **propagation** (`feed/propagation.rs`): one CA process and three gateway processes (the
//!   release binary Cargo builds for the bench), one device quarantined and re-activated
//!   `--changes` times through the admin API; the delay until its live sessions (keep-alive +
//!   WebSocket on each gateway) are closed everywhere, and until a new connection is admitted
//!   everywhere again. Target: p99 ≤ 250 ms.
//! - **snapshot** (`feed/snapshot.rs`): in process, a `--devices` snapshot through the real
//!   wire path (hub → SSE text → `SseParser` → `FeedEvent::parse` → `Follower` → store),
//!   with a reader thread timing `store.current()` + `decide` meanwhile; memory from
//!   /proc/self/status; deltas at several levels of churn on the big snapshot. Targets: ≤ 1 s,
//!   ≤ 150 MB, no stall.
//!
//! OCSP responses/s, the third figure of the issue, is `cargo bench --bench ocsp`.

#[path = "../tests/common/mod.rs"]
mod common;
mod feed;
#[allow(dead_code)]
#[path = "harness/sys.rs"]
mod sys;

/// The binary's allocator, so that memory figures are the gateway's.
#[global_allocator]
static GLOBAL: portcullis_gateway::mimalloc::MiMalloc = portcullis_gateway::mimalloc::MiMalloc;

fn main() {
    let mut only: Option<String> = None;
    let mut follower_child = false;
    let mut prop = feed::propagation::Options {
        changes: 200,
        warmup: 5,
    };
    let mut snap = feed::snapshot::Options {
        devices: 1_000_000,
        frame: 16 * 1024,
        revoked: 20_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--only" => only = Some(value),
            "--changes" => prop.changes = value.parse().expect("--changes N"),
            "--warmup" => prop.warmup = value.parse().expect("--warmup N"),
            "--devices" => snap.devices = value.parse().expect("--devices N"),
            "--frame" => snap.frame = value.parse().expect("--frame BYTES"),
            "--revoked" => snap.revoked = value.parse().expect("--revoked N"),
            // Internal: the follower process of the snapshot part.
            "--follower-child" => {
                follower_child = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes --bench; nothing else is known.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other} (see the top of benches/status_feed.rs)"),
        }
        i += 2;
    }
    assert!(prop.changes >= 1 && snap.devices >= 1 && snap.frame >= 1);
    if follower_child {
        return feed::snapshot::child(snap.frame);
    }
    match only.as_deref() {
        None => {
            feed::propagation::run(&prop);
            feed::snapshot::run(&snap);
        }
        Some("propagation") => feed::propagation::run(&prop),
        Some("snapshot") => feed::snapshot::run(&snap),
        Some(other) => panic!("--only propagation|snapshot, not {other}"),
    }
}
