//! RFC 8555 rules, one test each: the request is refused with the right problem type, and the
//! CA's state (every row of every ACME table) is exactly what it was before.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::{b64, csr, new_key, Client, Lab, BASE};
use http::{Request, StatusCode};
use portcullis_ca::clock::Clock;
use serde_json::json;

fn url(path: &str) -> String {
    format!("{BASE}/acme/{path}")
}

/// Runs `f` and asserts the database did not change.
macro_rules! unchanged {
    ($lab:expr, $body:expr) => {{
        let before = $lab.snapshot();
        let r = $body;
        assert_eq!(before, $lab.snapshot(), "the refused request changed state");
        r
    }};
}

#[tokio::test]
async fn directory_lists_resources_and_meta() {
    let lab = Lab::with(|c| {
        c.meta.terms_of_service = Some("https://ca.test/tos".into());
        c.meta.website = Some("https://ca.test".into());
        c.meta.caa_identities = vec!["ca.test".into()];
    });
    let r = lab
        .call(Request::get(url("directory")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let d = r.json();
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        assert!(d[k].as_str().unwrap().starts_with(BASE), "{k}");
    }
    assert_eq!(d["meta"]["termsOfService"], "https://ca.test/tos");
    assert_eq!(d["meta"]["website"], "https://ca.test");
    assert_eq!(d["meta"]["caaIdentities"], json!(["ca.test"]));
    assert_eq!(d["meta"]["externalAccountRequired"], false);
    assert!(r.nonce().is_some());
    assert!(r
        .links()
        .contains(&format!("<{}>;rel=\"index\"", url("directory"))));
}

#[tokio::test]
async fn new_nonce_head_is_200_get_is_204_never_cached() {
    let lab = Lab::new();
    let head = lab
        .call(Request::head(url("new-nonce")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    let get = lab
        .call(Request::get(url("new-nonce")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(get.status, StatusCode::NO_CONTENT);
    for r in [&head, &get] {
        assert_eq!(r.headers["cache-control"], "no-store");
        assert!(r.nonce().is_some());
    }
    assert_ne!(head.nonce(), get.nonce());
}

#[tokio::test]
async fn every_response_carries_a_nonce_and_the_index_link_even_errors() {
    let lab = Lab::new();
    let r = lab
        .call(
            Request::get(url("no-such-thing"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.problem(), "malformed");
    assert!(r.nonce().is_some());
    assert!(r.links().iter().any(|l| l.contains("rel=\"index\"")));
    let r = lab.post_raw(&url("new-account"), b"{".to_vec()).await;
    assert!(r.nonce().is_some());
}

#[tokio::test]
async fn a_made_up_nonce_is_bad_nonce_with_a_fresh_one() {
    let lab = Lab::new();
    let c = Client::new();
    let body = c.sign(
        &c.header(&url("new-account"), "bm90LWEtbm9uY2U"),
        r#"{"termsOfServiceAgreed":true}"#,
    );
    let r = unchanged!(lab, lab.post_raw(&url("new-account"), body).await);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem(), "badNonce");
    assert!(
        r.nonce().is_some(),
        "badNonce must carry a nonce to retry with"
    );
}

#[tokio::test]
async fn a_replayed_nonce_is_bad_nonce() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let nonce = lab.nonce().await;
    let payload = json!({"identifiers": [{"type": "dns", "value": "a.lab.example"}]}).to_string();
    let body = c.sign(&c.header(&url("new-order"), &nonce), &payload);
    let first = lab.post_raw(&url("new-order"), body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let r = unchanged!(lab, lab.post_raw(&url("new-order"), body).await);
    assert_eq!(r.problem(), "badNonce");
}

#[tokio::test]
async fn an_expired_nonce_is_bad_nonce() {
    let lab = Lab::new();
    let c = Client::new();
    let nonce = lab.nonce().await;
    lab.clock
        .advance(lab.config.nonce_lifetime + Duration::from_secs(1));
    let body = c.sign(
        &c.header(&url("new-account"), &nonce),
        r#"{"termsOfServiceAgreed":true}"#,
    );
    let r = unchanged!(lab, lab.post_raw(&url("new-account"), body).await);
    assert_eq!(r.problem(), "badNonce");
}

#[tokio::test]
async fn a_url_other_than_the_request_url_is_unauthorized() {
    let lab = Lab::new();
    let c = Client::new();
    let nonce = lab.nonce().await;
    let body = c.sign(
        &c.header(&url("new-order"), &nonce),
        r#"{"termsOfServiceAgreed":true}"#,
    );
    let r = unchanged!(lab, lab.post_raw(&url("new-account"), body).await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem(), "unauthorized");
}

#[tokio::test]
async fn alg_none_and_hmac_are_bad_signature_algorithm() {
    let lab = Lab::new();
    let c = Client::new();
    for alg in ["none", "HS256"] {
        let nonce = lab.nonce().await;
        let mut h = c.header(&url("new-account"), &nonce);
        h["alg"] = json!(alg);
        let body = c.sign(&h, r#"{"termsOfServiceAgreed":true}"#);
        let r = unchanged!(lab, lab.post_raw(&url("new-account"), body).await);
        assert_eq!(r.problem(), "badSignatureAlgorithm", "{alg}");
    }
    // `none` with an empty signature, as an attacker would actually send it.
    let nonce = lab.nonce().await;
    let h = json!({"alg": "none", "nonce": nonce, "url": url("new-account"), "jwk": c.jwk()});
    let body = json!({
        "protected": b64(h.to_string().as_bytes()),
        "payload": b64(br#"{"termsOfServiceAgreed":true}"#),
        "signature": "",
    });
    let r = unchanged!(
        lab,
        lab.post_raw(&url("new-account"), body.to_string().into_bytes())
            .await
    );
    assert_eq!(r.problem(), "badSignatureAlgorithm");
}

#[tokio::test]
async fn jwk_and_kid_together_are_malformed() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let nonce = lab.nonce().await;
    let mut h = c.header(&url("new-order"), &nonce);
    h["jwk"] = c.jwk();
    let body = c.sign(
        &h,
        r#"{"identifiers":[{"type":"dns","value":"a.lab.example"}]}"#,
    );
    let r = unchanged!(lab, lab.post_raw(&url("new-order"), body).await);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn a_jwk_where_an_account_is_needed_is_malformed() {
    let lab = Lab::new();
    let c = Client::new(); // never registered: signs with `jwk`
    let r = unchanged!(lab, c.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn an_unknown_account_does_not_exist() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.kid = Some(url("account/999"));
    let r = unchanged!(lab, c.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem(), "accountDoesNotExist");
    c.kid = Some("https://elsewhere.example/acme/account/1".into());
    let r = unchanged!(lab, c.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.problem(), "accountDoesNotExist");
}

#[tokio::test]
async fn a_signature_by_another_key_is_refused() {
    let lab = Lab::new();
    let mut victim = Client::new();
    victim.register(&lab).await;
    let mut attacker = Client::new();
    attacker.kid = victim.kid.clone();
    let r = unchanged!(lab, attacker.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn a_deactivated_account_is_unauthorized() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let kid = c.kid.clone().unwrap();
    let r = c
        .post(&lab, &kid, Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "deactivated");
    let r = unchanged!(lab, c.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem(), "unauthorized");
    // newAccount with the same key does not resurrect it.
    c.kid = None;
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&json!({"termsOfServiceAgreed": true}))
        )
        .await
    );
    assert_eq!(r.problem(), "unauthorized");
}

#[tokio::test]
async fn a_csr_with_an_extra_san_is_bad_csr() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let (_, order) = c.ready_order(&lab, &["a.lab.example"]).await;
    let finalize = order["finalize"].as_str().unwrap().to_string();
    let der = csr(&new_key(), &["a.lab.example", "b.lab.example"]);
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": b64(&der)})))
            .await
    );
    assert_eq!(r.problem(), "badCSR");
    let p = r.json();
    assert_eq!(p["subproblems"][0]["identifier"]["value"], "b.lab.example");
    // Missing a name is refused too.
    let (_, order) = c
        .ready_order(&lab, &["a.lab.example", "b.lab.example"])
        .await;
    let finalize = order["finalize"].as_str().unwrap().to_string();
    let der = csr(&new_key(), &["a.lab.example"]);
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": b64(&der)})))
            .await
    );
    assert_eq!(r.problem(), "badCSR");
}

#[tokio::test]
async fn a_csr_with_the_account_key_is_bad_csr() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let (_, order) = c.ready_order(&lab, &["a.lab.example"]).await;
    let finalize = order["finalize"].as_str().unwrap().to_string();
    let der = csr(&c.rcgen_key(), &["a.lab.example"]);
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": b64(&der)})))
            .await
    );
    assert_eq!(r.problem(), "badCSR");
}

#[tokio::test]
async fn a_csr_whose_signature_fails_is_bad_csr() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let (_, order) = c.ready_order(&lab, &["a.lab.example"]).await;
    let finalize = order["finalize"].as_str().unwrap().to_string();
    let mut der = csr(&new_key(), &["a.lab.example"]);
    let last = der.len() - 1;
    der[last] ^= 1;
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": b64(&der)})))
            .await
    );
    assert_eq!(r.problem(), "badCSR");
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": "!!"}))).await
    );
    assert_eq!(r.problem(), "badCSR");
}

