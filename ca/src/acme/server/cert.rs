//! Certificate download (RFC 8555 §7.4.2), the issuer certificate, and revocation (§7.6).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::StatusCode;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::request::KeyRule;
use super::response::{no_such, Reply};
use super::AcmeServer;
use crate::acme::model::revocation_reason_allowed;
use crate::acme::problem::{Problem, ProblemType};
use crate::pki::{jwk_of_spki_der, Serial};

pub(super) async fn download(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let a = s.authenticate(req, KeyRule::Kid).await?;
    a.require_post_as_get()?;
    let serial = Serial::from_hex(&raw).ok_or_else(|| no_such("certificate"))?;
    let cert = s
        .store
        .certificate(&serial.to_hex())?
        .ok_or_else(|| no_such("certificate"))?;
    if cert.account_id != Some(a.account()?.id) {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "the certificate belongs to another account",
        ));
    }
    Ok(Reply::pem_chain(cert.chain_pem)
        .link(&s.urls.issuer(), "up")
        .into_response())
}

/// The issuing (intermediate) certificate, by plain GET: it is public, and `rel="up"` points
/// here from every certificate download.
pub(super) async fn issuer(State(s): State<Arc<AcmeServer>>) -> Response {
    Reply::pem_chain(s.pki.intermediate_pem().to_string()).into_response()
}

/// §7.6: by the account that owns the certificate (`kid`), or by the certificate's own key
/// (`jwk`). The reason, if given, must be a RFC 5280 §5.3.1 code a subscriber may use.
pub(super) async fn revoke(
    State(s): State<Arc<AcmeServer>>,
    req: Request,
) -> Result<Response, Problem> {
    let a = s.authenticate(req, KeyRule::Either).await?;
    let payload = a.object()?;
    let der = payload
        .get("certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("`certificate` is missing"))
        .and_then(|c| {
            B64.decode(c)
                .map_err(|_| Problem::malformed("`certificate` is not base64url DER"))
        })?;
    let reason = match payload.get("reason") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|r| revocation_reason_allowed(*r))
            .ok_or_else(|| {
                Problem::new(
                    ProblemType::BadRevocationReason,
                    "reason must be one of 0, 1, 3, 4, 5, 9 (RFC 5280 §5.3.1)",
                )
            })?,
    };
    let (rest, parsed) = X509Certificate::from_der(&der)
        .map_err(|_| Problem::malformed("`certificate` is not an X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(Problem::malformed("`certificate` has trailing data"));
    }
    let serial = Serial::from_be_bytes(parsed.raw_serial()).to_hex();
    let unknown = || Problem::malformed("this CA did not issue that certificate");
    let record = s.store.certificate(&serial)?.ok_or_else(unknown)?;
    // Same serial is not enough: the bytes must be the certificate we issued.
    if record.der.as_deref() != Some(der.as_slice()) {
        return Err(unknown());
    }
    let allowed = match &a.account {
        Some(account) => record.account_id == Some(account.id),
        None => jwk_of_spki_der(parsed.public_key().raw).as_ref() == Some(&a.key),
    };
    if !allowed {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "only the account that ordered a certificate, or its key holder, can revoke it",
        ));
    }
    if record.revoked_at.is_some() || !s.store.revoke_certificate(&serial, reason, s.now_unix())? {
        return Err(Problem::new(
            ProblemType::AlreadyRevoked,
            "the certificate is already revoked",
        ));
    }
    tracing::info!(serial = %serial, reason, by_account = ?a.account.as_ref().map(|a| a.id), "certificate revoked");
    Ok(Reply::empty(StatusCode::OK).into_response())
}
