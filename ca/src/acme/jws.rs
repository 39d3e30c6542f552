//! Verification of ACME request bodies: JWS in flattened JSON serialization (RFC 8555 §6.2).
//!
//! The order of checks follows the RFC: structure, then the protected header (alg, nonce, url,
//! jwk xor kid), then the signature. Nonce consumption and account lookup are the caller's: this
//! module reports what the header claims and verifies the signature with the key it is given.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{Map, Value};

use super::jwk::{JwkError, PublicJwk};
use super::problem::{Problem, ProblemType};

/// The algorithms RFC 8555 §6.2 lets us accept: asymmetric only, never `none` or a MAC.
pub const ACCEPTED_ALGS: [&str; 4] = ["ES256", "ES384", "RS256", "EdDSA"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Outer,
    KeyChangeInner,
}

/// Who signed: a new key (newAccount, revocation by certificate key) or an account URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    Jwk(PublicJwk),
    Kid(String),
}

/// A JWS whose structure and header are valid, signature not yet checked.
#[derive(Debug, Clone)]
pub struct ParsedJws {
    pub alg: String,
    pub nonce: String,
    pub url: String,
    pub signer: Signer,
    /// The decoded payload; empty for POST-as-GET (RFC 8555 §6.3).
    pub payload: Vec<u8>,
    /// Other protected header members (e.g. EAB's), for callers that need them.
    pub header: Map<String, Value>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl ParsedJws {
    /// Parses a request body. `request_url` is the URL the request was sent to; the header's
    /// `url` must equal it (RFC 8555 §6.4).
    pub fn parse(body: &[u8], request_url: &str) -> Result<Self, Problem> {
        Self::parse_with(body, request_url, Layer::Outer)
    }

    /// Parses the inner JWS of a keyChange request (RFC 8555 §7.3.5): signed by the new key,
    /// which it carries as `jwk`; same `url` as the outer JWS; no `nonce` (the outer JWS's
    /// nonce already protects against replay).
    pub fn parse_key_change_inner(body: &[u8], request_url: &str) -> Result<Self, Problem> {
        Self::parse_with(body, request_url, Layer::KeyChangeInner)
    }

    fn parse_with(body: &[u8], request_url: &str, layer: Layer) -> Result<Self, Problem> {
        let outer: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| Problem::malformed(format!("body is not a JSON object: {e}")))?;
        // §6.2: flattened JSON only, no unprotected header.
        if outer.contains_key("header") {
            return Err(Problem::malformed("JWS unprotected header is not allowed"));
        }
        if outer.contains_key("signatures") {
            return Err(Problem::malformed(
                "JWS general serialization is not allowed; use flattened JSON",
            ));
        }
        let part = |k: &str| -> Result<&str, Problem> {
            outer
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::malformed(format!("JWS `{k}` missing")))
        };
        let (protected_b64, payload_b64, sig_b64) =
            (part("protected")?, part("payload")?, part("signature")?);
        let protected = B64
            .decode(protected_b64)
            .map_err(|_| Problem::malformed("JWS protected header is not base64url"))?;
        let mut header: Map<String, Value> = serde_json::from_slice(&protected)
            .map_err(|_| Problem::malformed("JWS protected header is not a JSON object"))?;
        let payload = B64
            .decode(payload_b64)
            .map_err(|_| Problem::malformed("JWS payload is not base64url"))?;
        let signature = B64
            .decode(sig_b64)
            .map_err(|_| Problem::malformed("JWS signature is not base64url"))?;

