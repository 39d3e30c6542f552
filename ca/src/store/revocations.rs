//! Revoked certificates, as enforcement points, the CRL and the OCSP responder need them.

use rusqlite::OptionalExtension;

use super::{SqliteStore, StoreError};

/// One revoked certificate, as a CRL entry (RFC 5280 §5.1.2.6) needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Lowercase hex, the `certificates` key.
    pub serial: String,
    pub revoked_at: i64,
    /// RFC 5280 §5.3.1 CRLReason; `None` when none was recorded.
    pub reason: Option<i64>,
}

/// What the OCSP responder needs to answer for one serial (RFC 6960 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    pub not_after: i64,
    pub revoked_at: Option<i64>,
    pub reason: Option<i64>,
}

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

    /// Revoked certificates that have not expired at `now`, ordered by serial. An expired
    /// certificate may leave the CRL (RFC 5280 §3.3: entries are kept until the certificate
    /// expires), which keeps the CRL as small as the revocations that still matter.
    pub fn revoked_certificates(&self, now: i64) -> Result<Vec<RevokedCert>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY serial",
        )?;
        let rows = stmt.query_map([now], |r| {
            Ok(RevokedCert {
                serial: r.get(0)?,
                revoked_at: r.get(1)?,
                reason: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The revocation state of one certificate, `None` when this CA never issued `serial`
    /// (lowercase hex). A primary-key lookup: the OCSP responder calls it per request.
    pub fn certificate_status(&self, serial: &str) -> Result<Option<CertStatus>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT not_after, revoked_at, revocation_reason FROM certificates WHERE serial = ?1",
        )?;
        Ok(stmt
            .query_row([serial], |r| {
                Ok(CertStatus {
                    not_after: r.get(0)?,
                    revoked_at: r.get(1)?,
                    reason: r.get(2)?,
                })
            })
            .optional()?)
    }
}
