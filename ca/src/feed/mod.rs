//! The status feed (issue 5): inventory and revocation state pushed from the CA to every
//! enforcement point, as Server-Sent Events over mTLS with node certificates.
//!
//! - [`hub`]: the current snapshot, the log of recent deltas, subscriptions.
//! - [`producer`]: inventory events and revocations → deltas.
//! - [`sse`]: `GET /feed/v2/status` on the CA's HTTPS listener.
//! - [`node`]: the certificates enforcement points authenticate with.
//!
//! The wire events and the follower that applies them are `portcullis_policy::feed`; an
//! enforcement point in the CA's own process follows the hub in memory with the same
//! follower ([`follow_local`]), so the two paths cannot disagree.

pub mod hub;
pub mod node;
pub mod producer;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::{Follower, StatusStore};

pub use hub::FeedHub;

use crate::clock::Clock;

/// How often subscribers hear from the feed when nothing changes; their `max_staleness`
/// must be longer (the config check asks for at least 1 s).
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Keeps `status` equal to the hub, in memory, until `shutdown` resolves.
pub async fn follow_local(
    hub: Arc<FeedHub>,
    status: Arc<StatusStore>,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut follower = Follower::new(status);
    tokio::pin!(shutdown);
    loop {
        let mut events = hub.events(follower.position());
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => return,
                e = events.recv() => e,
            };
            let Some(event) = event else { break };
            // A delta of many devices copies much of the table: let this worker's other
            // tasks move meanwhile (see `FeedEvent::is_heavy`).
            let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            let applied = if event.is_heavy() && multi_thread {
                tokio::task::block_in_place(|| follower.on_event(event, clock.now()))
            } else {
                follower.on_event(event, clock.now())
            };
            if let Err(e) = applied {
                tracing::warn!("status feed (in process): {e}");
                break;
            }
            portcullis_policy::feed::retire_later(follower.take_retired(), |free| {
                tokio::task::spawn_blocking(free);
            });
        }
        // The pump ended (this follower lagged): resume from the log.
        follower.disconnected();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
