//! The inventory as the status source of enforcement points in the same process
//! (`portcullis serve` with `[ca]` and `[gateway]`, and `portcullis up`).
//!
//! A status snapshot is rebuilt from the store — the truth — whenever the inventory announces a
//! change, and once a second in case certificates were revoked through ACME `revokeCert`,
//! which is not an inventory event. Rebuilding whole is O(devices); the status feed (issue 5)
//! brings deltas for large fleets and remote enforcement points.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_policy::{DeviceRecord, StatusSnapshot, StatusStore};
use tokio::sync::broadcast::error::RecvError;

use crate::clock::{unix_seconds, Clock};
use crate::inventory::Inventory;
use crate::store::{SqliteStore, StoreError};

/// How often revocations made outside the inventory are looked for.
const RESYNC: Duration = Duration::from_secs(1);

/// The current inventory and the serials of revoked certificates that have not expired yet
/// (an expired certificate is refused for its expiry; listing it would only grow the set).
pub fn snapshot(store: &SqliteStore, now: SystemTime) -> Result<StatusSnapshot, StoreError> {
    let records = store.devices()?.into_iter().map(|d| DeviceRecord {
        id: d.id,
        status: d.status,
        tags: d.tags,
        owner: d.owner,
        platform: d.platform,
    });
    let revoked = store.revoked_serials(unix_seconds(now))?;
    let mut snapshot = StatusSnapshot::from_records(records, revoked);
    snapshot.produced_at = Some(now);
    Ok(snapshot)
}

/// Keeps `status` equal to the inventory until `shutdown` resolves. Store errors are logged
/// and the last good snapshot stays (enforcement points keep their last known state).
pub async fn follow(
    inventory: Arc<Inventory>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    status: Arc<StatusStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut events = inventory.subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_revoked: Option<BTreeSet<String>> = None;
    tokio::pin!(shutdown);
    loop {
        let forced = tokio::select! {
            _ = &mut shutdown => return,
            event = events.recv() => match event {
                Ok(e) => {
                    tracing::debug!(device = %e.device_id, to = %e.to, "inventory change");
                    true
                }
                // Missed events: the store has them all, a rebuild catches up.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "status follower lagged; rebuilding");
                    true
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => false,
        };
        let now = clock.now();
        let store2 = store.clone();
        let built = tokio::task::spawn_blocking(move || snapshot(&store2, now)).await;
        match built {
            Ok(Ok(next)) => {
                let revoked: BTreeSet<String> = next.revoked_serials.iter().cloned().collect();
                if forced || last_revoked.as_ref() != Some(&revoked) {
                    let devices = next.devices.len();
                    let generation = status.publish(next);
                    tracing::debug!(devices, generation, "status snapshot published");
                    last_revoked = Some(revoked);
                }
            }
            Ok(Err(e)) => tracing::error!("status snapshot from the CA store: {e}"),
            Err(e) => tracing::error!("status snapshot task: {e}"),
        }
    }
}