        // RFC 7515 §4.1.11: a `crit` extension we do not understand must be refused. We
        // understand none (notably not RFC 7797 `b64`, which would change the signing input).
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(Problem::malformed(
                "JWS `crit`/`b64` header extensions are not supported",
            ));
        }
        let alg = take_str(&mut header, "alg")?;
        if !ACCEPTED_ALGS.contains(&alg.as_str()) {
            return Err(Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!(
                    "alg `{alg}` is not accepted; use one of {}",
                    ACCEPTED_ALGS.join(", ")
                ),
            ));
        }
        let nonce = match (layer, header.remove("nonce")) {
            (Layer::Outer, Some(Value::String(n))) if !n.is_empty() => n,
            (Layer::Outer, _) => {
                return Err(Problem::new(
                    ProblemType::BadNonce,
                    "JWS header carries no nonce",
                ))
            }
            (Layer::KeyChangeInner, None) => String::new(),
            (Layer::KeyChangeInner, Some(_)) => {
                return Err(Problem::malformed(
                    "the inner keyChange JWS must not carry a nonce",
                ))
            }
        };
        let url = take_str(&mut header, "url")?;
        if url != request_url {
            return Err(Problem::new(
                ProblemType::Unauthorized,
                "JWS header `url` does not match the request URL",
            ));
        }
        let signer = match (header.remove("jwk"), header.remove("kid")) {
            (Some(_), Some(_)) => {
                return Err(Problem::malformed("JWS header has both `jwk` and `kid`"))
            }
            (None, None) => {
                return Err(Problem::malformed("JWS header has neither `jwk` nor `kid`"))
            }
            (Some(jwk), None) => Signer::Jwk(PublicJwk::from_json(&jwk).map_err(bad_key)?),
            (None, Some(Value::String(kid))) => Signer::Kid(kid),
            (None, Some(_)) => return Err(Problem::malformed("JWS `kid` is not a string")),
        };
        if layer == Layer::KeyChangeInner && !matches!(signer, Signer::Jwk(_)) {
            return Err(Problem::malformed(
                "the inner keyChange JWS must carry the new key as `jwk`",
            ));
        }
        if let Signer::Jwk(key) = &signer {
            if key.alg() != alg {
                return Err(Problem::new(
                    ProblemType::BadSignatureAlgorithm,
                    format!("alg `{alg}` does not fit the {} key", key.alg()),
                ));
            }
        }
        let mut signing_input = Vec::with_capacity(protected_b64.len() + 1 + payload_b64.len());
        signing_input.extend_from_slice(protected_b64.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(payload_b64.as_bytes());
        Ok(Self {
            alg,
            nonce,
            url,
            signer,
            payload,
            header,
            signing_input,
            signature,
        })
    }

    /// Checks the signature with `key` (the `jwk` itself, or the account key `kid` names).
    pub fn verify(&self, key: &PublicJwk) -> Result<(), Problem> {
        if key.alg() != self.alg {
            return Err(Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!(
                    "alg `{}` does not fit the account's {} key",
                    self.alg,
                    key.alg()
                ),
            ));
        }
        if key.verify(&self.signing_input, &self.signature) {
            Ok(())
        } else {
            Err(Problem::malformed("JWS signature does not verify"))
        }
    }

    /// True for POST-as-GET (RFC 8555 §6.3): the payload is the empty string.
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload as a JSON object (empty payloads are refused: use `is_post_as_get` first).
    pub fn payload_json(&self) -> Result<Map<String, Value>, Problem> {
        serde_json::from_slice(&self.payload)
            .map_err(|_| Problem::malformed("JWS payload is not a JSON object"))
    }
}

fn take_str(header: &mut Map<String, Value>, k: &'static str) -> Result<String, Problem> {
    match header.remove(k) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(Problem::malformed(format!(
            "JWS protected header `{k}` missing or not a string"
        ))),
    }
}

