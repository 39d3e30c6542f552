//! Attestation statement verifiers for `device-attest-01` (draft-ietf-acme-device-attest).
//!
//! Pure functions of their inputs: the attestation object, the expected key authorization and
//! an injected `now`. No I/O, no clock, no global state; roots are values the caller owns.
//!
//! - [`attobj`]: the `{"attObj": base64url(CBOR{fmt, attStmt[, authData]})}` payload (size and
//!   depth limits, every malformed shape a specific error).
//! - [`chain`]: a small certificate chain walker for vendor PKIs that break webpki's rules.
//! - [`tpm`]: `fmt = "tpm"` (TPM 2.0, W3C WebAuthn §8.3).
//! - [`apple`]: `fmt = "apple"` (Apple Managed Device Attestation).
//! - [`step`]: `fmt = "step"` (YubiKey PIV attestation, as step-ca defines it).
//!
//! - [`checks`]: each format's procedure is a sequence of named checks, run once by
//!   `verify` (stop at the first failure) and once by [`inspect`] (record every outcome), so
//!   the two cannot disagree.
//! - [`inspect`]: every check a given input allows, for operators debugging an enrollment.
//!
//! Every refusal is an [`AttestError`] whose [`Rule`] names the check that failed and whose text
//! cites where the rule comes from; the ACME layer maps any of them to
//! `badAttestationStatement` (draft-ietf-acme-device-attest §5) with that text as detail.

pub mod apple;
pub mod attobj;
pub mod chain;
pub mod checks;
pub(crate) mod der;
pub mod inspect;
pub mod step;
pub mod tpm;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use attobj::{AttObj, AttStmt};

/// One attestation statement format (W3C WebAuthn §8: one `fmt`, one verification procedure).
pub trait AttestationFormat: Send + Sync {
    /// The `fmt` value this verifier handles.
    fn fmt(&self) -> &'static str;

    /// Verifies `att` for a challenge whose key authorization is `key_authorization`
    /// (RFC 8555 §8.1), at time `now`.
    ///
    /// For the WebAuthn-shaped formats (`tpm`) the value bound into the statement is the
    /// "attToBeSigned" of WebAuthn §8.3; ACME binds the key authorization there. Callers that
    /// verify a WebAuthn registration (the real test vectors) pass `authData || clientDataHash`.
    fn verify(
        &self,
        att: &AttObj,
        key_authorization: &[u8],
        now: SystemTime,
    ) -> Result<Attested, AttestError>;
}

/// The formats a CA accepts, by `fmt`. An unknown `fmt` is refused with [`Rule::UnknownFormat`].
#[derive(Clone, Default)]
pub struct Verifiers {
    by_fmt: BTreeMap<&'static str, Arc<dyn AttestationFormat>>,
}

impl fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_fmt.keys()).finish()
    }
}

impl Verifiers {
    /// All three formats with their embedded default roots (TPM: the Microsoft TPM Root CA 2014;
    /// SHA-1 off).
    pub fn with_defaults() -> Self {
        let mut v = Self::default();
        v.register(Arc::new(tpm::TpmVerifier::with_default_roots()));
        v.register(Arc::new(apple::AppleVerifier::with_default_roots()));
        v.register(Arc::new(step::StepVerifier::with_default_roots()));
        v
    }

    pub fn register(&mut self, format: Arc<dyn AttestationFormat>) {
        self.by_fmt.insert(format.fmt(), format);
    }

    pub fn formats(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_fmt.keys().copied()
    }