#[tokio::test]
async fn finalize_before_ready_is_order_not_ready() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let order = c.new_order(&lab, &["a.lab.example"]).await.json();
    let finalize = order["finalize"].as_str().unwrap().to_string();
    let der = csr(&new_key(), &["a.lab.example"]);
    let r = unchanged!(
        lab,
        c.post(&lab, &finalize, Some(&json!({"csr": b64(&der)})))
            .await
    );
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem(), "orderNotReady");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_parsing() {
    let lab = Lab::new();
    let big = vec![b'a'; lab.config.max_body_bytes + 1];
    let r = unchanged!(lab, lab.post_raw(&url("new-account"), big).await);
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn garbage_json_is_malformed() {
    let lab = Lab::new();
    for body in [
        &b"{not json"[..],
        b"[]",
        b"null",
        br#"{"protected":1}"#,
        b"",
    ] {
        let r = unchanged!(lab, lab.post_raw(&url("new-account"), body.to_vec()).await);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.problem(),
            "malformed",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A valid JWS whose payload is not JSON.
    let c = Client::new();
    let nonce = lab.nonce().await;
    let body = c.sign(&c.header(&url("new-account"), &nonce), "not json");
    let r = unchanged!(lab, lab.post_raw(&url("new-account"), body).await);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn the_wrong_content_type_is_415() {
    let lab = Lab::new();
    let c = Client::new();
    let nonce = lab.nonce().await;
    let body = c.sign(
        &c.header(&url("new-account"), &nonce),
        r#"{"termsOfServiceAgreed":true}"#,
    );
    let r = unchanged!(
        lab,
        lab.call(
            Request::post(url("new-account"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        )
        .await
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn new_account_creates_once_and_returns_the_existing_account() {
    let lab = Lab::with(|c| c.meta.terms_of_service = Some("https://ca.test/tos".into()));
    let mut c = Client::new();
    // onlyReturnExisting with no account.
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&json!({"onlyReturnExisting": true}))
        )
        .await
    );
    assert_eq!(r.problem(), "accountDoesNotExist");
    // Terms of service not agreed.
    let r = unchanged!(
        lab,
        c.post(&lab, &url("new-account"), Some(&json!({}))).await
    );
    assert_eq!(r.problem(), "malformed");
    // Unsupported contact.
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&json!({"termsOfServiceAgreed": true, "contact": ["tel:+1"]}))
        )
        .await
    );
    assert_eq!(r.problem(), "unsupportedContact");
    let created = c.register(&lab).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.json()["status"], "valid");
    assert_eq!(created.json()["contact"], json!(["mailto:ops@example.com"]));
    let kid = c.kid.take().unwrap();
    let again = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&json!({"onlyReturnExisting": true}))
        )
        .await
    );
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.location(), kid);
}

