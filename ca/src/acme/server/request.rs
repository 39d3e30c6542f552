//! Authentication of ACME POSTs: the one place the rules of RFC 8555 §6.2–§6.5 are applied.

use axum::extract::Request;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

use super::AcmeServer;
use crate::acme::jwk::PublicJwk;
use crate::acme::jws::{ParsedJws, Signer};
use crate::acme::model::AccountStatus;
use crate::acme::problem::{Problem, ProblemType};
use crate::store::AccountRecord;

/// Which key reference a resource accepts (RFC 8555 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyRule {
    /// An existing account, by `kid`: everything except the two below.
    Kid,
    /// A key with no account yet, by `jwk`: newAccount.
    Jwk,
    /// Either: revokeCert (by account, or by the certificate's own key).
    Either,
}

/// A request whose JWS verified.
pub(super) struct Authed {
    pub jws: ParsedJws,
    /// The account, for `kid` requests.
    pub account: Option<AccountRecord>,
    /// The key that signed.
    pub key: PublicJwk,
}

impl Authed {
    /// The account of a `kid` request (always present under [`KeyRule::Kid`]).
    pub fn account(&self) -> Result<&AccountRecord, Problem> {
        self.account
            .as_ref()
            .ok_or_else(|| Problem::malformed("this request needs an account (`kid`)"))
    }

    /// The payload as a JSON object; POST-as-GET (empty payload) is refused.
    pub fn object(&self) -> Result<Map<String, Value>, Problem> {
        if self.jws.is_post_as_get() {
            return Err(Problem::malformed("this request needs a JSON payload"));
        }
        self.jws.payload_json()
    }

    /// Requires POST-as-GET (RFC 8555 §6.3): the payload must be the empty string.
    pub fn require_post_as_get(&self) -> Result<(), Problem> {
        if self.jws.is_post_as_get() {
            Ok(())
        } else {
            Err(Problem::malformed(
                "this resource is fetched with POST-as-GET (an empty payload)",
            ))
        }
    }
}

impl AcmeServer {
    /// Reads and authenticates a POST. In this order: content type (§6.2), body size, JWS
    /// structure and protected header (§6.2, `url` §6.4), nonce (§6.5, consumed even if a later
    /// check fails, as it is single-use), key reference rule, account lookup by `kid`
    /// (`accountDoesNotExist`), account status (`unauthorized` once deactivated, §7.3.6), and
    /// finally the signature.
    pub(super) async fn authenticate(
        &self,
        req: Request,
        rule: KeyRule,
    ) -> Result<Authed, Problem> {
        let url = self.urls.request_url(req.uri().path());
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if content_type.as_deref() != Some("application/jose+json") {
            let mut p = Problem::malformed("Content-Type must be application/jose+json");
            p.status = 415;
            return Err(p);
        }
        let limit = self.config.max_body_bytes;
        let body = Limited::new(req.into_body(), limit)
            .collect()
            .await
            .map_err(|_| {
                let mut p = Problem::malformed(format!("request body exceeds {limit} bytes"));
                p.status = 413;
                p
            })?
            .to_bytes();

        let jws = ParsedJws::parse(&body, &url)?;
        self.nonces.consume(&jws.nonce, self.now()).map_err(|e| {
            Problem::new(
                ProblemType::BadNonce,
                format!("{e}; retry with the nonce in this response"),
            )
        })?;
        match (&jws.signer, rule) {
            (Signer::Jwk(_), KeyRule::Kid) => {
                return Err(Problem::malformed(
                    "this resource needs the account URL as `kid`, not a `jwk`",
                ))
            }
            (Signer::Kid(_), KeyRule::Jwk) => {
                return Err(Problem::malformed(
                    "newAccount needs the key as `jwk`, not a `kid`",
                ))
            }
            _ => {}
        }
        match &jws.signer {
            Signer::Kid(kid) => {
                let missing = || {
                    Problem::new(
                        ProblemType::AccountDoesNotExist,
                        format!("no account {kid}"),
                    )
                };
                let id = self.urls.account_id(kid).ok_or_else(missing)?;
                let account = self.store.account(id)?.ok_or_else(missing)?;
                if account.status != AccountStatus::Valid {
                    return Err(Problem::new(
                        ProblemType::Unauthorized,
                        format!("account is {}", account.status.as_str()),
                    ));
                }
                jws.verify(&account.jwk)?;
                let key = account.jwk.clone();
                Ok(Authed {
                    jws,
                    account: Some(account),
                    key,
                })
            }
            Signer::Jwk(key) => {
                let key = key.clone();
                jws.verify(&key)?;
                Ok(Authed {
                    jws,
                    account: None,
                    key,
                })
            }
        }
    }
}

/// Parses a `{id}` path segment; anything else is a 404.
pub(super) fn path_id(raw: &str, what: &str) -> Result<i64, Problem> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(super::response::no_such(what));
    }
    raw.parse().map_err(|_| super::response::no_such(what))
}