    /// Dispatches on `att.fmt` (draft-ietf-acme-device-attest §5: the server verifies the
    /// statement "according to the format identified by fmt").
    pub fn verify(
        &self,
        att: &AttObj,
        key_authorization: &[u8],
        now: SystemTime,
    ) -> Result<Attested, AttestError> {
        match self.by_fmt.get(att.fmt.as_str()) {
            Some(v) => v.verify(att, key_authorization, now),
            None => Err(AttestError::new(
                Rule::UnknownFormat,
                format!(
                    "attObj: fmt {:?} is not an accepted attestation format (accepted: {})",
                    att.fmt,
                    self.by_fmt.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

/// What the statement must be bound to: the challenge, in whichever form the caller knows it.
/// The CA always has the key authorization; an operator running [`inspect`] may have less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// The key authorization `token "." thumbprint` (RFC 8555 §8.1); for the WebAuthn test
    /// vectors, attToBeSigned (`authData || clientDataHash`, WebAuthn §8.3).
    KeyAuthorization(&'a [u8]),
    /// Only the challenge token: enough for Apple's freshness code, not for TPM or step.
    Token(&'a [u8]),
    /// The value the statement should carry itself: TPM `certInfo.extraData`, or Apple's
    /// freshness code (1.2.840.113635.100.8.11.1).
    Expected(&'a [u8]),
    /// Nothing: the checks that need the challenge are skipped (inspect only).
    None,
}

/// What a run of a format's checks found, check by check. Complete ([`Attested`]) only when
/// every check passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub identifiers: Vec<DeviceIdentifier>,
    /// The attested key (SubjectPublicKeyInfo DER), once established.
    pub public_key_spki: Option<Vec<u8>>,
    /// The verified chain, leaf first, once verified.
    pub chain: Option<Vec<Vec<u8>>>,
    pub details: Details,
}

impl Findings {
    pub(crate) fn new(platform: &str) -> Self {
        Self {
            details: Details {
                platform: platform.into(),
                ..Details::default()
            },
            ..Self::default()
        }
    }

    /// The [`Attested`] of a verify run. A verify run that returned has passed every check,
    /// and every check that establishes the chain or the key has put it here; a missing one
    /// is refused anyway (`key_rule`), never passed.
    pub(crate) fn into_attested(
        self,
        format: &'static str,
        key_rule: Rule,
    ) -> Result<Attested, AttestError> {
        let Some(chain) = self.chain else {
            return err(Rule::ChainEmpty, format!("{format}: no verified chain"));
        };
        let Some(public_key_spki) = self.public_key_spki else {
            return err(key_rule, format!("{format}: no attested key"));
        };
        Ok(Attested {
            format,
            identifiers: self.identifiers,
            public_key_spki,
            chain,
            details: self.details,
        })
    }
}

/// What a verified attestation proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The `fmt` that verified.
    pub format: &'static str,
    /// Device identifiers found in the attestation (to compare with the order identifier).
    pub identifiers: Vec<DeviceIdentifier>,
    /// The attested public key as SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7); the CSR key at
    /// finalize must equal it.
    pub public_key_spki: Vec<u8>,
    /// The verified chain, leaf first, root last (DER).
    pub chain: Vec<Vec<u8>>,
    pub details: Details,
}

/// A device identifier found in an attestation, in the ACME identifier types of
/// draft-ietf-acme-device-attest §3 (permanent-identifier) and §4 (hardware-module).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceIdentifier {
    /// `permanent-identifier`: RFC 4043 PermanentIdentifier, `value ["/" assigner-oid]`.
    PermanentIdentifier {
        value: String,
        assigner: Option<String>,
        /// Where it was found, e.g. `apple 1.2.840.113635.100.8.9.1 (serial)`.
        source: &'static str,
    },
    /// `hardware-module`: RFC 4108 HardwareModuleName, `serial "/" type-oid`.
    HardwareModule {
        hw_type: String,
        serial: Vec<u8>,
        source: &'static str,
    },
}

impl DeviceIdentifier {
    /// The identifier's ACME `value` (draft-ietf-acme-device-attest §3, §4).
    pub fn acme_value(&self) -> String {
        match self {
            Self::PermanentIdentifier {
                value,
                assigner: Some(a),
                ..
            } => format!("{value}/{a}"),
            Self::PermanentIdentifier { value, .. } => value.clone(),
            Self::HardwareModule {
                hw_type, serial, ..
            } => match std::str::from_utf8(serial) {
                Ok(s) if s.chars().all(|c| c.is_ascii_graphic() && c != '/') => {
                    format!("{s}/{hw_type}")
                }
                _ => format!("{}/{hw_type}", hex::encode(serial)),
            },
        }
    }

    /// The ACME identifier type.
    pub fn acme_type(&self) -> &'static str {
        match self {
            Self::PermanentIdentifier { .. } => "permanent-identifier",
            Self::HardwareModule { .. } => "hardware-module",
        }
    }
}

/// Facts recorded from the attestation for audit and the issued certificate's extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// e.g. `TPM 2.0`, `Apple`, `YubiKey`.
    pub platform: String,
    /// TPM manufacturer (TCG vendor id, e.g. `id:494E5443`), `Yubico`, `Apple`.
    pub manufacturer: Option<String>,
    /// TPM model, Apple hardware model, YubiKey form factor.
    pub model: Option<String>,
    /// TPM firmware version (TPMS_ATTEST.firmwareVersion / AK SAN version), YubiKey firmware.
    pub firmware_version: Option<String>,
    /// Apple OS version (1.2.840.113635.100.8.10.1).
    pub os_version: Option<String>,
    /// Apple sepOS version (1.2.840.113635.100.8.10.2).
    pub sep_os_version: Option<String>,
    /// Everything else, by name (pin/touch policy, LLB version, TPM signature algorithm, ...).
    pub extra: BTreeMap<String, String>,
}

/// Which check refused the attestation. Stable names for tests, audit and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    // The attObj envelope (draft-ietf-acme-device-attest §5).
    PayloadShape,
    PayloadBase64,
    CborTooLarge,
    CborMalformed,
    CborTooDeep,
    CborTrailingBytes,
    AttObjShape,
    UnknownFormat,
    StatementField,
    // Certificate chains (RFC 5280 §6.1).
    CertParse,
    ChainEmpty,
    ChainTooLong,
    ChainNoIssuer,
    ChainSignature,
    ChainUnsupportedAlgorithm,
    ChainSha1NotAllowed,
    ChainNotYetValid,
    ChainExpired,
    ChainIssuerNotCa,
    ChainKeyUsage,
    ChainPathLength,
    ChainUnknownCriticalExtension,
    /// The attested (leaf) certificate says it is a CA (RFC 5280 §4.2.1.9).
    LeafIsCa,
    // TPM (W3C WebAuthn §8.3, TCG TPM 2.0 Part 2).
    TpmVersion,
    TpmAlgorithm,
    TpmAkCertVersion,
    TpmAkCertSubject,
    TpmAkCertSan,
    TpmAkCertEku,
    TpmAkCertCa,
    TpmCertInfoParse,
    TpmMagic,
    TpmType,
    TpmPubAreaParse,
    TpmName,
    TpmExtraData,
    TpmSignature,
    TpmObjectAttributes,
    TpmKeyStrength,
    // Apple Managed Device Attestation.
    AppleFreshnessMissing,
    AppleFreshnessMismatch,
    AppleIdentifierMissing,
    AppleExtension,
    // YubiKey PIV (step).
    StepSerialMissing,
    StepExtension,
    StepAlgorithm,
    StepSignature,
    StepKeyType,
    // The dev-only unattested software key (acme::challenge::unattested).
    UnattestedSignature,
}

/// A refused attestation: the rule that failed and a sentence naming it with its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AttestError {
    pub rule: Rule,
    pub detail: String,
}

impl AttestError {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            rule,
            detail: detail.into(),
        }
    }
}

