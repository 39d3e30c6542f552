//! External account binding (RFC 8555 §7.3.4): a newAccount request proves, with a MAC key
//! the CA operator handed out beforehand, that the new ACME account belongs to a known
//! external account. This is how an enterprise CA decides who may create accounts at all.
//!
//! The binding is a JWS inside the newAccount payload: MAC'd (HS256/384/512) with the EAB key
//! named by `kid`, `url` equal to the newAccount URL, no `nonce`, and the account's own JWK as
//! its payload, so it cannot be replayed for another key.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use serde_json::{Map, Value};

use super::jwk::PublicJwk;
use super::problem::{Problem, ProblemType};

/// Verifies `binding` for `account_key`; returns the EAB key id it was made with.
pub fn verify(
    binding: &Value,
    account_key: &PublicJwk,
    new_account_url: &str,
    keys: &HashMap<String, Vec<u8>>,
) -> Result<String, Problem> {
    let outer = binding
        .as_object()
        .ok_or_else(|| Problem::malformed("externalAccountBinding must be a JWS object"))?;
    let part = |k: &str| -> Result<&str, Problem> {
        outer
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed(format!("externalAccountBinding `{k}` missing")))
    };
    let (protected_b64, payload_b64, sig_b64) =
        (part("protected")?, part("payload")?, part("signature")?);
    let header: Map<String, Value> = B64
        .decode(protected_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| Problem::malformed("externalAccountBinding header is not base64url JSON"))?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => hmac::HMAC_SHA256,
        Some("HS384") => hmac::HMAC_SHA384,
        Some("HS512") => hmac::HMAC_SHA512,
        _ => {
            return Err(Problem::new(
                ProblemType::BadSignatureAlgorithm,
                "externalAccountBinding alg must be HS256, HS384 or HS512",
            ))
        }
    };
    if header.contains_key("nonce") {
        return Err(Problem::malformed(
            "externalAccountBinding must not carry a nonce",
        ));
    }
    if header.get("url").and_then(Value::as_str) != Some(new_account_url) {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "externalAccountBinding `url` is not the newAccount URL",
        ));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("externalAccountBinding `kid` missing"))?;
    let bound_key = B64
        .decode(payload_b64)
        .ok()
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .ok_or_else(|| Problem::malformed("externalAccountBinding payload is not a JWK"))
        .and_then(|v| {
            PublicJwk::from_json(&v)
                .map_err(|e| Problem::new(ProblemType::BadPublicKey, e.to_string()))
        })?;
    let signature = B64
        .decode(sig_b64)
        .map_err(|_| Problem::malformed("externalAccountBinding signature is not base64url"))?;
    // Unknown key id and wrong MAC get the same answer: no oracle for valid key ids.
    let refused = || {
        Problem::new(
            ProblemType::Unauthorized,
            "externalAccountBinding does not verify",
        )
    };
    let secret = keys.get(kid).ok_or_else(refused)?;
    let input = format!("{protected_b64}.{payload_b64}");
    hmac::verify(&hmac::Key::new(alg, secret), input.as_bytes(), &signature)
        .map_err(|_| refused())?;
    if &bound_key != account_key {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "externalAccountBinding binds another key than the account's",
        ));
    }
    Ok(kid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "https://ca.example/acme/new-account";

    fn key(b: u8) -> PublicJwk {
        PublicJwk::Ed25519 { x: vec![b; 32] }
    }

    fn binding(alg: &str, kid: &str, url: &str, jwk: &PublicJwk, secret: &[u8]) -> Value {
        let h = B64.encode(json!({"alg": alg, "kid": kid, "url": url}).to_string());
        let p = B64.encode(jwk.thumbprint_json());
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            format!("{h}.{p}").as_bytes(),
        );
        json!({"protected": h, "payload": p, "signature": B64.encode(tag.as_ref())})
    }

    #[test]
    fn a_binding_verifies_only_for_its_key_url_and_secret() {
        let keys: HashMap<String, Vec<u8>> = [("ext-1".to_string(), b"secret".to_vec())].into();
        let b = binding("HS256", "ext-1", URL, &key(1), b"secret");
        assert_eq!(verify(&b, &key(1), URL, &keys).unwrap(), "ext-1");
        let kind = |b: &Value, k: &PublicJwk| verify(b, k, URL, &keys).unwrap_err().kind;
        assert_eq!(kind(&b, &key(2)), ProblemType::Unauthorized);
        assert_eq!(
            kind(&binding("HS256", "ext-1", URL, &key(1), b"wrong"), &key(1)),
            ProblemType::Unauthorized
        );
        assert_eq!(
            kind(&binding("HS256", "ext-2", URL, &key(1), b"secret"), &key(1)),
            ProblemType::Unauthorized
        );
        assert_eq!(
            kind(
                &binding(
                    "HS256",
                    "ext-1",
                    "https://ca.example/other",
                    &key(1),
                    b"secret"
                ),
                &key(1)
            ),
            ProblemType::Unauthorized
        );
        assert_eq!(
            kind(&binding("none", "ext-1", URL, &key(1), b"secret"), &key(1)),
            ProblemType::BadSignatureAlgorithm
        );
        assert_eq!(kind(&json!("x"), &key(1)), ProblemType::Malformed);
    }
}
