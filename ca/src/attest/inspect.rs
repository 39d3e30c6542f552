//! Every check an input allows, for operators debugging a failed enrollment
//! (`portcullis attest inspect`).
//!
//! The input is what an operator has at hand: the attestation object as raw CBOR, as the
//! base64url text of the challenge response, or as that JSON payload `{"attObj": "..."}`
//! (draft-ietf-acme-device-attest §5); or only the certificate chain, PEM (leaf first) or one
//! DER certificate. The format comes from `attObj.fmt`, from the caller, or, for a bare chain,
//! from the leaf (Apple 1.2.840.113635.100.8.x extensions, Yubico 1.3.6.1.4.1.41482.3.x
//! extensions, or the TPM AK EKU 2.23.133.8.3).
//!
//! The checks are the verifiers' own ([`super::checks`]): the same functions in the same
//! order, only recorded instead of stopping at the first failure.

use std::time::SystemTime;

use super::apple::{self, AppleVerifier};
use super::attobj::{self, MAX_ATTOBJ_BYTES};
use super::chain::{self, KeyKind};
use super::checks::{Check, CheckId, Outcome, Run};
use super::step::{self, StepVerifier};
use super::tpm::{self, TpmVerifier};
use super::{AttObj, AttStmt, AttestError, Binding, Findings, Rule};

/// What to check against.
#[derive(Debug, Clone)]
pub struct InspectOptions<'a> {
    /// The format to check; `None`: `attObj.fmt`, or detected from a bare chain.
    pub format: Option<&'a str>,
    /// Roots (DER) replacing the format's embedded defaults, as `[ca.attestation]` roots do.
    pub roots: Option<Vec<Vec<u8>>>,
    /// The instant to verify at.
    pub now: SystemTime,
    /// What is known of the challenge.
    pub binding: Binding<'a>,
    /// Accept SHA-1 in TPM attestations (`ca.attestation.allow_sha1_tpm`).
    pub allow_sha1: bool,
}

/// How the input was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Raw CBOR attestation object.
    Cbor,
    /// base64url text of the CBOR.
    Base64Url,
    /// The challenge response payload `{"attObj": "..."}`.
    JsonPayload,
    /// PEM certificates, leaf first.
    PemChain,
    /// One DER certificate.
    DerCertificate,
}

impl InputKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Cbor => "attestation object (CBOR)",
            Self::Base64Url => "attestation object (base64url)",
            Self::JsonPayload => "challenge response payload {\"attObj\": ...}",
            Self::PemChain => "certificate chain (PEM)",
            Self::DerCertificate => "certificate (DER)",
        }
    }

    /// A bare chain: the statement's other fields are not there to check.
    pub fn is_chain(self) -> bool {
        matches!(self, Self::PemChain | Self::DerCertificate)
    }
}

/// One presented certificate, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
}

/// The outcome of every check, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// How the input was read; `None` if it could not be told.
    pub input: Option<InputKind>,
    /// The format checked, and where that came from.
    pub format: Option<(String, &'static str)>,
    /// The presented certificates (`x5c`), leaf first.
    pub certificates: Vec<Option<CertSummary>>,
    pub checks: Vec<Check>,
    pub findings: Findings,
}

impl InspectReport {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Failed(_)))
    }

    /// The failed checks' rules, in order.
    pub fn failed_rules(&self) -> Vec<Rule> {
        self.checks
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Failed(e) => Some(e.rule),
                _ => None,
            })
            .collect()
    }

    /// The kind of the attested key (or the leaf's key for a bare Apple or YubiKey chain).
    pub fn key_kind(&self) -> Option<KeyKind> {
        chain::spki_key_kind(self.findings.public_key_spki.as_deref()?)
    }
}

/// Reading the input (its own check, before any format's).
pub const INPUT: CheckId = CheckId {
    name: "input",
    about:
        "the input is an attestation object (CBOR, base64url, JSON payload) or a certificate chain",
};
/// Choosing the format.
pub const FORMAT: CheckId = CheckId {
    name: "format",
    about: "the format is one of tpm, apple, step (attObj.fmt, --format, or the chain's leaf)",
};

/// Largest input read: a base64url or PEM text of the largest attestation object accepted.
pub const MAX_INPUT_BYTES: usize = 4 * MAX_ATTOBJ_BYTES;

enum Decoded {
    AttObj(AttObj),
    Chain(Vec<Vec<u8>>),
}