/// Each verifier refuses an object of another `fmt`, even when called directly.
pub(crate) fn check_fmt(att: &AttObj, fmt: &str) -> Result<(), AttestError> {
    if att.fmt == fmt {
        Ok(())
    } else {
        err(
            Rule::UnknownFormat,
            format!("{fmt}: attObj.fmt is {:?}, not {fmt:?}", att.fmt),
        )
    }
}

/// The attested key's certificate must be an end-entity certificate: a leaf with
/// basicConstraints cA true could issue further "attested" certificates (RFC 5280 §4.2.1.9).
pub(crate) fn check_leaf_not_ca(
    fmt: &str,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), AttestError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => err(
            Rule::LeafIsCa,
            format!(
                "{fmt}: the attestation certificate x5c[0] is a CA certificate (RFC 5280 §4.2.1.9)"
            ),
        ),
        Ok(_) => Ok(()),
        Err(e) => err(
            Rule::CertParse,
            format!("{fmt}: x5c[0] basicConstraints is malformed: {e}"),
        ),
    }
}

pub(crate) fn err<T>(rule: Rule, detail: impl Into<String>) -> Result<T, AttestError> {
    Err(AttestError::new(rule, detail))
}

/// PEM → DER for every `CERTIFICATE` block (RFC 7468 §5). For embedded roots and tests.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, AttestError> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut inside = false;
    let mut b64 = String::new();
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
            b64.clear();
        } else if line == "-----END CERTIFICATE-----" {
            if !inside {
                return err(Rule::CertParse, "PEM: END without BEGIN (RFC 7468 §2)");
            }
            inside = false;
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| AttestError::new(Rule::CertParse, format!("PEM: bad base64 ({e})")))?;
            out.push(der);
        } else if inside {
            b64.push_str(line);
        }
    }
    if inside {
        return err(Rule::CertParse, "PEM: BEGIN without END (RFC 7468 §2)");
    }
    Ok(out)
}

