//! Authorizations (RFC 8555 §7.5) and challenges (§7.5.1): reading, deactivating, and
//! answering a challenge, whose validation then runs in the background.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value};

use super::objects;
use super::request::{path_id, KeyRule};
use super::response::{no_such, Reply};
use super::AcmeServer;
use crate::acme::challenge::{key_authorization, ValidationRequest};
use crate::acme::model::{AuthzStatus, ChallengeStatus};
use crate::acme::problem::{Problem, ProblemType};
use crate::store::{AuthzRecord, StoreError};

pub(super) async fn authz(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "authorization")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let account_id = a.account()?.id;
    let mut authz = owned_authz(&s, id, account_id)?;
    if !a.jws.is_post_as_get() {
        // §7.5.2: the only change a client may make is deactivation.
        let payload = a.jws.payload_json()?;
        if payload.get("status").and_then(Value::as_str) != Some("deactivated") {
            return Err(Problem::malformed(
                "an authorization can only be updated with {\"status\": \"deactivated\"}",
            ));
        }
        if !matches!(authz.status, AuthzStatus::Pending | AuthzStatus::Valid) {
            return Err(Problem::malformed(format!(
                "a {} authorization cannot be deactivated",
                authz.status.as_str()
            )));
        }
        authz = s
            .store
            .deactivate_authz(id, s.now_unix())?
            .ok_or_else(|| no_such("authorization"))?;
    }
    Ok(Reply::json(StatusCode::OK, &objects::authz(&s.urls, &authz)).into_response())
}

/// POST-as-GET reads the challenge; a POST with a JSON object (`{}` for http-01) asks the
/// server to validate it (§7.5.1). Answering a challenge that is not pending changes nothing.
pub(super) async fn challenge(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "challenge")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let account = a.account()?.clone();
    let ch = s.store.challenge(id)?.ok_or_else(|| no_such("challenge"))?;
    let authz = owned_authz(&s, ch.authz_id, account.id)?;
    if !a.jws.is_post_as_get() {
        let payload = a.jws.payload_json()?;
        let validator = s.validators.get(&ch.kind).cloned().ok_or_else(|| {
            Problem::new(
                ProblemType::ServerInternal,
                format!("challenge type {} is no longer enabled", ch.kind),
            )
        })?;
        if ch.status == ChallengeStatus::Pending
            && authz.status == AuthzStatus::Pending
            && s.store.start_challenge(id, s.now_unix())?
        {
            let request = ValidationRequest {
                identifier: authz.identifier.clone(),
                token: ch.token.clone(),
                key_authorization: key_authorization(&ch.token, &account.thumbprint),
                payload,
            };
            spawn_validation(&s, id, validator, request);
        }
    }
    let ch = s.store.challenge(id)?.ok_or_else(|| no_such("challenge"))?;
    let mut reply = Reply::json(StatusCode::OK, &objects::challenge(&s.urls, &ch))
        .link(&s.urls.authz(authz.id), "up");
    if ch.status == ChallengeStatus::Processing {
        reply = reply.retry_after(s.config.retry_after.as_secs());
    }
    Ok(reply.into_response())
}

fn spawn_validation(
    s: &Arc<AcmeServer>,
    challenge_id: i64,
    validator: Arc<dyn crate::acme::challenge::ChallengeValidator>,
    request: ValidationRequest,
) {
    let s = s.clone();
    tokio::spawn(async move {
        let identifier = request.identifier.value.clone();
        let outcome = validator.validate(request).await;
        match &outcome {
            Ok(()) => {
                tracing::info!(challenge = challenge_id, %identifier, kind = validator.kind(), "challenge valid")
            }
            Err(p) => {
                tracing::info!(challenge = challenge_id, %identifier, kind = validator.kind(), problem = %p, "challenge invalid")
            }
        }
        // A refused device attestation is a security event (a device that is unknown, not
        // active, or whose attestation does not verify tried to enrol): audit it with the
        // rule the problem detail names.
        if let (crate::acme::challenge::device_attest01::KIND, Err(p)) =
            (validator.kind(), &outcome)
        {
            tracing::warn!(
                target: crate::inventory::AUDIT_TARGET,
                action = "device_attest_refused",
                challenge = challenge_id,
                identifier = %identifier,
                problem = p.kind.name(),
                detail = %p.detail,
                "device-attest-01 refused"
            );
        }
        let outcome = outcome.map_err(|p| serde_json::to_value(p).unwrap_or(Value::Null));
        if let Err(e) = s
            .store
            .finish_challenge(challenge_id, outcome, s.now_unix())
        {
            tracing::error!(challenge = challenge_id, error = %e, "could not record a validation result");
        }
    });
}

/// Starts again the validation of a challenge a crash left `processing`. The payload the
/// client sent is not stored; http-01 does not need it. A type that does (device-attest-01)
/// fails the challenge here so the client can order again.
pub(super) fn restart_validation(s: &Arc<AcmeServer>, challenge_id: i64) -> Result<(), StoreError> {
    let Some(ch) = s.store.challenge(challenge_id)? else {
        return Ok(());
    };
    let Some(authz) = s.store.authz(ch.authz_id, s.now_unix())? else {
        return Ok(());
    };
    let Some(account) = s.store.account(authz.account_id)? else {
        return Ok(());
    };
    match s.validators.get(&ch.kind).cloned() {
        Some(v) => {
            let request = ValidationRequest {
                identifier: authz.identifier.clone(),
                token: ch.token.clone(),
                key_authorization: key_authorization(&ch.token, &account.thumbprint),
                payload: Map::new(),
            };
            spawn_validation(s, challenge_id, v, request);
            Ok(())
        }
        None => s.store.finish_challenge(
            challenge_id,
            Err(serde_json::to_value(Problem::new(
                ProblemType::ServerInternal,
                "challenge type no longer enabled",
            ))
            .unwrap_or(Value::Null)),
            s.now_unix(),
        ),
    }
}

fn owned_authz(s: &AcmeServer, id: i64, account_id: i64) -> Result<AuthzRecord, Problem> {
    let authz = s
        .store
        .authz(id, s.now_unix())?
        .ok_or_else(|| no_such("authorization"))?;
    if authz.account_id != account_id {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "the authorization belongs to another account",
        ));
    }
    Ok(authz)
}
