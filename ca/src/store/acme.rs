//! ACME state: accounts, orders, authorizations, challenges and certificates.
//!
//! [`AcmeStore`] is the seam the server talks to (PostgreSQL comes later behind the same trait);
//! [`SqliteStore`] implements it. Every state transition is a conditional UPDATE inside a
//! transaction (`… WHERE status = 'ready'`), so two racing requests cannot both move an object,
//! and every multi-row change (challenge → authorization → order; certificate + order) commits
//! whole or not at all.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde_json::Value;

use super::sqlite::{SqliteStore, StoreError};
use crate::acme::jwk::PublicJwk;
use crate::acme::model::{AccountStatus, AuthzStatus, ChallengeStatus, Identifier, OrderStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: i64,
    pub jwk: PublicJwk,
    pub thumbprint: String,
    pub status: AccountStatus,
    pub contact: Vec<String>,
    pub tos_agreed: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRecord {
    pub id: i64,
    pub account_id: i64,
    pub status: OrderStatus,
    pub identifiers: Vec<Identifier>,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub expires: i64,
    /// A problem document (RFC 7807) when the order is invalid.
    pub error: Option<Value>,
    pub cert_serial: Option<String>,
    /// The CSR accepted by finalize (DER).
    pub csr: Option<Vec<u8>>,
    pub created_at: i64,
    pub authz_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthzRecord {
    pub id: i64,
    pub order_id: i64,
    pub account_id: i64,
    pub identifier: Identifier,
    pub status: AuthzStatus,
    pub expires: i64,
    pub challenges: Vec<ChallengeRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeRecord {
    pub id: i64,
    pub authz_id: i64,
    pub kind: String,
    pub token: String,
    pub status: ChallengeStatus,
    pub validated_at: Option<i64>,
    pub error: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: String,
    pub order_id: Option<i64>,
    pub account_id: Option<i64>,
    pub fingerprint: String,
    pub device_id: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub chain_pem: String,
    pub der: Option<Vec<u8>>,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<i64>,
}

/// What a verified `device-attest-01` challenge proved, recorded on its authorization
/// (draft-ietf-acme-device-attest §5; finalize compares the CSR key with `spki_der`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttestation {
    /// The inventory id of the device (the identifier value without assigner / type OID).
    pub device_id: String,
    /// The attested key, SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// The attObj `fmt` that verified.
    pub format: String,
    /// Facts from the attestation (platform, model, firmware, ...), a JSON object.
    pub details: Value,
    pub at: i64,
}

/// A new order with, per identifier, the challenges (type, token) its authorization offers.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub account_id: i64,
    pub identifiers: Vec<Identifier>,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub expires: i64,
    pub authz_expires: i64,
    pub challenges: Vec<Vec<(String, String)>>,
}

/// A certificate to record with the order it finalizes.
#[derive(Debug, Clone, Copy)]
pub struct NewCert<'a> {
    pub serial: &'a str,
    pub fingerprint: &'a str,
    pub der: &'a [u8],
    pub chain_pem: &'a str,
    pub not_before: i64,
    pub not_after: i64,
    pub device_id: Option<&'a str>,
}