#[tokio::test]
async fn an_account_updates_its_contact_and_reads_itself() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let kid = c.kid.clone().unwrap();
    let r = c
        .post(
            &lab,
            &kid,
            Some(&json!({"contact": ["mailto:new@example.com"]})),
        )
        .await;
    assert_eq!(r.json()["contact"], json!(["mailto:new@example.com"]));
    let r = c.post(&lab, &kid, None).await;
    assert_eq!(r.json()["contact"], json!(["mailto:new@example.com"]));
    let r = unchanged!(
        lab,
        c.post(&lab, &kid, Some(&json!({"status": "revoked"})))
            .await
    );
    assert_eq!(r.problem(), "malformed");
    // Another account cannot read or change it.
    let mut other = Client::new();
    other.register(&lab).await;
    let r = unchanged!(
        lab,
        other
            .post(&lab, &kid, Some(&json!({"status": "deactivated"})))
            .await
    );
    assert_eq!(r.problem(), "unauthorized");
}

#[tokio::test]
async fn identifiers_outside_the_allow_list_are_rejected() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let r = unchanged!(lab, c.new_order(&lab, &["evil.example.org"]).await);
    assert_eq!(r.problem(), "rejectedIdentifier");
    let r = unchanged!(
        lab,
        c.new_order(&lab, &["evil.example.org", "*.lab.example"])
            .await
    );
    assert_eq!(r.problem(), "compound");
    assert_eq!(r.json()["subproblems"].as_array().unwrap().len(), 2);
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-order"),
            Some(&json!({"identifiers": [{"type": "ip", "value": "10.0.0.1"}]}))
        )
        .await
    );
    assert_eq!(r.problem(), "unsupportedIdentifier");
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-order"),
            Some(&json!({"identifiers": [{"type": "dns", "value": "a.lab.example"}], "notAfter": "2000-01-01T00:00:00Z"}))
        )
        .await
    );
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn a_full_order_issues_a_certificate_with_the_order_names() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let (order_url, order) = c
        .ready_order(&lab, &["b.lab.example", "A.lab.example"])
        .await;
    assert_eq!(
        order["identifiers"],
        json!([{"type": "dns", "value": "a.lab.example"}, {"type": "dns", "value": "b.lab.example"}])
    );
    let key = new_key();
    let der = csr(&key, &["a.lab.example", "b.lab.example"]);
    let r = c
        .post(
            &lab,
            order["finalize"].as_str().unwrap(),
            Some(&json!({"csr": b64(&der)})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let order = r.json();
    assert_eq!(order["status"], "valid");
    let cert_url = order["certificate"].as_str().unwrap().to_string();
    // Finalizing again is refused: the order is valid, not ready.
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            order["finalize"].as_str().unwrap(),
            Some(&json!({"csr": b64(&der)}))
        )
        .await
    );
    assert_eq!(r.problem(), "orderNotReady");
    let r = c.post(&lab, &cert_url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "application/pem-certificate-chain"
    );
    assert!(r
        .links()
        .contains(&format!("<{}>;rel=\"up\"", url("issuer"))));
    let chain = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(chain.ends_with(lab.pki.intermediate_pem()));
    // The order lists under the account; the certificate is the account's alone.
    let list = c
        .post(&lab, &format!("{}/orders", c.kid.as_ref().unwrap()), None)
        .await
        .json();
    assert_eq!(list["orders"], json!([order_url]));
    let mut other = Client::new();
    other.register(&lab).await;
    assert_eq!(
        other.post(&lab, &cert_url, None).await.problem(),
        "unauthorized"
    );
    assert_eq!(
        other.post(&lab, &order_url, None).await.problem(),
        "unauthorized"
    );
    // The issuer certificate is public.
    let r = lab
        .call(Request::get(url("issuer")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.body, lab.pki.intermediate_pem().as_bytes());
}

