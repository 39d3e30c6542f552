//! The JSON representations of ACME resources (RFC 8555 §7.1.2–§7.1.5).

use serde_json::{json, Map, Value};

use super::urls::Urls;
use crate::acme::model::OrderStatus;
use crate::clock::{from_unix_seconds, rfc3339};
use crate::store::{AccountRecord, AuthzRecord, ChallengeRecord, OrderRecord};

fn time(t: i64) -> Value {
    Value::String(rfc3339(from_unix_seconds(t)))
}

pub(super) fn account(urls: &Urls, a: &AccountRecord) -> Value {
    json!({
        "status": a.status,
        "contact": a.contact,
        "termsOfServiceAgreed": a.tos_agreed,
        "orders": urls.account_orders(a.id),
    })
}

pub(super) fn order(urls: &Urls, o: &OrderRecord) -> Value {
    let mut m = Map::new();
    m.insert("status".into(), json!(o.status));
    // `expires` is REQUIRED for pending and valid orders (§7.1.3); we always send it.
    m.insert("expires".into(), time(o.expires));
    m.insert("identifiers".into(), json!(o.identifiers));
    if let Some(t) = o.not_before {
        m.insert("notBefore".into(), time(t));
    }
    if let Some(t) = o.not_after {
        m.insert("notAfter".into(), time(t));
    }
    if let Some(e) = &o.error {
        m.insert("error".into(), e.clone());
    }
    m.insert(
        "authorizations".into(),
        json!(o
            .authz_ids
            .iter()
            .map(|id| urls.authz(*id))
            .collect::<Vec<_>>()),
    );
    m.insert("finalize".into(), json!(urls.finalize(o.id)));
    if o.status == OrderStatus::Valid {
        if let Some(serial) = &o.cert_serial {
            m.insert("certificate".into(), json!(urls.cert(serial)));
        }
    }
    Value::Object(m)
}

pub(super) fn authz(urls: &Urls, a: &AuthzRecord) -> Value {
    json!({
        "identifier": a.identifier,
        "status": a.status,
        "expires": time(a.expires),
        "challenges": a.challenges.iter().map(|c| challenge(urls, c)).collect::<Vec<_>>(),
    })
}

pub(super) fn challenge(urls: &Urls, c: &ChallengeRecord) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(c.kind));
    m.insert("url".into(), json!(urls.challenge(c.id)));
    m.insert("status".into(), json!(c.status));
    m.insert("token".into(), json!(c.token));
    if let Some(t) = c.validated_at {
        m.insert("validated".into(), time(t));
    }
    if let Some(e) = &c.error {
        m.insert("error".into(), e.clone());
    }
    Value::Object(m)
}
