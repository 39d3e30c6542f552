//! The directory (RFC 8555 §7.1.1) and newNonce (§7.2).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CACHE_CONTROL;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::response::Reply;
use super::AcmeServer;

pub(super) async fn directory(State(s): State<Arc<AcmeServer>>) -> Response {
    let u = &s.urls;
    let m = &s.config.meta;
    let mut meta = Map::new();
    if let Some(t) = &m.terms_of_service {
        meta.insert("termsOfService".into(), json!(t));
    }
    if let Some(w) = &m.website {
        meta.insert("website".into(), json!(w));
    }
    if !m.caa_identities.is_empty() {
        meta.insert("caaIdentities".into(), json!(m.caa_identities));
    }
    meta.insert(
        "externalAccountRequired".into(),
        json!(m.external_account_required),
    );
    let body = json!({
        "newNonce": u.new_nonce(),
        "newAccount": u.new_account(),
        "newOrder": u.new_order(),
        "revokeCert": u.revoke_cert(),
        "keyChange": u.key_change(),
        // RFC 9773 §3.
        "renewalInfo": u.renewal_info(),
        "meta": Value::Object(meta),
    });
    Reply::json(StatusCode::OK, &body).into_response()
}

// §7.2: HEAD answers 200 and GET 204, both with `Cache-Control: no-store` so no cache hands the
// same nonce to two clients. The nonce itself is added by the middleware, as for every response.
pub(super) async fn new_nonce_head() -> Response {
    Reply::empty(StatusCode::OK)
        .header(CACHE_CONTROL, "no-store")
        .into_response()
}

pub(super) async fn new_nonce_get() -> Response {
    Reply::empty(StatusCode::NO_CONTENT)
        .header(CACHE_CONTROL, "no-store")
        .into_response()
}