/// The storage the ACME server needs. Methods that read orders or authorizations take `now` and
/// apply expiry (RFC 8555 §7.1.6) before answering, so an expired object is never reported as
/// pending or ready.
pub trait AcmeStore: Send + Sync + 'static {
    fn account(&self, id: i64) -> Result<Option<AccountRecord>, StoreError>;
    fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<AccountRecord>, StoreError>;
    /// Creates the account, or returns the existing one for the same key (`false`).
    fn create_account(
        &self,
        jwk: &PublicJwk,
        contact: &[String],
        tos_agreed: bool,
        eab_kid: Option<&str>,
        now: i64,
    ) -> Result<(AccountRecord, bool), StoreError>;
    fn update_contact(&self, id: i64, contact: &[String]) -> Result<AccountRecord, StoreError>;
    /// Deactivates the account and cancels what it had pending (RFC 8555 §7.3.6).
    fn deactivate_account(&self, id: i64) -> Result<AccountRecord, StoreError>;
    /// Replaces the account key; `Err(other_id)` inside when another account holds the key.
    fn change_key(
        &self,
        id: i64,
        new_key: &PublicJwk,
    ) -> Result<Result<AccountRecord, i64>, StoreError>;

    fn create_order(&self, order: &NewOrder, now: i64) -> Result<OrderRecord, StoreError>;
    fn order(&self, id: i64, now: i64) -> Result<Option<OrderRecord>, StoreError>;
    fn account_orders(&self, account_id: i64) -> Result<Vec<i64>, StoreError>;
    fn authz(&self, id: i64, now: i64) -> Result<Option<AuthzRecord>, StoreError>;
    /// pending/valid → deactivated; the order becomes invalid (§7.5.2, §7.1.6).
    fn deactivate_authz(&self, id: i64, now: i64) -> Result<Option<AuthzRecord>, StoreError>;
    fn challenge(&self, id: i64) -> Result<Option<ChallengeRecord>, StoreError>;
    /// pending → processing, only while its authorization is pending. False if it was not.
    fn start_challenge(&self, id: i64, now: i64) -> Result<bool, StoreError>;
    /// processing → valid | invalid, carried to the authorization and the order in one
    /// transaction. `Err(problem)` is the RFC 7807 document of the failure.
    fn finish_challenge(
        &self,
        id: i64,
        outcome: Result<(), Value>,
        now: i64,
    ) -> Result<(), StoreError>;
    fn processing_challenges(&self) -> Result<Vec<i64>, StoreError>;
    /// Records `attestation` on the authorization of the challenge with `token`, while that
    /// challenge is `processing` (being validated). False if it was not.
    fn record_attestation(
        &self,
        token: &str,
        attestation: &DeviceAttestation,
    ) -> Result<bool, StoreError>;
    /// Each authorization of the order with its identifier and recorded attestation, if any.
    fn order_attestations(
        &self,
        order_id: i64,
    ) -> Result<Vec<(Identifier, Option<DeviceAttestation>)>, StoreError>;

    /// ready → processing with the CSR stored; false if the order was not ready.
    fn begin_finalize(&self, order_id: i64, csr_der: &[u8], now: i64) -> Result<bool, StoreError>;
    /// Inserts the certificate and marks the order valid with its serial, in one transaction.
    /// With a `device_id`, the device must be `active` in that same transaction
    /// ([`StoreError::DeviceNotActive`] otherwise): a status change commits either before
    /// (refused here) or after (and then revokes this row).
    fn complete_issuance(&self, order_id: i64, cert: &NewCert<'_>) -> Result<(), StoreError>;
    /// processing → invalid with `problem`.
    fn fail_order(&self, order_id: i64, problem: &Value) -> Result<(), StoreError>;
    /// Orders left in `processing` (by a crash); recovery finishes them.
    fn processing_orders(&self) -> Result<Vec<i64>, StoreError>;

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;
    /// Records a certificate issued outside an order (the CA's own TLS certificate), so that
    /// every certificate the CA ever signed has its row.
    fn record_certificate(&self, cert: &NewCert<'_>) -> Result<(), StoreError>;
    /// Marks a certificate revoked; false if it already was.
    fn revoke_certificate(&self, serial: &str, reason: i64, now: i64) -> Result<bool, StoreError>;
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn conv<E: std::error::Error + Send + Sync + 'static>(e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn parse_status<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| conv(StoreErrorMsg(e)))
}

#[derive(Debug)]
struct StoreErrorMsg(String);
impl std::fmt::Display for StoreErrorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StoreErrorMsg {}

fn json_opt(s: Option<String>) -> rusqlite::Result<Option<Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(conv))
        .transpose()
}

