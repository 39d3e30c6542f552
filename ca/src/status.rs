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

use portcullis_policy::inventory::normalize_serial;
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
        let known = last_revoked.clone();
        // A tick reads only the revoked serials (small); the whole inventory is read again
        // only when something changed.
        let built = tokio::task::spawn_blocking(move || {
            if !forced {
                let revoked: BTreeSet<String> = store2
                    .revoked_serials(unix_seconds(now))?
                    .iter()
                    .filter_map(|s| normalize_serial(s))
                    .collect();
                if known.as_ref() == Some(&revoked) {
                    return Ok(None);
                }
            }
            snapshot(&store2, now).map(Some)
        })
        .await;
        match built {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(next))) => {
                last_revoked = Some(next.revoked_serials.iter().cloned().collect());
                let devices = next.devices.len();
                let generation = status.publish(next);
                tracing::debug!(devices, generation, "status snapshot published");
            }
            Ok(Err(e)) => tracing::error!("status snapshot from the CA store: {e}"),
            Err(e) => tracing::error!("status snapshot task: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::store::{AcmeStore, NewCert, NewDevice};
    use portcullis_config::DeviceStatus;

    fn device(id: &str) -> NewDevice {
        NewDevice {
            id: id.into(),
            hw_module_id: None,
            platform: Some("linux".into()),
            owner: None,
            tags: ["eng".to_string()].into(),
            status: DeviceStatus::Active,
            source: "test".into(),
        }
    }

    /// Polls `status` until `check` holds; the follower's own promise is "within a second".
    async fn until(status: &StatusStore, check: impl Fn(&StatusSnapshot) -> bool) -> bool {
        for _ in 0..40 {
            if check(&status.current()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_gateway_side_follows_status_changes_and_acme_revocations() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
        inventory
            .upsert(&device("laptop-1"), "test", "seed")
            .unwrap();
        let status = Arc::new(StatusStore::new(snapshot(&store, clock.now()).unwrap()));
        assert_eq!(
            status.current().device("laptop-1").map(|d| d.status),
            Some(DeviceStatus::Active)
        );
        let stop = stop_signal();
        let task = tokio::spawn(follow(
            inventory.clone(),
            store.clone(),
            clock.clone(),
            status.clone(),
            stop.1,
        ));

        inventory
            .set_status("laptop-1", DeviceStatus::Quarantined, "test", "lost")
            .unwrap();
        assert!(
            until(&status, |s| s.device("laptop-1").map(|d| d.status)
                == Some(DeviceStatus::Quarantined))
            .await,
            "a quarantine reaches the snapshot"
        );

        // A revocation that is not an inventory event (ACME revokeCert) shows up on a tick.
        let now = unix_seconds(clock.now());
        store
            .record_certificate(&NewCert {
                serial: "0abc",
                fingerprint: "00",
                der: b"x",
                chain_pem: "",
                not_before: now - 10,
                not_after: now + 3600,
                device_id: None,
            })
            .unwrap();
        assert!(store.revoke_certificate("0abc", 1, now).unwrap());
        assert!(
            until(&status, |s| s.revoked_serials.contains("0abc")).await,
            "the revoked serial reaches the snapshot"
        );
        let _ = stop.0.send(());
        task.await.unwrap();
    }

    fn stop_signal() -> (
        tokio::sync::oneshot::Sender<()>,
        impl std::future::Future<Output = ()>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }
}
