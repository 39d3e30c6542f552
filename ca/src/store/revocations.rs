//! Revoked certificates, as enforcement points need them.

use super::{SqliteStore, StoreError};

impl SqliteStore {
    /// Lowercase hex serials of revoked certificates with `not_after` after `now`.
    pub fn revoked_serials(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?1",
        )?;
        let rows = stmt.query_map([now], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