#[tokio::test]
async fn post_as_get_resources_refuse_a_payload() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let r = c.new_order(&lab, &["a.lab.example"]).await;
    let order_url = r.location();
    let r = unchanged!(lab, c.post(&lab, &order_url, Some(&json!({}))).await);
    assert_eq!(r.problem(), "malformed");
}

#[tokio::test]
async fn orders_and_authorizations_expire() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let r = c.new_order(&lab, &["a.lab.example"]).await;
    let order_url = r.location();
    let authz_url = r.json()["authorizations"][0].as_str().unwrap().to_string();
    lab.clock
        .advance(lab.config.order_lifetime + Duration::from_secs(1));
    let order = c.post(&lab, &order_url, None).await.json();
    assert_eq!(order["status"], "invalid");
    let authz = c.post(&lab, &authz_url, None).await.json();
    assert_eq!(authz["status"], "expired");
    // Answering a challenge of an expired authorization validates nothing.
    let ch = authz["challenges"][0]["url"].as_str().unwrap().to_string();
    let r = c.post(&lab, &ch, Some(&json!({}))).await;
    assert_eq!(r.json()["status"], "pending");
    assert!(r.links().contains(&format!("<{authz_url}>;rel=\"up\"")));
}

#[tokio::test]
async fn a_deactivated_authorization_invalidates_its_order() {
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let r = c.new_order(&lab, &["a.lab.example"]).await;
    let order_url = r.location();
    let authz_url = r.json()["authorizations"][0].as_str().unwrap().to_string();
    let r = unchanged!(
        lab,
        c.post(&lab, &authz_url, Some(&json!({"status": "valid"})))
            .await
    );
    assert_eq!(r.problem(), "malformed");
    let r = c
        .post(&lab, &authz_url, Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.json()["status"], "deactivated");
    assert_eq!(
        c.post(&lab, &order_url, None).await.json()["status"],
        "invalid"
    );
}

