//! ACME Renewal Information (RFC 9773): when a client should renew a certificate.
//!
//! Portcullis certificates are short-lived (24 h by default) and renewed at two thirds of their
//! lifetime (ARCHITECTURE.md), so the suggested window is [2/3, 5/6] of the lifetime. A revoked
//! certificate gets a window in the past: renew now (§4.2).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::StatusCode;
use serde_json::json;

use super::response::{no_such, Reply};
use super::AcmeServer;
use crate::acme::problem::Problem;
use crate::clock::{from_unix_seconds, rfc3339};
use crate::pki::Serial;
use crate::store::CertRecord;

/// Bounds of the Retry-After sent with renewal information (§4.3).
const MIN_POLL_SECS: i64 = 60;
const MAX_POLL_SECS: i64 = 6 * 3600;

/// Parses a certificate identifier (§4.1): base64url(AKI keyIdentifier) "." base64url(serial
/// content octets). Only identifiers naming our intermediate resolve.
pub(super) fn cert_id(s: &AcmeServer, id: &str) -> Option<Serial> {
    let (aki, serial) = id.split_once('.')?;
    let aki = B64.decode(aki).ok()?;
    let serial = B64.decode(serial).ok()?;
    if aki != s.pki.key_identifier() || serial.is_empty() || serial.len() > 20 {
        return None;
    }
    Some(Serial::from_be_bytes(&serial))
}

/// The certID of a certificate we issued.
pub fn cert_id_of(key_identifier: &[u8], serial: &Serial) -> String {
    let mut content = serial.as_bytes().to_vec();
    // The DER INTEGER content keeps a 0x00 in front of a value with its top bit set.
    if content.first().is_some_and(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    format!("{}.{}", B64.encode(key_identifier), B64.encode(content))
}

pub(super) async fn renewal_info(
    State(s): State<Arc<AcmeServer>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let serial = cert_id(&s, &id).ok_or_else(|| no_such("certificate"))?;
    let cert = s
        .store
        .certificate(&serial.to_hex())?
        .ok_or_else(|| no_such("certificate"))?;
    let (start, end, poll) = window(&cert, s.now_unix());
    let body = json!({
        "suggestedWindow": {
            "start": rfc3339(from_unix_seconds(start)),
            "end": rfc3339(from_unix_seconds(end)),
        }
    });
    Ok(Reply::json(StatusCode::OK, &body)
        .retry_after(poll as u64)
        .into_response())
}

/// (start, end, poll interval) in Unix seconds.
fn window(cert: &CertRecord, now: i64) -> (i64, i64, i64) {
    let lifetime = (cert.not_after - cert.not_before).max(3);
    let poll = (lifetime / 12).clamp(MIN_POLL_SECS, MAX_POLL_SECS);
    if cert.revoked_at.is_some() {
        return (now - 2 * MIN_POLL_SECS, now - MIN_POLL_SECS, poll);
    }
    (
        cert.not_before + lifetime * 2 / 3,
        cert.not_before + lifetime * 5 / 6,
        poll,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(nb: i64, na: i64, revoked: bool) -> CertRecord {
        CertRecord {
            serial: "01".into(),
            order_id: None,
            account_id: None,
            fingerprint: String::new(),
            device_id: None,
            not_before: nb,
            not_after: na,
            chain_pem: String::new(),
            der: None,
            revoked_at: revoked.then_some(nb + 10),
            revocation_reason: None,
        }
    }

    #[test]
    fn the_window_is_two_thirds_to_five_sixths_of_the_lifetime() {
        let day = 24 * 3600;
        assert_eq!(
            window(&cert(0, day, false), 0),
            (16 * 3600, 20 * 3600, 2 * 3600)
        );
        let (start, end, _) = window(&cert(0, day, true), 1000);
        assert!(start < end && end < 1000);
    }

    #[test]
    fn cert_ids_keep_the_sign_octet() {
        let id = cert_id_of(&[1, 2], &Serial::from_be_bytes(&[0x80, 1]));
        assert_eq!(
            id,
            format!("{}.{}", B64.encode([1, 2]), B64.encode([0, 0x80, 1]))
        );
    }
}