/// `PermanentIdentifier` and `HardwareModuleName` SAN otherNames of a certificate
/// (RFC 4043 §2, RFC 4108 §5). Malformed values are errors, not skipped.
pub(crate) fn san_device_identifiers(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    source: &'static str,
) -> Result<Vec<DeviceIdentifier>, AttestError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let mut out = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            let GeneralName::OtherName(oid, value) = name else {
                continue;
            };
            let oid = oid.to_id_string();
            // `value` is `[0] EXPLICIT ANY` (RFC 5280 §4.2.1.6 OtherName).
            let inner = der::read_exact(value, 0xa0);
            match oid.as_str() {
                "1.3.6.1.5.5.7.8.3" => {
                    let id = inner
                        .and_then(|i| der::read_exact(i, der::TAG_SEQUENCE))
                        .and_then(parse_permanent_identifier)
                        .ok_or_else(|| {
                            AttestError::new(
                                Rule::CertParse,
                                "SAN otherName PermanentIdentifier is malformed (RFC 4043 §2)",
                            )
                        })?;
                    out.push(DeviceIdentifier::PermanentIdentifier {
                        value: id.0,
                        assigner: id.1,
                        source,
                    });
                }
                "1.3.6.1.5.5.7.8.4" => {
                    let id = inner
                        .and_then(|i| der::read_exact(i, der::TAG_SEQUENCE))
                        .and_then(parse_hardware_module_name)
                        .ok_or_else(|| {
                            AttestError::new(
                                Rule::CertParse,
                                "SAN otherName HardwareModuleName is malformed (RFC 4108 §5)",
                            )
                        })?;
                    out.push(DeviceIdentifier::HardwareModule {
                        hw_type: id.0,
                        serial: id.1,
                        source,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL,
/// assigner OBJECT IDENTIFIER OPTIONAL }` (RFC 4043 §2). A value is required here: without one
/// there is nothing to match an order identifier against.
fn parse_permanent_identifier(seq: &[u8]) -> Option<(String, Option<String>)> {
    let (tag, contents, rest) = der::read_tlv(seq)?;
    if tag != der::TAG_UTF8_STRING {
        return None;
    }
    let value = std::str::from_utf8(contents).ok()?.to_owned();
    let assigner = if rest.is_empty() {
        None
    } else {
        Some(der::oid_to_string(der::read_exact(rest, der::TAG_OID)?)?)
    };
    Some((value, assigner))
}

/// `HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`
/// (RFC 4108 §5).
fn parse_hardware_module_name(seq: &[u8]) -> Option<(String, Vec<u8>)> {
    let (tag, oid, rest) = der::read_tlv(seq)?;
    if tag != der::TAG_OID {
        return None;
    }
    let serial = der::read_exact(rest, der::TAG_OCTET_STRING)?;
    Some((der::oid_to_string(oid)?, serial.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_identifier_acme_values() {
        let p = DeviceIdentifier::PermanentIdentifier {
            value: "WRPWFW61H9".into(),
            assigner: None,
            source: "t",
        };
        assert_eq!(p.acme_value(), "WRPWFW61H9");
        assert_eq!(p.acme_type(), "permanent-identifier");
        let p = DeviceIdentifier::PermanentIdentifier {
            value: "5970478".into(),
            assigner: Some("1.3.6.1.4.1.41482".into()),
            source: "t",
        };
        assert_eq!(p.acme_value(), "5970478/1.3.6.1.4.1.41482");
        let h = DeviceIdentifier::HardwareModule {
            hw_type: "1.2.3".into(),
            serial: vec![0xff, 0x00],
            source: "t",
        };
        assert_eq!(h.acme_value(), "ff00/1.2.3");
        assert_eq!(h.acme_type(), "hardware-module");
    }

    #[test]
    fn attest_pem_errors_are_specific() {
        assert_eq!(
            pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n")
                .unwrap_err()
                .rule,
            Rule::CertParse
        );
        assert!(
            pem_certificates("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert_eq!(
            pem_certificates("no pem here").unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }

    #[test]
    fn attest_unknown_fmt_is_refused_by_name() {
        let v = Verifiers::with_defaults();
        let att = AttObj {
            fmt: "packed".into(),
            att_stmt: AttStmt::default(),
            auth_data: None,
        };
        let e = v.verify(&att, b"ka", SystemTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(e.rule, Rule::UnknownFormat);
        assert!(e.detail.contains("\"packed\""), "{e}");
        assert_eq!(v.formats().collect::<Vec<_>>(), ["apple", "step", "tpm"]);
    }
}
