//! `portcullis attest inspect`: every check of a device attestation that the given inputs
//! allow, with its result, and the device identifiers found — for operators debugging a failed
//! enrollment. The checks are the CA's own (`portcullis_ca::attest::inspect`), so what this
//! prints is what `device-attest-01` decides; this module only reads files and prints.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use portcullis_ca::attest::chain::KeyKind;
use portcullis_ca::attest::checks::{ChallengeForm, Need, Outcome};
use portcullis_ca::attest::inspect::{self, InspectOptions, InspectReport, MAX_INPUT_BYTES};
use portcullis_ca::attest::{pem_certificates, Binding};

/// What to inspect, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct InspectRequest {
    /// Attestation object (CBOR, base64url, `{"attObj": ...}`) or certificate chain (PEM, DER).
    pub file: PathBuf,
    /// `tpm`, `apple` or `step`; default: `attObj.fmt`, or detected from the chain.
    pub format: Option<String>,
    /// PEM files of roots replacing the format's embedded defaults.
    pub roots: Vec<PathBuf>,
    /// RFC 3339 instant to verify at; default: now.
    pub at: Option<String>,
    /// The ACME key authorization `token.thumbprint` (RFC 8555 §8.1).
    pub key_authorization: Option<String>,
    /// The challenge token alone (enough for Apple's freshness code).
    pub token: Option<String>,
    /// Hex of the value the statement should carry: TPM certInfo.extraData, Apple nonce.
    pub extra_data: Option<String>,
    /// Accept SHA-1 in TPM attestations, as `ca.attestation.allow_sha1_tpm` does.
    pub allow_sha1: bool,
}

/// The printed report and whether any check failed.
#[derive(Debug, Clone)]
pub struct InspectOutput {
    pub text: String,
    pub failed: bool,
}

pub fn inspect(req: &InspectRequest) -> anyhow::Result<InspectOutput> {
    let input = read_bounded(&req.file)?;
    let roots = read_roots(&req.roots)?;
    let now = match &req.at {
        Some(at) => crate::devpki::parse_rfc3339(at)?,
        None => SystemTime::now(),
    };
    let extra = req
        .extra_data
        .as_deref()
        .map(parse_hex)
        .transpose()
        .context("--extra-data")?;
    let binding = match (&req.key_authorization, &req.token, &extra) {
        (Some(ka), None, None) => Binding::KeyAuthorization(ka.as_bytes()),
        (None, Some(t), None) => Binding::Token(t.as_bytes()),
        (None, None, Some(x)) => Binding::Expected(x),
        (None, None, None) => Binding::None,
        _ => bail!("give at most one of --key-authorization, --token, --extra-data"),
    };
    let report = inspect::inspect(
        &input,
        &InspectOptions {
            format: req.format.as_deref(),
            roots: roots.as_ref().map(|(_, der)| der.clone()),
            now,
            binding,
            allow_sha1: req.allow_sha1,
        },
    );

    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "{label:<14}{value}");
    };
    line(
        "file",
        &format!("{} ({} bytes)", req.file.display(), input.len()),
    );
    line("input", report.input.map_or("unreadable", |k| k.describe()));
    if let Some((fmt, source)) = &report.format {
        line("format", &format!("{fmt}  (from {source})"));
    }
    line("at", &crate::inspect::rfc3339(now));
    line(
        "roots",
        &roots.map_or(
            "embedded defaults of the format".to_owned(),
            |(names, der)| format!("{names} ({} certificates)", der.len()),
        ),
    );
    line("challenge", &describe_binding(binding));
    for (i, cert) in report.certificates.iter().enumerate() {
        let label = format!("x5c[{i}]");
        match cert {
            Some(c) => line(
                &label,
                &format!(
                    "{}\n{:14}issued by {}, valid {} to {}",
                    or_empty(&c.subject),
                    "",
                    or_empty(&c.issuer),
                    c.not_before,
                    c.not_after
                ),
            ),
            None => line(&label, "not a DER X.509 certificate"),
        }
    }
    text.push_str(&checks_text(&report));
    text.push_str(&device_text(&report));
    let failed = report.failed();
    let counts =
        |want: fn(&Outcome) -> bool| report.checks.iter().filter(|c| want(&c.outcome)).count();
    let n_failed = counts(|o| matches!(o, Outcome::Failed(_)));
    let n_skipped = counts(|o| matches!(o, Outcome::Skipped(_)));
    let result = if failed {
        let names: Vec<String> = report
            .checks
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Failed(e) => Some(format!("{} [{:?}]", c.id.name, e.rule)),
                _ => None,
            })
            .collect();
        format!(
            "FAILED: {n_failed} of {} checks failed: {}",
            report.checks.len(),
            names.join(", ")
        )
    } else if n_skipped > 0 {
        format!(
            "no check failed; {n_skipped} of {} skipped (see above for what they need)",
            report.checks.len()
        )
    } else {
        format!("OK: all {} checks passed", report.checks.len())
    };
    let _ = writeln!(text, "\n{:<14}{result}", "result");
    Ok(InspectOutput { text, failed })
}

