//! `fmt = "apple"`: Apple Managed Device Attestation (draft-ietf-acme-device-attest, Apple
//! format; Apple Platform Deployment, "Managed Device Attestation").
//!
//! The statement is `{x5c: [leaf, "Apple Enterprise Attestation Sub CA 1", ...]}`; the leaf
//! is issued by Apple for a key in the Secure Enclave and carries the device's properties as
//! private extensions whose extnValue holds raw bytes (no inner DER):
//! - 1.2.840.113635.100.8.11.1: freshness code, SHA-256 of the ACME challenge token. It is
//!   **mandatory** here: step-ca skips the check when the extension is absent, which lets an
//!   old attestation be replayed; we refuse.
//! - 1.2.840.113635.100.8.9.1 serial number, 100.8.9.2 UDID (at least one must be present).
//! - 1.2.840.113635.100.8.10.1 OS version, 100.8.10.2 sepOS version, 100.8.10.3 LLB version.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;

use super::chain::{self, ChainPolicy};
use super::{
    err, AttObj, AttestError, AttestationFormat, Attested, Details, DeviceIdentifier, Rule,
};

/// Apple Enterprise Attestation Root CA (P-384, 2022–2047), as published by Apple.
pub const APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_PEM: &str =
    include_str!("roots/apple-enterprise-attestation-root-ca.pem");

pub const OID_APPLE_NONCE: &str = "1.2.840.113635.100.8.11.1";
pub const OID_APPLE_SERIAL: &str = "1.2.840.113635.100.8.9.1";
pub const OID_APPLE_UDID: &str = "1.2.840.113635.100.8.9.2";
const OID_APPLE_9_4: &str = "1.2.840.113635.100.8.9.4";
const OID_APPLE_OS_VERSION: &str = "1.2.840.113635.100.8.10.1";
const OID_APPLE_SEP_OS_VERSION: &str = "1.2.840.113635.100.8.10.2";
const OID_APPLE_LLB_VERSION: &str = "1.2.840.113635.100.8.10.3";

/// The `apple` verifier and its roots.
#[derive(Debug, Clone)]
pub struct AppleVerifier {
    pub roots: Vec<Vec<u8>>,
    pub intermediates: Vec<Vec<u8>>,
}

impl AppleVerifier {
    pub fn with_default_roots() -> Self {
        Self::with_roots(
            super::pem_certificates(APPLE_ENTERPRISE_ATTESTATION_ROOT_CA_PEM).unwrap_or_default(),
        )
    }

    pub fn with_roots(roots: Vec<Vec<u8>>) -> Self {
        Self {
            roots,
            intermediates: Vec::new(),
        }
    }
}

/// The challenge token inside a key authorization `token "." thumbprint` (RFC 8555 §8.1); a
/// value without a dot is taken as the token itself.
pub fn token_of(key_authorization: &[u8]) -> &[u8] {
    match key_authorization.iter().position(|&b| b == b'.') {
        Some(i) => &key_authorization[..i],
        None => key_authorization,
    }
}

fn ext_value<'a>(cert: &'a X509Certificate<'_>, oid: &str) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
        .map(|e| e.value)
}

fn ext_text(cert: &X509Certificate<'_>, oid: &str) -> Result<Option<String>, AttestError> {
    match ext_value(cert, oid) {
        None => Ok(None),
        Some(v) => match std::str::from_utf8(v) {
            Ok(s) if !s.is_empty() && !s.chars().any(char::is_control) => Ok(Some(s.to_owned())),
            _ => err(
                Rule::AppleExtension,
                format!("apple: extension {oid} is not printable UTF-8"),
            ),
        },
    }
}

impl AttestationFormat for AppleVerifier {
    fn fmt(&self) -> &'static str {
        "apple"
    }

    fn verify(
        &self,
        att: &AttObj,
        key_authorization: &[u8],
        now: SystemTime,
    ) -> Result<Attested, AttestError> {
        super::check_fmt(att, "apple")?;
        let x5c = att.att_stmt.x5c("apple")?;
        let path = chain::verify_chain(
            "apple",
            &x5c,
            &self.intermediates,
            &self.roots,
            now,
            &ChainPolicy::default(),
        )?;
        let leaf = chain::parse_certificate(x5c[0], "apple: x5c[0]")?;
        super::check_leaf_not_ca("apple", &leaf)?;

        // Freshness: the nonce extension equals SHA-256(token). Mandatory.
        let Some(nonce) = ext_value(&leaf, OID_APPLE_NONCE) else {
            return err(
                Rule::AppleFreshnessMissing,
                "apple: the leaf has no freshness code 1.2.840.113635.100.8.11.1; an attestation without it could be a replay, refused",
            );
        };
        let expected = ring::digest::digest(&ring::digest::SHA256, token_of(key_authorization));
        if nonce != expected.as_ref() {
            return err(
                Rule::AppleFreshnessMismatch,
                "apple: freshness code 1.2.840.113635.100.8.11.1 is not SHA-256 of the challenge token",
            );
        }

        let mut identifiers = Vec::new();
        if let Some(serial) = ext_text(&leaf, OID_APPLE_SERIAL)? {
            identifiers.push(DeviceIdentifier::PermanentIdentifier {
                value: serial,
                assigner: None,
                source: "apple 1.2.840.113635.100.8.9.1 (serial number)",
            });
        }
        if let Some(udid) = ext_text(&leaf, OID_APPLE_UDID)? {
            identifiers.push(DeviceIdentifier::PermanentIdentifier {
                value: udid,
                assigner: None,
                source: "apple 1.2.840.113635.100.8.9.2 (UDID)",
            });
        }
        if identifiers.is_empty() {
            return err(
                Rule::AppleIdentifierMissing,
                "apple: the leaf carries neither a serial number (100.8.9.1) nor a UDID (100.8.9.2)",
            );
        }

        let mut details = Details {
            platform: "Apple".into(),
            manufacturer: Some("Apple".into()),
            os_version: ext_text(&leaf, OID_APPLE_OS_VERSION)?,
            sep_os_version: ext_text(&leaf, OID_APPLE_SEP_OS_VERSION)?,
            ..Details::default()
        };
        if let Some(v) = ext_text(&leaf, OID_APPLE_LLB_VERSION)? {
            details.extra.insert("apple.llbVersion".into(), v);
        }
        if let Some(v) = ext_text(&leaf, OID_APPLE_9_4)? {
            details.model = Some(v);
        }
        Ok(Attested {
            format: "apple",
            identifiers,
            public_key_spki: leaf.public_key().raw.to_vec(),
            chain: path,
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_apple_token_of_key_authorization() {
        assert_eq!(token_of(b"tok.thumb"), b"tok");
        assert_eq!(token_of(b"tok"), b"tok");
        assert_eq!(token_of(b".x"), b"");
    }

    #[test]
    fn attest_apple_default_root_is_embedded() {
        let v = AppleVerifier::with_default_roots();
        assert_eq!(v.roots.len(), 1);
        let root = chain::parse_certificate(&v.roots[0], "root").unwrap();
        assert!(root
            .subject()
            .to_string()
            .contains("Apple Enterprise Attestation Root CA"));
    }
}
