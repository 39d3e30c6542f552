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
use super::checks::{need, ChallengeForm, CheckId, Need, Run};
use super::{
    err, AttObj, AttestError, AttestationFormat, Attested, Binding, DeviceIdentifier, Findings,
    Rule,
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

const fn id(name: &'static str, about: &'static str) -> CheckId {
    CheckId { name, about }
}

pub const FMT: CheckId = id("apple.fmt", "attObj.fmt is \"apple\"");
pub const CHAIN: CheckId = id(
    "apple.chain",
    "x5c chains to a configured Apple Enterprise Attestation root (RFC 5280 §6.1)",
);
pub const LEAF_NOT_CA: CheckId = id(
    "apple.leaf.notCa",
    "the attested key's certificate x5c[0] is not a CA (RFC 5280 §4.2.1.9)",
);
pub const FRESHNESS_PRESENT: CheckId = id(
    "apple.freshness.present",
    "x5c[0] carries the freshness code 1.2.840.113635.100.8.11.1 (mandatory here: no replay)",
);
pub const FRESHNESS: CheckId = id(
    "apple.freshness",
    "the freshness code is SHA-256 of the challenge token",
);
pub const IDENTIFIERS: CheckId = id(
    "apple.identifiers",
    "x5c[0] carries a serial number (100.8.9.1) or UDID (100.8.9.2) as printable text",
);
pub const PROPERTIES: CheckId = id(
    "apple.properties",
    "OS, sepOS, LLB versions and model (100.8.10.x, 100.8.9.4) are printable text",
);

/// Every check of the format, in the order it runs them.
pub const CHECKS: &[CheckId] = &[
    FMT,
    CHAIN,
    LEAF_NOT_CA,
    FRESHNESS_PRESENT,
    FRESHNESS,
    IDENTIFIERS,
    PROPERTIES,
];

/// Whether a certificate carries Apple attestation extensions (1.2.840.113635.100.8.x), for
/// telling the format of a bare chain.
pub fn is_apple_attestation(cert: &X509Certificate<'_>) -> bool {
    cert.extensions()
        .iter()
        .any(|e| e.oid.to_id_string().starts_with("1.2.840.113635.100.8."))
}

/// The freshness code must be present: step-ca skips the check when it is absent, which lets
/// an old attestation be replayed; refused here.
fn freshness_code<'a>(leaf: &'a X509Certificate<'_>) -> Result<&'a [u8], AttestError> {
    ext_value(leaf, OID_APPLE_NONCE).ok_or_else(|| {
        AttestError::new(
            Rule::AppleFreshnessMissing,
            "apple: the leaf has no freshness code 1.2.840.113635.100.8.11.1; an attestation without it could be a replay, refused",
        )
    })
}

/// The freshness code equals SHA-256(token) (Apple MDA; draft-ietf-acme-device-attest).
fn check_freshness(nonce: &[u8], binding: Binding<'_>) -> Result<(), AttestError> {
    let expected = match binding {
        Binding::KeyAuthorization(ka) => {
            Some(ring::digest::digest(&ring::digest::SHA256, token_of(ka)))
        }
        Binding::Token(t) => Some(ring::digest::digest(&ring::digest::SHA256, t)),
        Binding::Expected(v) => {
            return if nonce == v {
                Ok(())
            } else {
                err(
                    Rule::AppleFreshnessMismatch,
                    "apple: freshness code 1.2.840.113635.100.8.11.1 is not the expected value",
                )
            }
        }
        Binding::None => None,
    };
    if expected.is_some_and(|e| e.as_ref() == nonce) {
        return Ok(());
    }
    err(
        Rule::AppleFreshnessMismatch,
        "apple: freshness code 1.2.840.113635.100.8.11.1 is not SHA-256 of the challenge token",
    )
}

fn identifiers(leaf: &X509Certificate<'_>) -> Result<Vec<DeviceIdentifier>, AttestError> {
    let mut identifiers = Vec::new();
    if let Some(serial) = ext_text(leaf, OID_APPLE_SERIAL)? {
        identifiers.push(DeviceIdentifier::PermanentIdentifier {
            value: serial,
            assigner: None,
            source: "apple 1.2.840.113635.100.8.9.1 (serial number)",
        });
    }
    if let Some(udid) = ext_text(leaf, OID_APPLE_UDID)? {
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
    Ok(identifiers)
}

/// The recorded properties: (OS version, sepOS version, LLB version, model).
type Properties = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn properties(leaf: &X509Certificate<'_>) -> Result<Properties, AttestError> {
    Ok((
        ext_text(leaf, OID_APPLE_OS_VERSION)?,
        ext_text(leaf, OID_APPLE_SEP_OS_VERSION)?,
        ext_text(leaf, OID_APPLE_LLB_VERSION)?,
        ext_text(leaf, OID_APPLE_9_4)?,
    ))
}

impl AppleVerifier {
    /// The checks of Apple Managed Device Attestation ([`CHECKS`]).
    pub(crate) fn run(
        &self,
        att: &AttObj,
        binding: Binding<'_>,
        now: SystemTime,
        run: &mut Run,
    ) -> Result<Findings, AttestError> {
        let mut found = Findings::new("Apple");
        found.details.manufacturer = Some("Apple".into());
        run.check(&FMT, super::check_fmt(att, "apple"))?;
        let x5c = att.att_stmt.x5c("apple");
        found.chain = run.check(
            &CHAIN,
            x5c.clone().and_then(|x5c| {
                chain::verify_chain(
                    "apple",
                    &x5c,
                    &self.intermediates,
                    &self.roots,
                    now,
                    &ChainPolicy::default(),
                )
            }),
        )?;
        // Parsed on its own so that its properties are reported even when the chain fails.
        let leaf = x5c
            .ok()
            .and_then(|x5c| chain::parse_certificate(x5c[0], "apple: x5c[0]").ok());
        if let Some(leaf) = &leaf {
            found.public_key_spki = Some(leaf.public_key().raw.to_vec());
        }
        let leaf = need(leaf.as_ref(), "a parsed x5c[0]");
        run.check_with(&LEAF_NOT_CA, leaf, Rule::LeafIsCa, |leaf| {
            super::check_leaf_not_ca("apple", leaf)
        })?;
        let nonce = run.check_with(
            &FRESHNESS_PRESENT,
            leaf,
            Rule::AppleFreshnessMissing,
            freshness_code,
        )?;
        let freshness_input = (|| -> Result<_, Need> {
            let nonce = need(nonce, FRESHNESS_PRESENT.name)?;
            if binding == Binding::None {
                return Err(Need::Challenge(&[
                    ChallengeForm::KeyAuthorization,
                    ChallengeForm::Token,
                    ChallengeForm::Expected,
                ]));
            }
            Ok(nonce)
        })();
        run.check_with(
            &FRESHNESS,
            freshness_input,
            Rule::AppleFreshnessMismatch,
            |nonce| check_freshness(nonce, binding),
        )?;
        if let Some(ids) = run.check_with(
            &IDENTIFIERS,
            leaf,
            Rule::AppleIdentifierMissing,
            identifiers,
        )? {
            found.identifiers = ids;
        }
        if let Some((os, sep_os, llb, model)) =
            run.check_with(&PROPERTIES, leaf, Rule::AppleExtension, properties)?
        {
            found.details.os_version = os;
            found.details.sep_os_version = sep_os;
            if let Some(v) = llb {
                found.details.extra.insert("apple.llbVersion".into(), v);
            }
            found.details.model = model;
        }
        Ok(found)
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
        self.run(
            att,
            Binding::KeyAuthorization(key_authorization),
            now,
            &mut Run::verify(),
        )?
        .into_attested("apple", Rule::CertParse)
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