const ACCOUNT_COLUMNS: &str = "id, jwk, thumbprint, status, contact, tos_agreed, created_at";

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<AccountRecord> {
    let jwk: String = r.get(1)?;
    let jwk: Value = serde_json::from_str(&jwk).map_err(conv)?;
    let contact: String = r.get(4)?;
    Ok(AccountRecord {
        id: r.get(0)?,
        jwk: PublicJwk::from_json(&jwk).map_err(conv)?,
        thumbprint: r.get(2)?,
        status: parse_status(r.get(3)?)?,
        contact: serde_json::from_str(&contact).map_err(conv)?,
        tos_agreed: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const ORDER_COLUMNS: &str = "id, account_id, status, identifiers, not_before, not_after, expires, error, cert_serial, csr, created_at";

fn order_from_row(r: &Row<'_>) -> rusqlite::Result<OrderRecord> {
    let ids: String = r.get(3)?;
    Ok(OrderRecord {
        id: r.get(0)?,
        account_id: r.get(1)?,
        status: parse_status(r.get(2)?)?,
        identifiers: serde_json::from_str(&ids).map_err(conv)?,
        not_before: r.get(4)?,
        not_after: r.get(5)?,
        expires: r.get(6)?,
        error: json_opt(r.get(7)?)?,
        cert_serial: r.get(8)?,
        csr: r.get(9)?,
        created_at: r.get(10)?,
        authz_ids: Vec::new(),
    })
}

const CHALLENGE_COLUMNS: &str = "id, authz_id, type, token, status, validated_at, error";

fn challenge_from_row(r: &Row<'_>) -> rusqlite::Result<ChallengeRecord> {
    Ok(ChallengeRecord {
        id: r.get(0)?,
        authz_id: r.get(1)?,
        kind: r.get(2)?,
        token: r.get(3)?,
        status: parse_status(r.get(4)?)?,
        validated_at: r.get(5)?,
        error: json_opt(r.get(6)?)?,
    })
}

const CERT_COLUMNS: &str = "serial, order_id, account_id, fingerprint, device_id, not_before, not_after, chain_pem, der, revoked_at, revocation_reason";

fn cert_from_row(r: &Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: r.get(0)?,
        order_id: r.get(1)?,
        account_id: r.get(2)?,
        fingerprint: r.get(3)?,
        device_id: r.get(4)?,
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        chain_pem: r.get(7)?,
        der: r.get(8)?,
        revoked_at: r.get(9)?,
        revocation_reason: r.get(10)?,
    })
}

fn load_account(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<AccountRecord>> {
    tx.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"),
        [id],
        account_from_row,
    )
    .optional()
}

fn load_order(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<OrderRecord>> {
    let Some(mut order) = tx
        .query_row(
            &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"),
            [id],
            order_from_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = tx.prepare("SELECT id FROM authorizations WHERE order_id = ?1 ORDER BY id")?;
    order.authz_ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(order))
}

fn load_authz(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<AuthzRecord>> {
    let Some(mut authz) = tx
        .query_row(
            "SELECT id, order_id, account_id, id_type, id_value, status, expires FROM authorizations WHERE id = ?1",
            [id],
            |r| {
                Ok(AuthzRecord {
                    id: r.get(0)?,
                    order_id: r.get(1)?,
                    account_id: r.get(2)?,
                    identifier: Identifier {
                        kind: r.get(3)?,
                        value: r.get(4)?,
                    },
                    status: parse_status(r.get(5)?)?,
                    expires: r.get(6)?,
                    challenges: Vec::new(),
                })
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = tx.prepare(&format!(
        "SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE authz_id = ?1 ORDER BY id"
    ))?;
    authz.challenges = stmt
        .query_map([id], challenge_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(Some(authz))
}

/// Applies RFC 8555 §7.1.6 expiry to an order and its authorizations: a pending or valid
/// authorization past `expires` is `expired`; a pending or ready order past `expires`, or with
/// an authorization that can no longer become valid, is `invalid`.
fn expire_order(tx: &Transaction<'_>, order_id: i64, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE authorizations SET status = 'expired'
         WHERE order_id = ?1 AND status IN ('pending', 'valid') AND expires <= ?2",
        params![order_id, now],
    )?;
    let expired = serde_json::json!({
        "type": "urn:ietf:params:acme:error:malformed",
        "detail": "the order expired, or one of its authorizations can no longer become valid",
        "status": 400,
    })
    .to_string();
    tx.execute(
        "UPDATE orders SET status = 'invalid', error = COALESCE(error, ?3)
         WHERE id = ?1 AND status IN ('pending', 'ready') AND (expires <= ?2 OR EXISTS (
             SELECT 1 FROM authorizations WHERE order_id = ?1
             AND status IN ('invalid', 'expired', 'deactivated', 'revoked')))",
        params![order_id, now, expired],
    )?;
    Ok(())
}

impl AcmeStore for SqliteStore {
    fn account(&self, id: i64) -> Result<Option<AccountRecord>, StoreError> {
        Ok(load_account(&self.conn(), id)?)
    }

    fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE thumbprint = ?1"),
                [thumbprint],
                account_from_row,
            )
            .optional()?)
    }

    fn create_account(
        &self,
        jwk: &PublicJwk,
        contact: &[String],
        tos_agreed: bool,
        eab_kid: Option<&str>,
        now: i64,
    ) -> Result<(AccountRecord, bool), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let thumbprint = jwk.thumbprint();
        let contact = serde_json::to_string(contact).map_err(corrupt)?;
        // ON CONFLICT: two racing newAccount requests with one key yield one account.
        let inserted = tx
            .execute(
                "INSERT INTO accounts (thumbprint, jwk, status, contact, tos_agreed, eab_kid, created_at)
                 VALUES (?1, ?2, 'valid', ?3, ?4, ?5, ?6) ON CONFLICT(thumbprint) DO NOTHING",
                params![thumbprint, jwk.thumbprint_json(), contact, tos_agreed, eab_kid, now],
            )
            .map_err(|e| match e {
                // Only the eab_kid index can still conflict: the thumbprint one is handled.
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict("the external account key is already bound".into())
                }
                e => e.into(),
            })?;
        let account = tx.query_row(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE thumbprint = ?1"),
            [&thumbprint],
            account_from_row,
        )?;
        tx.commit()?;
        Ok((account, inserted == 1))
    }

    fn update_contact(&self, id: i64, contact: &[String]) -> Result<AccountRecord, StoreError> {
        let conn = self.conn();
        let contact = serde_json::to_string(contact).map_err(corrupt)?;
        conn.execute(
            "UPDATE accounts SET contact = ?2 WHERE id = ?1",
            params![id, contact],
        )?;
        load_account(&conn, id)?.ok_or(StoreError::NotFound("account"))
    }

    fn deactivate_account(&self, id: i64) -> Result<AccountRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE accounts SET status = 'deactivated' WHERE id = ?1 AND status = 'valid'",
            [id],
        )?;
        tx.execute(
            "UPDATE authorizations SET status = 'deactivated' WHERE account_id = ?1 AND status = 'pending'",
            [id],
        )?;
        tx.execute(
            "UPDATE orders SET status = 'invalid', error = ?2 WHERE account_id = ?1 AND status IN ('pending', 'ready')",
            params![
                id,
                serde_json::json!({
                    "type": "urn:ietf:params:acme:error:unauthorized",
                    "detail": "the account was deactivated",
                    "status": 403,
                })
                .to_string()
            ],
        )?;
        let account = load_account(&tx, id)?.ok_or(StoreError::NotFound("account"))?;
        tx.commit()?;
        Ok(account)
    }

    fn change_key(
        &self,
        id: i64,
        new_key: &PublicJwk,
    ) -> Result<Result<AccountRecord, i64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let thumbprint = new_key.thumbprint();
        let holder: Option<i64> = tx
            .query_row(
                "SELECT id FROM accounts WHERE thumbprint = ?1",
                [&thumbprint],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = holder {
            return Ok(Err(other));
        }
        tx.execute(
            "UPDATE accounts SET jwk = ?2, thumbprint = ?3 WHERE id = ?1",
            params![id, new_key.thumbprint_json(), thumbprint],
        )?;
        let account = load_account(&tx, id)?.ok_or(StoreError::NotFound("account"))?;
        tx.commit()?;
        Ok(Ok(account))
    }

    fn create_order(&self, order: &NewOrder, now: i64) -> Result<OrderRecord, StoreError> {
        if order.challenges.len() != order.identifiers.len() {
            return Err(StoreError::Conflict(
                "one challenge list per identifier is required".into(),
            ));
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids = serde_json::to_string(&order.identifiers).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO orders (account_id, status, identifiers, not_before, not_after, expires, created_at)
             VALUES (?1, 'pending', ?2, ?3, ?4, ?5, ?6)",
            params![order.account_id, ids, order.not_before, order.not_after, order.expires, now],
        )?;
        let order_id = tx.last_insert_rowid();
        for (ident, challenges) in order.identifiers.iter().zip(&order.challenges) {
            tx.execute(
                "INSERT INTO authorizations (order_id, account_id, id_type, id_value, status, expires)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                params![order_id, order.account_id, ident.kind, ident.value, order.authz_expires],
            )?;
            let authz_id = tx.last_insert_rowid();
            for (kind, token) in challenges {
                tx.execute(
                    "INSERT INTO challenges (authz_id, type, token, status) VALUES (?1, ?2, ?3, 'pending')",
                    params![authz_id, kind, token],
                )?;
            }
        }
        let record = load_order(&tx, order_id)?.ok_or(StoreError::NotFound("order"))?;
        tx.commit()?;
        Ok(record)
    }

    fn order(&self, id: i64, now: i64) -> Result<Option<OrderRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        expire_order(&tx, id, now)?;
        let order = load_order(&tx, id)?;
        tx.commit()?;
        Ok(order)
    }

    fn account_orders(&self, account_id: i64) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM orders WHERE account_id = ?1 ORDER BY id")?;
        let ids = stmt
            .query_map([account_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn authz(&self, id: i64, now: i64) -> Result<Option<AuthzRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let order_id: Option<i64> = tx
            .query_row(
                "SELECT order_id FROM authorizations WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(order_id) = order_id else {
            return Ok(None);
        };
        expire_order(&tx, order_id, now)?;
        let authz = load_authz(&tx, id)?;
        tx.commit()?;
        Ok(authz)
    }

    fn deactivate_authz(&self, id: i64, now: i64) -> Result<Option<AuthzRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(authz) = load_authz(&tx, id)? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE authorizations SET status = 'deactivated' WHERE id = ?1 AND status IN ('pending', 'valid')",
            [id],
        )?;
        expire_order(&tx, authz.order_id, now)?;
        let authz = load_authz(&tx, id)?;
        tx.commit()?;
        Ok(authz)
    }

    fn challenge(&self, id: i64) -> Result<Option<ChallengeRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE id = ?1"),
                [id],
                challenge_from_row,
            )
            .optional()?)
    }

    fn start_challenge(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let order_id: Option<i64> = tx
            .query_row(
                "SELECT a.order_id FROM challenges c JOIN authorizations a ON a.id = c.authz_id WHERE c.id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(order_id) = order_id else {
            return Ok(false);
        };
        expire_order(&tx, order_id, now)?;
        // Only one challenge of an authorization is attempted at a time, and only while the
        // authorization is pending (RFC 8555 §7.5.1).
        let n = tx.execute(
            "UPDATE challenges SET status = 'processing'
             WHERE id = ?1 AND status = 'pending'
             AND authz_id IN (SELECT id FROM authorizations WHERE status = 'pending')
             AND NOT EXISTS (SELECT 1 FROM challenges c2 WHERE c2.authz_id = challenges.authz_id AND c2.status = 'processing')",
            [id],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn finish_challenge(
        &self,
        id: i64,
        outcome: Result<(), Value>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some((authz_id, order_id)): Option<(i64, i64)> = tx
            .query_row(
                "SELECT a.id, a.order_id FROM challenges c JOIN authorizations a ON a.id = c.authz_id WHERE c.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
        else {
            return Err(StoreError::NotFound("challenge"));
        };
        match outcome {
            Ok(()) => {
                let n = tx.execute(
                    "UPDATE challenges SET status = 'valid', validated_at = ?2 WHERE id = ?1 AND status = 'processing'",
                    params![id, now],
                )?;
                if n == 1 {
                    tx.execute(
                        "UPDATE authorizations SET status = 'valid' WHERE id = ?1 AND status = 'pending' AND expires > ?2",
                        params![authz_id, now],
                    )?;
                    // All authorizations valid: the order is ready for finalization (§7.1.6).
                    tx.execute(
                        "UPDATE orders SET status = 'ready' WHERE id = ?1 AND status = 'pending' AND expires > ?2
                         AND NOT EXISTS (SELECT 1 FROM authorizations WHERE order_id = ?1 AND status != 'valid')",
                        params![order_id, now],
                    )?;
                }
            }
            Err(problem) => {
                let problem = problem.to_string();
                let n = tx.execute(
                    "UPDATE challenges SET status = 'invalid', error = ?2 WHERE id = ?1 AND status = 'processing'",
                    params![id, problem],
                )?;
                if n == 1 {
                    tx.execute(
                        "UPDATE authorizations SET status = 'invalid' WHERE id = ?1 AND status = 'pending'",
                        [authz_id],
                    )?;
                    tx.execute(
                        "UPDATE orders SET status = 'invalid', error = ?2 WHERE id = ?1 AND status IN ('pending', 'ready')",
                        params![order_id, problem],
                    )?;
                }
            }
        }
        expire_order(&tx, order_id, now)?;
        tx.commit()?;
        Ok(())
    }

    fn processing_challenges(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM challenges WHERE status = 'processing'")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn record_attestation(
        &self,
        token: &str,
        attestation: &DeviceAttestation,
    ) -> Result<bool, StoreError> {
        let details = serde_json::to_string(&attestation.details).map_err(corrupt)?;
        let n = self.conn().execute(
            "UPDATE authorizations SET device_id = ?2, attested_spki = ?3, attested_format = ?4,
                 attested_details = ?5, attested_at = ?6
             WHERE status = 'pending' AND id = (SELECT authz_id FROM challenges
                 WHERE token = ?1 AND status = 'processing')",
            params![
                token,
                attestation.device_id,
                attestation.spki_der,
                attestation.format,
                details,
                attestation.at
            ],
        )?;
        Ok(n == 1)
    }

    fn order_attestations(
        &self,
        order_id: i64,
    ) -> Result<Vec<(Identifier, Option<DeviceAttestation>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id_type, id_value, device_id, attested_spki, attested_format, attested_details,
                    attested_at
             FROM authorizations WHERE order_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([order_id], |r| {
            let identifier = Identifier {
                kind: r.get(0)?,
                value: r.get(1)?,
            };
            let device_id: Option<String> = r.get(2)?;
            let spki: Option<Vec<u8>> = r.get(3)?;
            let format: Option<String> = r.get(4)?;
            let details = json_opt(r.get(5)?)?;
            let at: Option<i64> = r.get(6)?;
            let attestation = match (device_id, spki, format, at) {
                (Some(device_id), Some(spki_der), Some(format), Some(at)) => {
                    Some(DeviceAttestation {
                        device_id,
                        spki_der,
                        format,
                        details: details.unwrap_or(Value::Null),
                        at,
                    })
                }
                _ => None,
            };
            Ok((identifier, attestation))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn begin_finalize(&self, order_id: i64, csr_der: &[u8], now: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        expire_order(&tx, order_id, now)?;
        let n = tx.execute(
            "UPDATE orders SET status = 'processing', csr = ?2 WHERE id = ?1 AND status = 'ready'",
            params![order_id, csr_der],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn complete_issuance(&self, order_id: i64, cert: &NewCert<'_>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let account_id: Option<i64> = tx
            .query_row(
                "SELECT account_id FROM orders WHERE id = ?1",
                [order_id],
                |r| r.get(0),
            )
            .optional()?;
        let account_id = account_id.ok_or(StoreError::NotFound("order"))?;
        if let Some(device) = cert.device_id {
            let status: Option<String> = tx
                .query_row("SELECT status FROM devices WHERE id = ?1", [device], |r| {
                    r.get(0)
                })
                .optional()?;
            if status.as_deref() != Some("active") {
                return Err(StoreError::DeviceNotActive {
                    device: device.to_string(),
                    status: status.unwrap_or_else(|| "unknown to the inventory".into()),
                });
            }
        }
        // The serial column is the primary key: a (vanishingly unlikely) repeated serial fails
        // here and the whole issuance rolls back instead of recording a second certificate.
        tx.execute(
            "INSERT INTO certificates (serial, order_id, account_id, fingerprint, device_id, not_before, not_after, chain_pem, der)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                cert.serial,
                order_id,
                account_id,
                cert.fingerprint,
                cert.device_id,
                cert.not_before,
                cert.not_after,
                cert.chain_pem,
                cert.der
            ],
        )?;
        let n = tx.execute(
            "UPDATE orders SET status = 'valid', cert_serial = ?2 WHERE id = ?1 AND status = 'processing'",
            params![order_id, cert.serial],
        )?;
        if n != 1 {
            // Dropping `tx` rolls the certificate row back with it.
            return Err(StoreError::Conflict(format!(
                "order {order_id} is no longer processing"
            )));
        }
        tx.commit()?;
        Ok(())
    }

    fn fail_order(&self, order_id: i64, problem: &Value) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE orders SET status = 'invalid', error = ?2 WHERE id = ?1 AND status = 'processing'",
            params![order_id, problem.to_string()],
        )?;
        Ok(())
    }

    fn processing_orders(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM orders WHERE status = 'processing' ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"),
                [serial],
                cert_from_row,
            )
            .optional()?)
    }

    fn record_certificate(&self, cert: &NewCert<'_>) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO certificates (serial, fingerprint, device_id, not_before, not_after, chain_pem, der)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                cert.serial,
                cert.fingerprint,
                cert.device_id,
                cert.not_before,
                cert.not_after,
                cert.chain_pem,
                cert.der
            ],
        )?;
        Ok(())
    }

    fn revoke_certificate(&self, serial: &str, reason: i64, now: i64) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3 WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, now, reason],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::DeviceStatus;
    use serde_json::json;

    fn key(b: u8) -> PublicJwk {
        PublicJwk::Ed25519 { x: vec![b; 32] }
    }

    fn setup() -> (SqliteStore, AccountRecord, OrderRecord) {
        let store = SqliteStore::open_in_memory().unwrap();
        let (acct, created) = store
            .create_account(&key(1), &["mailto:a@example.com".into()], true, None, 10)
            .unwrap();
        assert!(created);
        let order = store
            .create_order(
                &NewOrder {
                    account_id: acct.id,
                    identifiers: vec![Identifier::dns("a.example"), Identifier::dns("b.example")],
                    not_before: None,
                    not_after: None,
                    expires: 1000,
                    authz_expires: 1000,
                    challenges: vec![
                        vec![("http-01".into(), "tok-a".into())],
                        vec![("http-01".into(), "tok-b".into())],
                    ],
                },
                10,
            )
            .unwrap();
        (store, acct, order)
    }

    fn challenge_of(store: &SqliteStore, authz_id: i64) -> i64 {
        store.authz(authz_id, 20).unwrap().unwrap().challenges[0].id
    }

    fn cert<'a>(serial: &'a str, fp: &'a str) -> NewCert<'a> {
        NewCert {
            serial,
            fingerprint: fp,
            der: b"der",
            chain_pem: "pem",
            not_before: 0,
            not_after: 100,
            device_id: None,
        }
    }

    #[test]
    fn one_account_per_key() {
        let (store, acct, _) = setup();
        let (again, created) = store.create_account(&key(1), &[], false, None, 11).unwrap();
        assert!(!created);
        assert_eq!(again.id, acct.id);
        assert_eq!(store.change_key(acct.id, &key(1)).unwrap(), Err(acct.id));
        let (other, _) = store.create_account(&key(2), &[], true, None, 11).unwrap();
        // One account per external account key.
        store
            .create_account(&key(4), &[], true, Some("ext-1"), 11)
            .unwrap();
        assert!(matches!(
            store.create_account(&key(5), &[], true, Some("ext-1"), 11),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.change_key(other.id, &key(1)).unwrap(), Err(acct.id));
        let moved = store.change_key(other.id, &key(3)).unwrap().unwrap();
        assert_eq!(moved.jwk, key(3));
        assert!(store
            .account_by_thumbprint(&key(2).thumbprint())
            .unwrap()
            .is_none());
    }

    #[test]
    fn order_becomes_ready_when_every_authorization_is_valid() {
        let (store, _, order) = setup();
        let (a, b) = (order.authz_ids[0], order.authz_ids[1]);
        let ca = challenge_of(&store, a);
        assert!(store.start_challenge(ca, 20).unwrap());
        assert!(
            !store.start_challenge(ca, 20).unwrap(),
            "already processing"
        );
        store.finish_challenge(ca, Ok(()), 21).unwrap();
        assert_eq!(
            store.order(order.id, 22).unwrap().unwrap().status,
            OrderStatus::Pending
        );
        let cb = challenge_of(&store, b);
        assert!(store.start_challenge(cb, 23).unwrap());
        assert_eq!(store.processing_challenges().unwrap(), vec![cb]);
        store.finish_challenge(cb, Ok(()), 24).unwrap();
        assert_eq!(
            store.order(order.id, 25).unwrap().unwrap().status,
            OrderStatus::Ready
        );
        assert_eq!(
            store.authz(a, 25).unwrap().unwrap().status,
            AuthzStatus::Valid
        );
    }

    #[test]
    fn a_failed_challenge_invalidates_authorization_and_order() {
        let (store, _, order) = setup();
        let c = challenge_of(&store, order.authz_ids[0]);
        assert!(store.start_challenge(c, 20).unwrap());
        let problem = json!({"type": "urn:ietf:params:acme:error:incorrectResponse"});
        store.finish_challenge(c, Err(problem.clone()), 21).unwrap();
        let o = store.order(order.id, 22).unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Invalid);
        assert_eq!(o.error, Some(problem.clone()));
        let ch = store.challenge(c).unwrap().unwrap();
        assert_eq!(
            (ch.status, ch.error),
            (ChallengeStatus::Invalid, Some(problem))
        );
    }

    #[test]
    fn orders_and_authorizations_expire() {
        let (store, _, order) = setup();
        let o = store.order(order.id, 1000).unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Invalid);
        assert!(o.error.is_some());
        let a = store.authz(order.authz_ids[0], 1000).unwrap().unwrap();
        assert_eq!(a.status, AuthzStatus::Expired);
        assert!(!store.start_challenge(a.challenges[0].id, 1000).unwrap());
    }

    fn make_ready(store: &SqliteStore, order: &OrderRecord) {
        for a in &order.authz_ids {
            let c = challenge_of(store, *a);
            assert!(store.start_challenge(c, 20).unwrap());
            store.finish_challenge(c, Ok(()), 21).unwrap();
        }
    }

    #[test]
    fn issuance_is_one_transaction_and_serials_never_repeat() {
        let (store, acct, order) = setup();
        assert!(
            !store.begin_finalize(order.id, b"csr", 30).unwrap(),
            "not ready yet"
        );
        make_ready(&store, &order);
        assert!(store.begin_finalize(order.id, b"csr", 30).unwrap());
        assert!(
            !store.begin_finalize(order.id, b"csr", 30).unwrap(),
            "only once"
        );
        assert_eq!(store.processing_orders().unwrap(), vec![order.id]);
        store
            .complete_issuance(order.id, &cert("01", "fp1"))
            .unwrap();
        let o = store.order(order.id, 31).unwrap().unwrap();
        assert_eq!(
            (o.status, o.cert_serial.as_deref()),
            (OrderStatus::Valid, Some("01"))
        );
        assert_eq!(o.csr.as_deref(), Some(&b"csr"[..]));
        let c = store.certificate("01").unwrap().unwrap();
        assert_eq!(c.account_id, Some(acct.id));
        // A second completion (e.g. a recovery racing a live finalize) rolls back whole.
        assert!(store
            .complete_issuance(order.id, &cert("02", "fp2"))
            .is_err());
        assert!(store.certificate("02").unwrap().is_none());
        // The same serial twice is refused by the schema.
        let (store2, _, order2) = setup();
        make_ready(&store2, &order2);
        assert!(store2.begin_finalize(order2.id, b"csr", 30).unwrap());
        store2
            .complete_issuance(order2.id, &cert("01", "fp1"))
            .unwrap();
        assert!(store.processing_orders().unwrap().is_empty());
    }

    #[test]
    fn a_duplicate_serial_rolls_back_and_leaves_the_order_processing() {
        let (store, acct, order) = setup();
        make_ready(&store, &order);
        assert!(store.begin_finalize(order.id, b"csr", 30).unwrap());
        store
            .complete_issuance(order.id, &cert("aa", "fp1"))
            .unwrap();
        let second = store
            .create_order(
                &NewOrder {
                    account_id: acct.id,
                    identifiers: vec![Identifier::dns("a.example")],
                    not_before: None,
                    not_after: None,
                    expires: 1000,
                    authz_expires: 1000,
                    challenges: vec![vec![("http-01".into(), "tok-c".into())]],
                },
                10,
            )
            .unwrap();
        make_ready(&store, &second);
        assert!(store.begin_finalize(second.id, b"csr", 30).unwrap());
        assert!(store
            .complete_issuance(second.id, &cert("aa", "fp2"))
            .is_err());
        let o = store.order(second.id, 31).unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Processing);
        assert_eq!(o.cert_serial, None);
        store
            .complete_issuance(second.id, &cert("bb", "fp2"))
            .unwrap();
    }

    #[test]
    fn attestations_are_recorded_while_validating_and_issuance_needs_an_active_device() {
        let (store, _, order) = setup();
        let att = DeviceAttestation {
            device_id: "dev-1".into(),
            spki_der: vec![1, 2, 3],
            format: "step".into(),
            details: serde_json::json!({"platform": "YubiKey"}),
            at: 20,
        };
        // Not while the challenge is pending (only a challenge being validated records).
        assert!(!store.record_attestation("tok-a", &att).unwrap());
        let c = challenge_of(&store, order.authz_ids[0]);
        assert!(store.start_challenge(c, 20).unwrap());
        assert!(store.record_attestation("tok-a", &att).unwrap());
        assert!(!store.record_attestation("no-such-token", &att).unwrap());
        let all = store.order_attestations(order.id).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], (Identifier::dns("a.example"), Some(att.clone())));
        assert_eq!(all[1].1, None);
        store.finish_challenge(c, Ok(()), 21).unwrap();
        make_ready_rest(&store, &order);

        // The device is unknown, then quarantined: nothing commits; active: it does.
        assert!(store.begin_finalize(order.id, b"csr", 30).unwrap());
        let mut with_device = cert("0d", "fpd");
        with_device.device_id = Some("dev-1");
        assert!(matches!(
            store.complete_issuance(order.id, &with_device),
            Err(StoreError::DeviceNotActive { ref status, .. }) if status == "unknown to the inventory"
        ));
        let device = |status| crate::store::NewDevice {
            id: "dev-1".into(),
            hw_module_id: None,
            platform: None,
            owner: None,
            tags: Default::default(),
            status,
            source: "test".into(),
        };
        let now = std::time::SystemTime::now();
        store
            .upsert_device(&device(DeviceStatus::Quarantined), "t", "r", now)
            .unwrap();
        assert!(matches!(
            store.complete_issuance(order.id, &with_device),
            Err(StoreError::DeviceNotActive { ref status, .. }) if status == "quarantined"
        ));
        assert!(store.certificate("0d").unwrap().is_none());
        store
            .upsert_device(&device(DeviceStatus::Active), "t", "r", now)
            .unwrap();
        store.complete_issuance(order.id, &with_device).unwrap();
        let row = store.certificate("0d").unwrap().unwrap();
        assert_eq!(row.device_id.as_deref(), Some("dev-1"));
    }

    /// Validates every authorization of `order` that is still pending.
    fn make_ready_rest(store: &SqliteStore, order: &OrderRecord) {
        for a in &order.authz_ids {
            let c = challenge_of(store, *a);
            if store.start_challenge(c, 22).unwrap() {
                store.finish_challenge(c, Ok(()), 23).unwrap();
            }
        }
    }

    #[test]
    fn revocation_happens_once() {
        let (store, _, order) = setup();
        make_ready(&store, &order);
        assert!(store.begin_finalize(order.id, b"csr", 30).unwrap());
        store
            .complete_issuance(order.id, &cert("01", "fp1"))
            .unwrap();
        assert!(store.revoke_certificate("01", 1, 40).unwrap());
        assert!(!store.revoke_certificate("01", 4, 41).unwrap());
        let c = store.certificate("01").unwrap().unwrap();
        assert_eq!((c.revoked_at, c.revocation_reason), (Some(40), Some(1)));
    }

    #[test]
    fn deactivating_an_account_cancels_its_pending_work() {
        let (store, acct, order) = setup();
        let a = store.deactivate_account(acct.id).unwrap();
        assert_eq!(a.status, AccountStatus::Deactivated);
        assert_eq!(
            store.order(order.id, 20).unwrap().unwrap().status,
            OrderStatus::Invalid
        );
        assert_eq!(
            store.authz(order.authz_ids[0], 20).unwrap().unwrap().status,
            AuthzStatus::Deactivated
        );
    }
}
