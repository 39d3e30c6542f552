//! Accounts: newAccount (RFC 8555 §7.3), update and deactivation (§7.3.2, §7.3.6), the orders
//! list (§7.1.2.1) and key rollover (§7.3.5).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::objects;
use super::request::{path_id, KeyRule};
use super::response::Reply;
use super::AcmeServer;
use crate::acme::eab;
use crate::acme::jwk::PublicJwk;
use crate::acme::jws::{ParsedJws, Signer};
use crate::acme::model::AccountStatus;
use crate::acme::problem::{Problem, ProblemType};
use crate::store::StoreError;

/// More contacts than this is not an address book we want to keep.
const MAX_CONTACTS: usize = 10;

pub(super) async fn new_account(
    State(s): State<Arc<AcmeServer>>,
    req: Request,
) -> Result<Response, Problem> {
    let a = s.authenticate(req, KeyRule::Jwk).await?;
    let payload = a.object()?;
    let only_existing = bool_field(&payload, "onlyReturnExisting")?.unwrap_or(false);

    if let Some(existing) = s.store.account_by_thumbprint(&a.key.thumbprint())? {
        // §7.3.1: the key already has an account: 200 with its URL, nothing changes.
        if existing.status != AccountStatus::Valid {
            return Err(Problem::new(
                ProblemType::Unauthorized,
                format!("the account for this key is {}", existing.status.as_str()),
            ));
        }
        return Ok(
            Reply::json(StatusCode::OK, &objects::account(&s.urls, &existing))
                .location(s.urls.account(existing.id))
                .into_response(),
        );
    }
    if only_existing {
        return Err(Problem::new(
            ProblemType::AccountDoesNotExist,
            "no account exists for this key",
        ));
    }
    // §7.3.4: verify a binding whenever one is sent; require one when configured to.
    let eab_kid = match payload.get("externalAccountBinding") {
        Some(binding) => Some(eab::verify(
            binding,
            &a.key,
            &s.urls.new_account(),
            &s.config.eab_keys,
        )?),
        None if s.config.meta.external_account_required => {
            return Err(Problem::new(
                ProblemType::ExternalAccountRequired,
                "this CA requires an external account binding",
            ))
        }
        None => None,
    };
    let tos_agreed = bool_field(&payload, "termsOfServiceAgreed")?.unwrap_or(false);
    if s.config.meta.terms_of_service.is_some() && !tos_agreed {
        // §7.3: with termsOfService in the directory, agreement is required.
        return Err(Problem::malformed(
            "the terms of service must be agreed to (termsOfServiceAgreed: true)",
        ));
    }
    let contact = contacts(&payload)?.unwrap_or_default();
    let (account, created) = s
        .store
        .create_account(
            &a.key,
            &contact,
            tos_agreed,
            eab_kid.as_deref(),
            s.now_unix(),
        )
        .map_err(|e| match e {
            StoreError::Conflict(_) => Problem::new(
                ProblemType::Unauthorized,
                "the external account key is already bound to another account",
            ),
            e => e.into(),
        })?;
    let status = if created {
        tracing::info!(account = account.id, thumbprint = %account.thumbprint, "ACME account created");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply::json(status, &objects::account(&s.urls, &account))
        .location(s.urls.account(account.id))
        .into_response())
}

pub(super) async fn account(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "account")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let mut account = a.account()?.clone();
    if account.id != id {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "an account can only read or change itself",
        ));
    }
    if !a.jws.is_post_as_get() {
        let payload = a.jws.payload_json()?;
        // Check everything before changing anything: a bad field must leave no partial update.
        let deactivate = match payload.get("status") {
            None => false,
            Some(Value::String(s)) if s == "deactivated" => true,
            Some(Value::String(s)) if s == "valid" => false,
            Some(_) => {
                return Err(Problem::malformed(
                    "an account's status can only be set to \"deactivated\"",
                ))
            }
        };
        let contact = contacts(&payload)?;
        if let Some(contact) = contact {
            account = s.store.update_contact(account.id, &contact)?;
        }
        if deactivate {
            account = s.store.deactivate_account(account.id)?;
            tracing::info!(
                account = account.id,
                "ACME account deactivated by its holder"
            );
        }
    }
    Ok(Reply::json(StatusCode::OK, &objects::account(&s.urls, &account)).into_response())
}

pub(super) async fn orders(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "account")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    a.require_post_as_get()?;
    if a.account()?.id != id {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "an account can only list its own orders",
        ));
    }
    let urls: Vec<String> = s
        .store
        .account_orders(id)?
        .into_iter()
        .map(|o| s.urls.order(o))
        .collect();
    Ok(Reply::json(StatusCode::OK, &json!({ "orders": urls })).into_response())
}

