//! Turns what happens in the CA into feed deltas: an inventory event becomes the changed
//! device's record (read back from the store, the truth) plus the serials it revoked or
//! released; once a second the revoked serials are compared with the store, which catches
//! ACME `revokeCert` (not an inventory event) and certificates that expired off the list.
//! Events that arrive together are sent as one delta. A lagged event channel is answered
//! with a whole-store diff, so nothing is ever lost, only coalesced.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::inventory::normalize_serial;
use portcullis_policy::{Delta, DeviceRecord};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::hub::FeedHub;
use crate::clock::{unix_seconds, Clock};
use crate::inventory::{Inventory, InventoryEvent};
use crate::status::snapshot;
use crate::store::{SqliteStore, StoreError};

/// How often revocations made outside the inventory are looked for.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// Most inventory events folded into one delta.
const MAX_BATCH: usize = 512;

/// Keeps `hub` equal to the store until `shutdown` resolves. Store errors are logged and
/// retried at the next event or tick; subscribers keep the last state sent.
pub async fn produce(
    hub: Arc<FeedHub>,
    inventory: Arc<Inventory>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut events = inventory.subscribe();
    let mut tick = tokio::time::interval(REVOCATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let work = tokio::select! {
            _ = &mut shutdown => return,
            event = events.recv() => match event {
                Ok(first) => {
                    let mut batch = vec![first];
                    let mut lagged = false;
                    while batch.len() < MAX_BATCH {
                        match events.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(TryRecvError::Lagged(_)) => lagged = true,
                            Err(_) => break,
                        }
                    }
                    if lagged { Work::Everything } else { Work::Devices(batch) }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "status feed producer lagged; diffing the store");
                    Work::Everything
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => Work::Revocations,
        };
        let (hub2, store2, clock2) = (hub.clone(), store.clone(), clock.clone());
        // Published on the blocking thread too: applying a delta of many devices copies up
        // to the whole table (`FeedEvent::is_heavy`), not for an async worker.
        let built = tokio::task::spawn_blocking(move || {
            let delta = delta_for(&hub2, &store2, &*clock2, work)?;
            Ok::<_, StoreError>(delta.map(|delta| {
                let cause = delta.cause.clone();
                (hub2.publish(delta, clock2.now()), cause)
            }))
        })
        .await;
        match built {
            Ok(Ok(Some((generation, cause)))) => {
                tracing::debug!(
                    generation,
                    cause = cause.as_deref().unwrap_or(""),
                    "status feed delta"
                );
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("status feed: reading the CA store: {e}"),
            Err(e) => tracing::error!("status feed: delta task: {e}"),
        }
    }
}

enum Work {
    Devices(Vec<InventoryEvent>),
    Revocations,
    Everything,
}

/// The delta from the hub's current state to the store's, for the part `work` names.
fn delta_for(
    hub: &FeedHub,
    store: &SqliteStore,
    clock: &dyn Clock,
    work: Work,
) -> Result<Option<Delta>, StoreError> {
    let now = clock.now();
    let current = hub.current();
    let mut delta = match work {
        Work::Everything => {
            let mut d = current.diff(&snapshot(store, now)?);
            d.cause = Some("inventory resynchronised".into());
            d
        }
        Work::Revocations | Work::Devices(_) => {
            let revoked: HashSet<String> = store
                .revoked_serials(unix_seconds(now))?
                .iter()
                .filter_map(|s| normalize_serial(s))
                .collect();
            let have = current.revoked_serials();
            let mut d = Delta {
                revoke: revoked.difference(have).cloned().collect(),
                unrevoke: have.difference(&revoked).cloned().collect(),
                ..Delta::default()
            };
            if let Work::Devices(events) = &work {
                let ids: BTreeSet<&str> = events.iter().map(|e| e.device_id.as_str()).collect();
                for id in ids {
                    match store.device(id)? {
                        Some(dev) => {
                            let record = DeviceRecord {
                                id: dev.id,
                                status: dev.status,
                                tags: dev.tags,
                                owner: dev.owner,
                                platform: dev.platform,
                            };
                            if current.device(id).is_none_or(|have| have != record) {
                                d.upsert.push(record);
                            }
                        }
                        None if current.device(id).is_some() => d.remove.push(id.to_owned()),
                        None => {}
                    }
                }
                d.cause = Some(describe(events));
            } else if !d.revoke.is_empty() {
                d.cause = Some(format!("certificate revoked: {}", d.revoke.join(", ")));
            }
            d
        }
    };
    if delta.is_empty() {
        return Ok(None);
    }
    delta.revoke.sort();
    delta.unrevoke.sort();
    Ok(Some(delta))
}

/// "SN-1 active → quarantined by alice: lost laptop" (and a count when several).
fn describe(events: &[InventoryEvent]) -> String {
    let one = |e: &InventoryEvent| {
        let from = e.from.map_or("new".to_string(), |s| s.to_string());
        format!(
            "{} {from} → {} by {}: {}",
            e.device_id, e.to, e.actor, e.reason
        )
    };
    match events {
        [e] => one(e),
        [e, rest @ ..] => format!("{} (and {} more changes)", one(e), rest.len()),
        [] => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::store::{AcmeStore, NewCert, NewDevice};
    use portcullis_config::DeviceStatus;
    use portcullis_policy::StatusStore;

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

    /// Polls `status` until `check` holds; the feed's promise is "within a second".
    async fn until(
        status: &StatusStore,
        check: impl Fn(&portcullis_policy::StatusSnapshot) -> bool,
    ) -> bool {
        for _ in 0..40 {
            if check(&status.current()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn inventory_changes_and_acme_revocations_reach_a_follower() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
        inventory
            .upsert(&device("laptop-1"), "test", "seed")
            .unwrap();
        let hub = Arc::new(FeedHub::new(
            snapshot(&store, clock.now()).unwrap(),
            Duration::from_millis(200),
            clock.now(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(produce(
            hub.clone(),
            inventory.clone(),
            store.clone(),
            clock.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let status = Arc::new(StatusStore::new(Default::default()));
        let follow = tokio::spawn(super::super::follow_local(
            hub.clone(),
            status.clone(),
            clock.clone(),
            std::future::pending(),
        ));
        assert!(
            until(&status, |s| s.device("laptop-1").is_some()).await,
            "the snapshot arrives"
        );

        inventory
            .set_status("laptop-1", DeviceStatus::Quarantined, "alice", "lost")
            .unwrap();
        assert!(
            until(&status, |s| s.device("laptop-1").map(|d| d.status())
                == Some(DeviceStatus::Quarantined))
            .await,
            "a quarantine reaches the follower"
        );
        let cause = status.current().cause.clone().unwrap();
        assert!(
            cause.contains("laptop-1 active → quarantined by alice: lost"),
            "{cause}"
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
            until(&status, |s| s.is_serial_revoked("0abc")).await,
            "the revoked serial reaches the follower"
        );
        let _ = stop.send(());
        task.await.unwrap();
        follow.abort();
    }
}