/// Runs every check `opts` allows on `input`. Never fails: what cannot be read is a failed
/// check in the report.
pub fn inspect(input: &[u8], opts: &InspectOptions<'_>) -> InspectReport {
    let mut report = InspectReport {
        input: None,
        format: None,
        certificates: Vec::new(),
        checks: Vec::new(),
        findings: Findings::default(),
    };
    let (kind, decoded) = match decode(input) {
        Ok((kind, decoded)) => {
            report.input = Some(kind);
            record(&mut report, &INPUT, Ok(kind.describe().to_owned()));
            (kind, decoded)
        }
        Err(e) => {
            record(&mut report, &INPUT, Err(e));
            return report;
        }
    };
    let att = match decoded {
        Decoded::AttObj(att) => {
            let fmt = opts.format.map_or((att.fmt.clone(), "attObj.fmt"), |f| {
                (f.to_owned(), "--format")
            });
            report.format = Some(fmt);
            att
        }
        Decoded::Chain(certs) => {
            let fmt = match opts.format {
                Some(f) => Ok((f.to_owned(), "--format")),
                None => detect_format(&certs).map(|f| (f.to_owned(), "detected from the leaf")),
            };
            match fmt {
                Ok(fmt) => report.format = Some(fmt),
                Err(e) => {
                    report.certificates = summaries(certs.iter().map(Vec::as_slice));
                    record(&mut report, &FORMAT, Err(e));
                    return report;
                }
            }
            AttObj {
                fmt: report
                    .format
                    .as_ref()
                    .map_or(String::new(), |f| f.0.clone()),
                att_stmt: AttStmt::from_entries(vec![(
                    "x5c".into(),
                    ciborium::value::Value::Array(
                        certs
                            .into_iter()
                            .map(ciborium::value::Value::Bytes)
                            .collect(),
                    ),
                )]),
                auth_data: None,
            }
        }
    };
    if let Some(ciborium::value::Value::Array(x5c)) = att.att_stmt.get("x5c") {
        report.certificates = summaries(x5c.iter().filter_map(|v| v.as_bytes().map(Vec::as_slice)));
    }
    let fmt = report
        .format
        .as_ref()
        .map_or(String::new(), |f| f.0.clone());
    let mut run = Run::inspect(kind.is_chain());
    let result = match fmt.as_str() {
        "tpm" => {
            record(&mut report, &FORMAT, Ok(fmt.clone()));
            let mut v = TpmVerifier::with_default_roots();
            if let Some(roots) = &opts.roots {
                v.roots = roots.clone();
            }
            v.allow_sha1 = opts.allow_sha1;
            v.run(&att, opts.binding, opts.now, &mut run)
        }
        "apple" => {
            record(&mut report, &FORMAT, Ok(fmt.clone()));
            let mut v = AppleVerifier::with_default_roots();
            if let Some(roots) = &opts.roots {
                v.roots = roots.clone();
            }
            v.run(&att, opts.binding, opts.now, &mut run)
        }
        "step" => {
            record(&mut report, &FORMAT, Ok(fmt.clone()));
            // Configured roots replace Yubico's; the A1/B1 intermediates stay supplied, as in
            // the CA's own configuration.
            let mut v = StepVerifier::with_default_roots();
            if let Some(roots) = &opts.roots {
                v.roots = roots.clone();
            }
            v.run(&att, opts.binding, opts.now, &mut run)
        }
        other => {
            record(
                &mut report,
                &FORMAT,
                Err(AttestError::new(
                    Rule::UnknownFormat,
                    format!(
                        "attObj: fmt {other:?} is not an accepted attestation format (accepted: apple, step, tpm)"
                    ),
                )),
            );
            return report;
        }
    };
    report.checks.extend(run.into_checks());
    match result {
        Ok(findings) => report.findings = findings,
        // An inspect run records failures instead of returning them; should one come back
        // anyway, it is still reported, never dropped.
        Err(e) => record(&mut report, &FORMAT, Err(e)),
    }
    report
}

fn record(report: &mut InspectReport, id: &CheckId, result: Result<String, AttestError>) {
    report.checks.push(Check {
        id: *id,
        outcome: match result {
            Ok(note) => Outcome::Passed(note),
            Err(e) => Outcome::Failed(e),
        },
    });
}

