//! The status snapshot of the CA's store: the inventory and the revoked serials, read whole.
//! The status feed starts from it and falls back to it when it cannot tell what changed
//! (`feed::producer`).

use std::time::SystemTime;

use portcullis_policy::{DeviceRecord, StatusSnapshot};

use crate::clock::unix_seconds;
use crate::store::{SqliteStore, StoreError};

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