fn bad_key(e: JwkError) -> Problem {
    Problem::new(ProblemType::BadPublicKey, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    const URL: &str = "https://ca.example/acme/new-order";

    struct Client {
        key: EcdsaKeyPair,
    }

    impl Client {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self {
                key: EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap(),
            }
        }
        fn jwk(&self) -> Value {
            let p = self.key.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
        }
        fn sign(&self, header: Value, payload: &str) -> Vec<u8> {
            let h = B64.encode(header.to_string());
            let p = B64.encode(payload);
            let sig = self
                .key
                .sign(&SystemRandom::new(), format!("{h}.{p}").as_bytes())
                .unwrap();
            json!({"protected": h, "payload": p, "signature": B64.encode(sig.as_ref())})
                .to_string()
                .into_bytes()
        }
        fn header(&self) -> Value {
            json!({"alg": "ES256", "nonce": "n1", "url": URL, "jwk": self.jwk()})
        }
    }

    fn refused(body: &[u8]) -> ProblemType {
        ParsedJws::parse(body, URL).map(|_| ()).unwrap_err().kind
    }

    #[test]
    fn a_well_formed_request_verifies() {
        let c = Client::new();
        let jws = ParsedJws::parse(&c.sign(c.header(), r#"{"a":1}"#), URL).unwrap();
        let Signer::Jwk(key) = &jws.signer else {
            panic!("jwk signer expected")
        };
        jws.verify(key).unwrap();
        assert_eq!(jws.nonce, "n1");
        assert_eq!(jws.payload_json().unwrap()["a"], 1);
    }

    #[test]
    fn a_signature_by_another_key_fails() {
        let (c, other) = (Client::new(), Client::new());
        let jws = ParsedJws::parse(&c.sign(c.header(), "{}"), URL).unwrap();
        let key = PublicJwk::from_json(&other.jwk()).unwrap();
        assert_eq!(jws.verify(&key).unwrap_err().kind, ProblemType::Malformed);
    }

    #[test]
    fn a_tampered_payload_fails() {
        let c = Client::new();
        let body = c.sign(c.header(), r#"{"a":1}"#);
        let mut outer: Value = serde_json::from_slice(&body).unwrap();
        outer["payload"] = json!(B64.encode(r#"{"a":2}"#));
        let jws = ParsedJws::parse(outer.to_string().as_bytes(), URL).unwrap();
        let Signer::Jwk(key) = &jws.signer else {
            panic!()
        };
        assert!(jws.verify(key).is_err());
    }

    #[test]
    fn header_rules_of_rfc8555_section_6_2() {
        let c = Client::new();
        let mut h = c.header();
        h["alg"] = json!("none");
        assert_eq!(
            refused(&c.sign(h, "{}")),
            ProblemType::BadSignatureAlgorithm
        );
        let mut h = c.header();
        h["alg"] = json!("HS256");
        assert_eq!(
            refused(&c.sign(h, "{}")),
            ProblemType::BadSignatureAlgorithm
        );
        let mut h = c.header();
        h["alg"] = json!("RS256");
        assert_eq!(
            refused(&c.sign(h, "{}")),
            ProblemType::BadSignatureAlgorithm
        );
        let mut h = c.header();
        h["kid"] = json!("https://ca.example/acme/acct/1");
        assert_eq!(refused(&c.sign(h, "{}")), ProblemType::Malformed);
        let mut h = c.header();
        h.as_object_mut().unwrap().remove("jwk");
        assert_eq!(refused(&c.sign(h, "{}")), ProblemType::Malformed);
        let mut h = c.header();
        h.as_object_mut().unwrap().remove("nonce");
        assert_eq!(refused(&c.sign(h, "{}")), ProblemType::BadNonce);
        let mut h = c.header();
        h["url"] = json!("https://ca.example/acme/other");
        assert_eq!(refused(&c.sign(h, "{}")), ProblemType::Unauthorized);
        let mut h = c.header();
        h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(refused(&c.sign(h, "{}")), ProblemType::BadPublicKey);
    }

    #[test]
    fn structural_garbage_is_malformed() {
        let c = Client::new();
        let mut with_header: Value = serde_json::from_slice(&c.sign(c.header(), "{}")).unwrap();
        with_header["header"] = json!({"kid": "x"});
        for body in [
            b"".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            br#"{"protected":"!!","payload":"","signature":""}"#.to_vec(),
            br#"{"protected":"e30","payload":""}"#.to_vec(),
            br#"{"signatures":[]}"#.to_vec(),
            with_header.to_string().into_bytes(),
        ] {
            assert_eq!(
                refused(&body),
                ProblemType::Malformed,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn the_inner_key_change_jws_has_no_nonce_and_a_jwk() {
        let c = Client::new();
        let mut h = c.header();
        h.as_object_mut().unwrap().remove("nonce");
        let jws = ParsedJws::parse_key_change_inner(&c.sign(h.clone(), "{}"), URL).unwrap();
        assert!(jws.nonce.is_empty());
        assert!(
            ParsedJws::parse_key_change_inner(&c.sign(c.header(), "{}"), URL)
                .unwrap_err()
                .kind
                == ProblemType::Malformed
        );
        h.as_object_mut().unwrap().remove("jwk");
        h["kid"] = json!("https://ca.example/acme/account/1");
        assert_eq!(
            ParsedJws::parse_key_change_inner(&c.sign(h, "{}"), URL)
                .unwrap_err()
                .kind,
            ProblemType::Malformed
        );
    }

    #[test]
    fn post_as_get_has_an_empty_payload() {
        let c = Client::new();
        let jws = ParsedJws::parse(&c.sign(c.header(), ""), URL).unwrap();
        assert!(jws.is_post_as_get());
    }
}