fn decode(input: &[u8]) -> Result<(InputKind, Decoded), AttestError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(AttestError::new(
            Rule::CborTooLarge,
            format!(
                "input: {} bytes, larger than {MAX_INPUT_BYTES}",
                input.len()
            ),
        ));
    }
    let text = std::str::from_utf8(input).ok().map(str::trim);
    if let Some(text) = text {
        if text.contains("-----BEGIN ") {
            let certs = super::pem_certificates(text)?;
            if certs.is_empty() {
                return Err(AttestError::new(
                    Rule::ChainEmpty,
                    "input: PEM without a CERTIFICATE block (RFC 7468 §5)",
                ));
            }
            return Ok((InputKind::PemChain, Decoded::Chain(certs)));
        }
        if text.starts_with('{') {
            let payload: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| {
                    AttestError::new(
                        Rule::PayloadShape,
                        format!("payload: not a JSON object (RFC 8555 §7.5.1): {e}"),
                    )
                })?;
            let att = attobj::parse_payload(&payload)?;
            return Ok((InputKind::JsonPayload, Decoded::AttObj(att)));
        }
        let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !text.is_empty() && text.chars().all(b64url) {
            let att = attobj::from_base64url(text)?;
            return Ok((InputKind::Base64Url, Decoded::AttObj(att)));
        }
    }
    // A DER certificate is a SEQUENCE (0x30); an attestation object is a CBOR map.
    if input.first() == Some(&0x30) {
        chain::parse_certificate(input, "input")?;
        return Ok((
            InputKind::DerCertificate,
            Decoded::Chain(vec![input.to_vec()]),
        ));
    }
    Ok((InputKind::Cbor, Decoded::AttObj(attobj::parse(input)?)))
}

/// The format of a bare chain, from its leaf.
fn detect_format(certs: &[Vec<u8>]) -> Result<&'static str, AttestError> {
    let Some(leaf) = certs.first() else {
        return Err(AttestError::new(Rule::ChainEmpty, "input: no certificate"));
    };
    let leaf = chain::parse_certificate(leaf, "input: the first certificate")?;
    if apple::is_apple_attestation(&leaf) {
        Ok("apple")
    } else if step::is_yubikey_attestation(&leaf) {
        Ok("step")
    } else if tpm::is_ak_certificate(&leaf) {
        Ok("tpm")
    } else {
        Err(AttestError::new(
            Rule::UnknownFormat,
            "input: the first certificate has neither Apple (1.2.840.113635.100.8.x) nor Yubico (1.3.6.1.4.1.41482.3.x) attestation extensions nor the TPM AK EKU 2.23.133.8.3; give the format",
        ))
    }
}

fn summaries<'a>(ders: impl Iterator<Item = &'a [u8]>) -> Vec<Option<CertSummary>> {
    ders.map(|der| {
        chain::parse_certificate(der, "x5c")
            .ok()
            .map(|c| CertSummary {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                not_before: c.validity().not_before.to_string(),
                not_after: c.validity().not_after.to_string(),
            })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InspectOptions<'static> {
        InspectOptions {
            format: None,
            roots: None,
            now: SystemTime::UNIX_EPOCH,
            binding: Binding::None,
            allow_sha1: false,
        }
    }

    #[test]
    fn attest_inspect_unreadable_input_is_one_failed_check() {
        for (input, rule) in [
            (&b""[..], Rule::CborMalformed),
            (b"\xa1\x63fmt", Rule::CborMalformed),
            (b"{\"attObj\": 1}", Rule::PayloadShape),
            (b"{not json", Rule::PayloadShape),
            (b"-----BEGIN CERTIFICATE-----\n", Rule::CertParse),
            (
                b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
                Rule::ChainEmpty,
            ),
            (b"\x30\x03\x02\x01\x00", Rule::CertParse),
            (b"AAAA", Rule::CborTrailingBytes),
        ] {
            let r = inspect(input, &opts());
            assert!(r.failed(), "{input:?}");
            assert_eq!(r.failed_rules(), vec![rule], "{input:?}: {:?}", r.checks);
            assert_eq!(r.checks.len(), 1);
        }
        let big = vec![b'A'; MAX_INPUT_BYTES + 1];
        assert_eq!(
            inspect(&big, &opts()).failed_rules(),
            vec![Rule::CborTooLarge]
        );
    }

    #[test]
    fn attest_inspect_unknown_fmt_is_named() {
        let att = AttObj {
            fmt: "packed".into(),
            att_stmt: AttStmt::default(),
            auth_data: None,
        };
        let r = inspect(&attobj::to_cbor(&att), &opts());
        assert_eq!(r.input, Some(InputKind::Cbor));
        assert_eq!(r.failed_rules(), vec![Rule::UnknownFormat]);
        assert_eq!(r.checks[1].id, FORMAT);
    }

    #[test]
    fn attest_inspect_statement_without_fields_runs_every_check() {
        // A tpm statement with nothing in it: every check is reported, failed or skipped.
        let att = AttObj {
            fmt: "tpm".into(),
            att_stmt: AttStmt::default(),
            auth_data: None,
        };
        let r = inspect(&attobj::to_cbor(&att), &opts());
        let names: Vec<&str> = r.checks.iter().map(|c| c.id.name).collect();
        let mut want = vec!["input", "format"];
        want.extend(tpm::CHECKS.iter().map(|c| c.name));
        assert_eq!(names, want);
        assert!(r.failed_rules().contains(&Rule::StatementField));
        assert!(r
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Skipped(_))));
    }
}