/// §7.3.5: the outer JWS is signed by the current key (`kid`); its payload is an inner JWS
/// signed by the new key, carrying `{account, oldKey}`.
pub(super) async fn key_change(
    State(s): State<Arc<AcmeServer>>,
    req: Request,
) -> Result<Response, Problem> {
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let account = a.account()?.clone();
    // Same `url` as the outer JWS, which already equals the request URL.
    let inner = ParsedJws::parse_key_change_inner(&a.jws.payload, &a.jws.url)?;
    let Signer::Jwk(new_key) = &inner.signer else {
        return Err(Problem::malformed(
            "the inner JWS must carry the new key as `jwk`",
        ));
    };
    inner.verify(new_key)?;
    let body = inner.payload_json()?;
    let account_url = body
        .get("account")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("keyChange `account` is missing"))?;
    if account_url != s.urls.account(account.id) {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "keyChange `account` is not the account signing the request",
        ));
    }
    let old_key = body
        .get("oldKey")
        .ok_or_else(|| Problem::malformed("keyChange `oldKey` is missing"))
        .and_then(|v| {
            PublicJwk::from_json(v)
                .map_err(|e| Problem::new(ProblemType::BadPublicKey, format!("oldKey: {e}")))
        })?;
    if old_key != account.jwk {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "keyChange `oldKey` is not the account's current key",
        ));
    }
    match s.store.change_key(account.id, new_key)? {
        Ok(updated) => {
            tracing::info!(account = updated.id, thumbprint = %updated.thumbprint, "ACME account key changed");
            Ok(Reply::json(StatusCode::OK, &objects::account(&s.urls, &updated)).into_response())
        }
        Err(holder) => {
            // §7.3.5: the new key already belongs to an account: 409 with that account's URL.
            let mut p = Problem::malformed("the new key is already in use by an account");
            p.status = 409;
            let mut resp = p.into_response();
            if let Ok(v) = http::HeaderValue::from_str(&s.urls.account(holder)) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            Ok(resp)
        }
    }
}

fn bool_field(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, Problem> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Problem::malformed(format!("`{k}` must be a boolean"))),
    }
}

/// `contact` (§7.3): `mailto:` URLs only (`unsupportedContact` otherwise), each one address
/// without header fields (`invalidContact`).
fn contacts(m: &Map<String, Value>) -> Result<Option<Vec<String>>, Problem> {
    let Some(v) = m.get("contact") else {
        return Ok(None);
    };
    let list = v
        .as_array()
        .ok_or_else(|| Problem::malformed("`contact` must be an array of URLs"))?;
    if list.len() > MAX_CONTACTS {
        return Err(Problem::new(
            ProblemType::InvalidContact,
            format!("at most {MAX_CONTACTS} contacts"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let c = c
            .as_str()
            .ok_or_else(|| Problem::malformed("`contact` entries must be strings"))?;
        let Some(addr) = c.strip_prefix("mailto:") else {
            return Err(Problem::new(
                ProblemType::UnsupportedContact,
                format!("only mailto: contacts are supported, not `{c}`"),
            ));
        };
        let valid = match addr.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !addr.contains(['?', ',', ' ', '<', '>'])
                    && addr.len() <= 254
            }
            None => false,
        };
        if !valid {
            return Err(Problem::new(
                ProblemType::InvalidContact,
                format!("`{c}` is not a single e-mail address"),
            ));
        }
        out.push(c.to_string());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: Value) -> Result<Option<Vec<String>>, ProblemType> {
        contacts(v.as_object().unwrap()).map_err(|p| p.kind)
    }

    #[test]
    fn contacts_are_single_mailto_addresses() {
        assert_eq!(
            kinds(json!({"contact": ["mailto:a@example.com"]})),
            Ok(Some(vec!["mailto:a@example.com".to_string()]))
        );
        assert_eq!(kinds(json!({})), Ok(None));
        assert_eq!(
            kinds(json!({"contact": ["tel:+1555"]})),
            Err(ProblemType::UnsupportedContact)
        );
        for bad in [
            "mailto:nobody",
            "mailto:a@b@c",
            "mailto:a@b?subject=x",
            "mailto:a@b,c@d",
        ] {
            assert_eq!(
                kinds(json!({"contact": [bad]})),
                Err(ProblemType::InvalidContact),
                "{bad}"
            );
        }
        assert_eq!(
            kinds(json!({"contact": "mailto:a@b"})),
            Err(ProblemType::Malformed)
        );
    }
}