/// Issues a certificate and returns (client, DER, certificate key).
async fn issued(lab: &Lab) -> (Client, Vec<u8>, rcgen::KeyPair) {
    let mut c = Client::new();
    c.register(lab).await;
    let (_, order) = c.ready_order(lab, &["a.lab.example"]).await;
    let key = new_key();
    let r = c
        .post(
            lab,
            order["finalize"].as_str().unwrap(),
            Some(&json!({"csr": b64(&csr(&key, &["a.lab.example"]))})),
        )
        .await;
    let pem = c
        .post(lab, r.json()["certificate"].as_str().unwrap(), None)
        .await;
    let der = portcullis_ca::pki::pem::decode_first(
        std::str::from_utf8(&pem.body).unwrap(),
        "CERTIFICATE",
    )
    .unwrap();
    (c, der, key)
}

#[tokio::test]
async fn revocation_by_the_owning_account() {
    let lab = Lab::new();
    let (c, der, _) = issued(&lab).await;
    let mut stranger = Client::new();
    stranger.register(&lab).await;
    let body = json!({"certificate": b64(&der), "reason": 4});
    let r = unchanged!(
        lab,
        stranger.post(&lab, &url("revoke-cert"), Some(&body)).await
    );
    assert_eq!(r.problem(), "unauthorized");
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("revoke-cert"),
            Some(&json!({"certificate": b64(&der), "reason": 6}))
        )
        .await
    );
    assert_eq!(r.problem(), "badRevocationReason");
    let r = c.post(&lab, &url("revoke-cert"), Some(&body)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = unchanged!(lab, c.post(&lab, &url("revoke-cert"), Some(&body)).await);
    assert_eq!(r.problem(), "alreadyRevoked");
}

