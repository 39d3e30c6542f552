//! JSON Web Keys of ACME accounts: the key types RFC 8555 clients use, and the RFC 7638
//! thumbprint that names an account key in key authorizations (RFC 8555 §8.1).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Smallest RSA modulus accepted for an account key (NIST SP 800-57: 2048 bits until 2030).
const MIN_RSA_BITS: usize = 2048;

/// A public key from a JWK, validated: coordinates on the right curve length, RSA big enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    P256 { x: Vec<u8>, y: Vec<u8> },
    P384 { x: Vec<u8>, y: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ed25519 { x: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("jwk is not a JSON object")]
    NotAnObject,
    #[error("jwk member `{0}` is missing or not a string")]
    Missing(&'static str),
    #[error("jwk member `{0}` is not base64url")]
    Encoding(&'static str),
    #[error("jwk key type `{0}` is not supported (EC P-256/P-384, RSA, OKP Ed25519)")]
    Unsupported(String),
    #[error("jwk member `{0}` has the wrong length for its curve")]
    Length(&'static str),
    #[error("RSA modulus of {0} bits is below the {MIN_RSA_BITS}-bit minimum")]
    RsaTooSmall(usize),
    #[error("jwk carries private key material")]
    Private,
}

impl PublicJwk {
    pub fn from_json(v: &serde_json::Value) -> Result<Self, JwkError> {
        let obj = v.as_object().ok_or(JwkError::NotAnObject)?;
        // A client that sends its private key has made a mistake we must not reward.
        if obj.contains_key("d") || obj.contains_key("p") {
            return Err(JwkError::Private);
        }
        let s = |k: &'static str| {
            obj.get(k)
                .and_then(|v| v.as_str())
                .ok_or(JwkError::Missing(k))
        };
        let b =
            |k: &'static str| s(k).and_then(|v| B64.decode(v).map_err(|_| JwkError::Encoding(k)));
        match s("kty")? {
            "EC" => {
                let (x, y) = (b("x")?, b("y")?);
                let len = match s("crv")? {
                    "P-256" => 32,
                    "P-384" => 48,
                    other => return Err(JwkError::Unsupported(format!("EC {other}"))),
                };
                if x.len() != len {
                    return Err(JwkError::Length("x"));
                }
                if y.len() != len {
                    return Err(JwkError::Length("y"));
                }
                Ok(if len == 32 {
                    PublicJwk::P256 { x, y }
                } else {
                    PublicJwk::P384 { x, y }
                })
            }
            "RSA" => {
                let (n, e) = (b("n")?, b("e")?);
                let n_trimmed = trim_leading_zeros(&n);
                // An empty (or all-zero) modulus is 0 bits. Computing `len * 8 - 8` for it
                // would underflow: a panic in debug builds, and in release a wrapped, huge
                // "size" that passed the minimum check.
                let bits = match n_trimmed.first() {
                    Some(b) => n_trimmed.len() * 8 - b.leading_zeros() as usize,
                    None => 0,
                };
                if bits < MIN_RSA_BITS {
                    return Err(JwkError::RsaTooSmall(bits));
                }
                if trim_leading_zeros(&e).is_empty() {
                    return Err(JwkError::Length("e"));
                }
                Ok(PublicJwk::Rsa {
                    n: n_trimmed.to_vec(),
                    e: trim_leading_zeros(&e).to_vec(),
                })
            }
            "OKP" => match s("crv")? {
                "Ed25519" => {
                    let x = b("x")?;
                    if x.len() != 32 {
                        return Err(JwkError::Length("x"));
                    }
                    Ok(PublicJwk::Ed25519 { x })
                }
                other => Err(JwkError::Unsupported(format!("OKP {other}"))),
            },
            other => Err(JwkError::Unsupported(other.to_string())),
        }
    }

    /// The JWS `alg` this key signs with; a JWS whose `alg` differs is refused.
    pub fn alg(&self) -> &'static str {
        match self {
            PublicJwk::P256 { .. } => "ES256",
            PublicJwk::P384 { .. } => "ES384",
            PublicJwk::Rsa { .. } => "RS256",
            PublicJwk::Ed25519 { .. } => "EdDSA",
        }
    }

    /// Verifies `sig` over `msg` with this key. ECDSA signatures are the fixed-width r||s of
    /// RFC 7518 §3.4, not DER.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicJwk::P256 { x, y } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point(x, y))
                    .verify(msg, sig)
                    .is_ok()
            }
            PublicJwk::P384 { x, y } => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point(x, y))
                    .verify(msg, sig)
                    .is_ok()
            }
            PublicJwk::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            PublicJwk::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
        }
    }

    /// RFC 7638 §3: the required members only, in lexicographic order, no white space.
    pub fn thumbprint_json(&self) -> String {
        match self {
            PublicJwk::P256 { x, y } | PublicJwk::P384 { x, y } => {
                let crv = if matches!(self, PublicJwk::P256 { .. }) {
                    "P-256"
                } else {
                    "P-384"
                };
                format!(
                    r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                    B64.encode(x),
                    B64.encode(y)
                )
            }
            PublicJwk::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64.encode(e),
                B64.encode(n)
            ),
            PublicJwk::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64.encode(x))
            }
        }
    }

    /// base64url(SHA-256(thumbprint JSON)), as used in key authorizations.
    pub fn thumbprint(&self) -> String {
        B64.encode(Sha256::digest(self.thumbprint_json().as_bytes()))
    }
}

fn point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + x.len() + y.len());
    p.push(0x04);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    p
}

fn trim_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = PublicJwk::from_json(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn refuses_malformed_keys() {
        let cases = [
            (json!("x"), JwkError::NotAnObject),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                JwkError::Length("x"),
            ),
            (
                json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
                JwkError::Unsupported("EC P-521".into()),
            ),
            (
                json!({"kty": "oct", "k": "AA"}),
                JwkError::Unsupported("oct".into()),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"}),
                JwkError::Encoding("x"),
            ),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
                JwkError::RsaTooSmall(17),
            ),
            (
                json!({"kty": "RSA", "n": "", "e": "AQAB"}),
                JwkError::RsaTooSmall(0),
            ),
            (
                json!({"kty": "RSA", "n": "AAAA", "e": "AQAB"}),
                JwkError::RsaTooSmall(0),
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519"}),
                JwkError::Missing("x"),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}),
                JwkError::Private,
            ),
        ];
        for (jwk, want) in cases {
            assert_eq!(PublicJwk::from_json(&jwk), Err(want), "{jwk}");
        }
    }
}