fn checks_text(report: &InspectReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.id.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from("\nchecks\n");
    for c in &report.checks {
        let (status, text) = match &c.outcome {
            Outcome::Passed(note) if note.is_empty() => ("ok", c.id.about.to_owned()),
            Outcome::Passed(note) => ("ok", format!("{}: {note}", c.id.about)),
            Outcome::Failed(e) => ("FAIL", format!("[{:?}] {}", e.rule, e.detail)),
            Outcome::Skipped(need) => (
                "skip",
                format!("{}: skipped: {}", c.id.about, describe_need(need)),
            ),
        };
        let _ = writeln!(out, "  {status:<5} {:<width$}  {text}", c.id.name);
    }
    out
}

fn device_text(report: &InspectReport) -> String {
    let f = &report.findings;
    let mut out = String::from("\ndevice\n");
    let mut line = |label: &str, value: &str| {
        // One space at least, however long the label (the `extra` names are free-form).
        let _ = writeln!(out, "  {label:<15} {value}");
    };
    if f.identifiers.is_empty() {
        line("identifier", "none found");
    }
    for id in &f.identifiers {
        let source = match id {
            portcullis_ca::attest::DeviceIdentifier::PermanentIdentifier { source, .. }
            | portcullis_ca::attest::DeviceIdentifier::HardwareModule { source, .. } => source,
        };
        line(
            "identifier",
            &format!("{} {}  ({source})", id.acme_type(), id.acme_value()),
        );
    }
    let d = &f.details;
    for (label, value) in [
        ("platform", Some(&d.platform)),
        ("manufacturer", d.manufacturer.as_ref()),
        ("model", d.model.as_ref()),
        ("firmware", d.firmware_version.as_ref()),
        ("os version", d.os_version.as_ref()),
        ("sepOS version", d.sep_os_version.as_ref()),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            line(label, v);
        }
    }
    if let Some(kind) = report.key_kind() {
        line("key", &describe_key(kind));
    }
    for (k, v) in &d.extra {
        line(k, v);
    }
    out
}

fn describe_key(kind: KeyKind) -> String {
    match kind {
        KeyKind::Rsa { bits } => format!("RSA-{bits}"),
        KeyKind::P256 => "ECDSA P-256".into(),
        KeyKind::P384 => "ECDSA P-384".into(),
        KeyKind::Ed25519 => "Ed25519".into(),
    }
}

/// What a skipped check needs, in this command's flags.
fn describe_need(need: &Need) -> String {
    match need {
        Need::Challenge(forms) => {
            let flags: Vec<&str> = forms
                .iter()
                .map(|f| match f {
                    ChallengeForm::KeyAuthorization => "--key-authorization",
                    ChallengeForm::Token => "--token",
                    ChallengeForm::Expected => "--extra-data",
                })
                .collect();
            format!("needs {}", flags.join(" or "))
        }
        other => other.to_string(),
    }
}

fn describe_binding(b: Binding<'_>) -> String {
    match b {
        Binding::KeyAuthorization(ka) => format!("key authorization ({} bytes)", ka.len()),
        Binding::Token(t) => format!("challenge token ({} bytes)", t.len()),
        Binding::Expected(x) => format!("expected value {}", hex::encode(x)),
        Binding::None => {
            "none (checks that need it are skipped; give --key-authorization, --token or --extra-data)"
                .into()
        }
    }
}

fn or_empty(name: &str) -> &str {
    if name.is_empty() {
        "(empty subject)"
    } else {
        name
    }
}

/// The file, refused past what any attestation object or chain can be.
fn read_bounded(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_INPUT_BYTES as u64 {
        bail!(
            "{}: {len} bytes, larger than any attestation ({MAX_INPUT_BYTES} bytes at most)",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `None`: use the embedded roots. Otherwise the names and every certificate of the files.
fn read_roots(paths: &[PathBuf]) -> anyhow::Result<Option<(String, Vec<Vec<u8>>)>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut der = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the roots {}", p.display()))?;
        let certs = pem_certificates(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if certs.is_empty() {
            bail!("{}: no CERTIFICATE block", p.display());
        }
        der.extend(certs);
    }
    let names = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Some((names, der)))
}

/// Hex, with optional `0x`, spaces or colons (as tools print digests).
fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let bytes = hex::decode(&clean).map_err(|e| anyhow!("`{text}` is not hex: {e}"))?;
    if bytes.is_empty() {
        bail!("empty value");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_digest_notations() {
        assert_eq!(parse_hex("0xab01").unwrap(), vec![0xab, 0x01]);
        assert_eq!(parse_hex("AB:01").unwrap(), vec![0xab, 0x01]);
        assert_eq!(parse_hex(" ab 01\n").unwrap(), vec![0xab, 0x01]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("").is_err());
    }

    #[test]
    fn needs_are_named_by_flag() {
        assert_eq!(
            describe_need(&Need::Challenge(&[
                ChallengeForm::KeyAuthorization,
                ChallengeForm::Expected
            ])),
            "needs --key-authorization or --extra-data"
        );
    }
}