#[tokio::test]
async fn revocation_by_the_certificate_key() {
    let lab = Lab::new();
    let (_, der, key) = issued(&lab).await;
    // A client signing with the certificate's key as `jwk` (no account).
    let nonce = lab.nonce().await;
    let jwk = {
        let raw = key.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])})
    };
    let h = json!({"alg": "ES256", "nonce": nonce, "url": url("revoke-cert"), "jwk": jwk});
    let payload = json!({"certificate": b64(&der), "reason": 1}).to_string();
    let signing_input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let sig = rcgen::SigningKey::sign(&key, signing_input.as_bytes()).unwrap();
    // rcgen signs ECDSA as DER; JWS wants fixed-width r||s (RFC 7518 §3.4).
    let sig = der_ecdsa_to_fixed(&sig, 32);
    let body = json!({
        "protected": b64(h.to_string().as_bytes()),
        "payload": b64(payload.as_bytes()),
        "signature": b64(&sig),
    });
    // Some other key (a fresh client's jwk) may not revoke it.
    let other = Client::new();
    let r = unchanged!(
        lab,
        other
            .post(
                &lab,
                &url("revoke-cert"),
                Some(&json!({"certificate": b64(&der)}))
            )
            .await
    );
    assert_eq!(r.problem(), "unauthorized");
    let r = lab
        .post_raw(&url("revoke-cert"), body.to_string().into_bytes())
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn der_ecdsa_to_fixed(der: &[u8], n: usize) -> Vec<u8> {
    // SEQUENCE { INTEGER r, INTEGER s }, short lengths for P-256.
    let mut out = Vec::with_capacity(2 * n);
    let mut i = 2;
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let v = &der[i + 2..i + 2 + len];
        let v = if v.len() > n { &v[v.len() - n..] } else { v };
        out.extend(std::iter::repeat_n(0, n - v.len()));
        out.extend_from_slice(v);
        i += 2 + len;
    }
    out
}

#[tokio::test]
async fn a_crash_between_processing_and_commit_is_recovered_with_a_new_certificate() {
    use portcullis_ca::store::AcmeStore;
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let (order_url, order) = c.ready_order(&lab, &["a.lab.example"]).await;
    let id: i64 = order_url.rsplit('/').next().unwrap().parse().unwrap();
    // What finalize does before signing, and then the process "dies".
    let der = csr(&new_key(), &["a.lab.example"]);
    assert!(lab.store.begin_finalize(id, &der, 0).unwrap());
    let o = c.post(&lab, &order_url, None).await;
    assert_eq!(o.json()["status"], "processing");
    assert!(o.headers.contains_key("retry-after"));
    assert!(o.json().get("certificate").is_none());
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            order["finalize"].as_str().unwrap(),
            Some(&json!({"csr": b64(&der)}))
        )
        .await
    );
    assert_eq!(r.problem(), "orderNotReady");

    let (server, router) = lab.restart();
    let report = server.recover().await.unwrap();
    assert_eq!(report.orders_issued, vec![id]);
    let o = lab.store.order(id, 0).unwrap().unwrap();
    assert_eq!(o.status, portcullis_ca::acme::model::OrderStatus::Valid);
    let serial = o.cert_serial.unwrap();
    assert!(lab.store.certificate(&serial).unwrap().is_some());
    // Recovery is idempotent: nothing is left processing.
    assert_eq!(server.recover().await.unwrap(), Default::default());
    drop(router);
}

/// The inner JWS of a keyChange (RFC 8555 §7.3.5), signed by `new`.
fn key_change_inner(
    new: &Client,
    kid: &str,
    old_jwk: serde_json::Value,
    nonce: Option<&str>,
) -> serde_json::Value {
    let mut h = json!({"alg": "ES256", "url": url("key-change"), "jwk": new.jwk()});
    if let Some(n) = nonce {
        h["nonce"] = json!(n);
    }
    let payload = json!({"account": kid, "oldKey": old_jwk}).to_string();
    serde_json::from_slice(&new.sign(&h, &payload)).unwrap()
}

#[tokio::test]
async fn key_change_rolls_the_account_key() {
    let lab = Lab::new();
    let mut old = Client::new();
    old.register(&lab).await;
    let kid = old.kid.clone().unwrap();
    let mut new = Client::new();

    // Wrong oldKey, an inner nonce, and an `account` that is not the signer's: all refused.
    let stranger = Client::new();
    let r = unchanged!(
        lab,
        old.post(
            &lab,
            &url("key-change"),
            Some(&key_change_inner(&new, &kid, stranger.jwk(), None))
        )
        .await
    );
    assert_eq!(r.problem(), "unauthorized");
    let r = unchanged!(
        lab,
        old.post(
            &lab,
            &url("key-change"),
            Some(&key_change_inner(&new, &kid, old.jwk(), Some("x")))
        )
        .await
    );
    assert_eq!(r.problem(), "malformed");
    let r = unchanged!(
        lab,
        old.post(
            &lab,
            &url("key-change"),
            Some(&key_change_inner(
                &new,
                &url("account/999"),
                old.jwk(),
                None
            ))
        )
        .await
    );
    assert_eq!(r.problem(), "unauthorized");

    // A new key another account already holds: 409 with that account's URL.
    let mut holder = Client::new();
    holder.register(&lab).await;
    let r = unchanged!(
        lab,
        old.post(
            &lab,
            &url("key-change"),
            Some(&key_change_inner(&holder, &kid, old.jwk(), None))
        )
        .await
    );
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.location(), holder.kid.clone().unwrap());

    let r = old
        .post(
            &lab,
            &url("key-change"),
            Some(&key_change_inner(&new, &kid, old.jwk(), None)),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The old key no longer signs for the account; the new one does.
    let r = unchanged!(lab, old.new_order(&lab, &["a.lab.example"]).await);
    assert_eq!(r.problem(), "malformed");
    new.kid = Some(kid);
    assert_eq!(
        new.new_order(&lab, &["a.lab.example"]).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn renewal_info_suggests_a_window_and_replaces_is_checked() {
    let lab = Lab::new();
    let (c, der, _) = issued(&lab).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = portcullis_ca::pki::Serial::from_be_bytes(cert.raw_serial());
    let id = portcullis_ca::acme::cert_id_of(lab.pki.key_identifier(), &serial);
    let directory = lab
        .call(Request::get(url("directory")).body(Body::empty()).unwrap())
        .await
        .json();
    let ri = directory["renewalInfo"].as_str().unwrap().to_string();
    let r = lab
        .call(
            Request::get(format!("{ri}/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.contains_key("retry-after"));
    let w = r.json()["suggestedWindow"].clone();
    let start = portcullis_ca::clock::parse_rfc3339(w["start"].as_str().unwrap()).unwrap();
    let end = portcullis_ca::clock::parse_rfc3339(w["end"].as_str().unwrap()).unwrap();
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let start = portcullis_ca::clock::unix_seconds(start);
    assert_eq!(start, nb + (na - nb) * 2 / 3);
    assert!(end > portcullis_ca::clock::from_unix_seconds(start));
    // Unknown identifiers are 404.
    let r = lab
        .call(
            Request::get(format!("{ri}/AAAA.AQ"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // replaces: another account may not name this certificate; the owner may.
    let body = json!({"identifiers": [{"type": "dns", "value": "a.lab.example"}], "replaces": id});
    let mut other = Client::new();
    other.register(&lab).await;
    let r = unchanged!(lab, other.post(&lab, &url("new-order"), Some(&body)).await);
    assert_eq!(r.problem(), "unauthorized");
    assert_eq!(
        c.post(&lab, &url("new-order"), Some(&body)).await.status,
        StatusCode::CREATED
    );
    let mut bad = body.clone();
    bad["replaces"] = json!("AAAA.AQ");
    let r = unchanged!(lab, c.post(&lab, &url("new-order"), Some(&bad)).await);
    assert_eq!(r.problem(), "malformed");

    // Once revoked, the window is in the past: renew now.
    let r = c
        .post(
            &lab,
            &url("revoke-cert"),
            Some(&json!({"certificate": b64(&der)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = lab
        .call(
            Request::get(format!("{ri}/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let end = r.json()["suggestedWindow"]["end"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(portcullis_ca::clock::parse_rfc3339(&end).unwrap() < lab.clock.now());
}

#[tokio::test]
async fn the_state_snapshot_sees_every_change() {
    // Guards the `unchanged!` checks above against a snapshot that sees nothing.
    let lab = Lab::new();
    let before = lab.snapshot();
    let mut c = Client::new();
    c.register(&lab).await;
    let after_account = lab.snapshot();
    assert_ne!(before, after_account);
    c.new_order(&lab, &["a.lab.example"]).await;
    let after_order = lab.snapshot();
    assert_ne!(after_account, after_order);
    for table in ["accounts:", "orders:", "authorizations:", "challenges:"] {
        assert!(after_order.contains(table), "{table}");
    }
}

#[tokio::test]
async fn a_validation_interrupted_by_a_crash_is_run_again_on_recovery() {
    use portcullis_ca::store::AcmeStore;
    let lab = Lab::new();
    let mut c = Client::new();
    c.register(&lab).await;
    let r = c.new_order(&lab, &["a.lab.example"]).await;
    let order_url = r.location();
    let authz = c
        .post(&lab, r.json()["authorizations"][0].as_str().unwrap(), None)
        .await
        .json();
    let ch_url = authz["challenges"][0]["url"].as_str().unwrap();
    let ch_id: i64 = ch_url.rsplit('/').next().unwrap().parse().unwrap();
    // The challenge was answered and marked processing; the process died before validating.
    assert!(lab.store.start_challenge(ch_id, 0).unwrap());
    let (server, _router) = lab.restart();
    let report = server.recover().await.unwrap();
    assert_eq!(report.challenges_restarted, vec![ch_id]);
    assert_eq!(lab.settle(&c, &order_url).await["status"], "ready");
}

fn eab_binding(c: &Client, kid: &str, secret: &[u8]) -> serde_json::Value {
    let h = b64(
        json!({"alg": "HS256", "kid": kid, "url": url("new-account")})
            .to_string()
            .as_bytes(),
    );
    let p = b64(c.jwk().to_string().as_bytes());
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        format!("{h}.{p}").as_bytes(),
    );
    json!({"protected": h, "payload": p, "signature": b64(tag.as_ref())})
}

#[tokio::test]
async fn external_account_binding_gates_new_accounts() {
    let lab = Lab::with(|c| {
        c.meta.external_account_required = true;
        c.eab_keys = [("ext-1".to_string(), b"s3cret".to_vec())].into();
    });
    let d = lab
        .call(Request::get(url("directory")).body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(d["meta"]["externalAccountRequired"], true);
    let c = Client::new();
    let new_account = |binding: Option<serde_json::Value>| {
        let mut p = json!({"termsOfServiceAgreed": true});
        if let Some(b) = binding {
            p["externalAccountBinding"] = b;
        }
        p
    };
    let r = unchanged!(
        lab,
        c.post(&lab, &url("new-account"), Some(&new_account(None)))
            .await
    );
    assert_eq!(r.problem(), "externalAccountRequired");
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&new_account(Some(eab_binding(&c, "ext-1", b"wrong"))))
        )
        .await
    );
    assert_eq!(r.problem(), "unauthorized");
    // A binding made for another key does not transfer.
    let other = Client::new();
    let r = unchanged!(
        lab,
        c.post(
            &lab,
            &url("new-account"),
            Some(&new_account(Some(eab_binding(&other, "ext-1", b"s3cret"))))
        )
        .await
    );
    assert_eq!(r.problem(), "unauthorized");
    let r = c
        .post(
            &lab,
            &url("new-account"),
            Some(&new_account(Some(eab_binding(&c, "ext-1", b"s3cret")))),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The key id is spent: a second account cannot bind it.
    let r = unchanged!(
        lab,
        other
            .post(
                &lab,
                &url("new-account"),
                Some(&new_account(Some(eab_binding(&other, "ext-1", b"s3cret"))))
            )
            .await
    );
    assert_eq!(r.problem(), "unauthorized");
}
