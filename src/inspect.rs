//! `portcullis cert inspect`: what device identity a certificate carries, read by the same code
//! the gateway uses (`policy::identity`), and, given a root, whether the gateway would accept it
//! (`policy::verify`) and the reason code if not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use portcullis_config::TrustConfig;
use portcullis_policy::verify::verify_client_chain;
use portcullis_policy::{DeviceIdentity, IdSource, TrustAnchors, VerifyOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// What to inspect and against what.
#[derive(Debug, Clone)]
pub struct InspectRequest {
    /// PEM (leaf first, then any intermediates) or a single DER certificate.
    pub cert: PathBuf,
    /// PEM files of trust anchors (all of them count); empty: only read the certificate.
    pub roots: Vec<PathBuf>,
    /// Trust settings (trust domain, clock skew, maximum lifetime) as the gateway has them.
    pub trust: TrustConfig,
    /// The instant to verify at; `None`: now.
    pub at: Option<SystemTime>,
}

/// The printed report and the verdict.
#[derive(Debug, Clone)]
pub struct InspectReport {
    pub text: String,
    /// `None` if no root was given; `Some(Ok)` verified; `Some(Err(code))` refused.
    pub verdict: Option<Result<(), String>>,
}

pub fn inspect(req: &InspectRequest) -> anyhow::Result<InspectReport> {
    let chain = read_certs(&req.cert)?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| anyhow!("{}: no certificate found", req.cert.display()))?;
    let identity = DeviceIdentity::from_der(leaf.as_ref(), &req.trust.trust_domain)
        .with_context(|| format!("{}: cannot read the certificate", req.cert.display()))?;

    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "{label:<14}{value}");
    };
    line("certificate", &req.cert.display().to_string());
    let device = match (&identity.device_id, identity.id_source) {
        (Some(id), Some(source)) => format!("{id}  (from {})", source_name(source)),
        (Some(id), None) => id.clone(),
        _ => format!(
            "NONE  (no PermanentIdentifier, HardwareModuleName or spiffe://{}/device/<id> SAN)",
            req.trust.trust_domain
        ),
    };
    line("device id", &device);
    line("serial", &identity.serial);
    line(
        "fingerprint",
        &format!("sha256:{}", identity.fingerprint_hex()),
    );
    line("spki sha256", &hex::encode(identity.spki_sha256));
    line("not before", &rfc3339(identity.not_before));
    let lifetime = identity
        .not_after
        .duration_since(identity.not_before)
        .map(|d| format!("  (lifetime {})", human(d)))
        .unwrap_or_default();
    line(
        "not after",
        &format!("{}{lifetime}", rfc3339(identity.not_after)),
    );
    line("issuer", &identity.issuer);
    line("subject", &or_dash(&identity.subject));
    line("dns sans", &or_dash(&identity.dns_sans.join(", ")));
    line("uri sans", &or_dash(&identity.uri_sans.join(", ")));
    line(
        "attestation",
        identity.attestation.as_deref().unwrap_or("-"),
    );
    line("platform", identity.platform.as_deref().unwrap_or("-"));
    line(
        "chain",
        &format!("{} certificate(s) in the file", chain.len()),
    );

    let verdict = if req.roots.is_empty() {
        None
    } else {
        let mut pem = Vec::new();
        for root in &req.roots {
            pem.extend(
                std::fs::read(root)
                    .with_context(|| format!("cannot read the root {}", root.display()))?,
            );
            pem.push(b'\n');
        }
        let roots = req
            .roots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let anchors = TrustAnchors::from_pem(&pem).map_err(|e| anyhow!("{roots}: {e}"))?;
        if anchors.is_empty() {
            bail!("{roots}: no CERTIFICATE block");
        }
        let at = req.at.unwrap_or_else(SystemTime::now);
        let opts = VerifyOptions {
            clock_skew: req.trust.clock_skew,
            max_lifetime: req.trust.max_lifetime,
        };
        let result = verify_client_chain(
            &anchors,
            leaf,
            intermediates,
            at,
            &opts,
            &req.trust.trust_domain,
        );
        let when = rfc3339(at);
        match result {
            Ok(_) => {
                line("verify", &format!("OK against {roots} at {when}"));
                Some(Ok(()))
            }
            Err(e) => {
                line(
                    "verify",
                    &format!("REFUSED: {} ({e}) against {roots} at {when}", e.code(),),
                );
                Some(Err(e.code().to_owned()))
            }
        }
    };
    Ok(InspectReport { text, verdict })
}

/// Every CERTIFICATE block of a PEM file, or the file itself as one DER certificate.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{}: not valid PEM: {e}", path.display()))?;
        if certs.is_empty() {
            bail!("{}: no CERTIFICATE block in the PEM file", path.display());
        }
        Ok(certs)
    } else {
        Ok(vec![CertificateDer::from(bytes)])
    }
}

fn source_name(source: IdSource) -> &'static str {
    match source {
        IdSource::PermanentIdentifier => "SAN otherName PermanentIdentifier, RFC 4043",
        IdSource::HardwareModuleName => "SAN otherName HardwareModuleName, RFC 4108",
        IdSource::SpiffeUri => "SAN URI spiffe://…/device/<id>",
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `1d 2h`, `24h`, `15m`: enough to see at a glance whether a lifetime is sane.
fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, mins) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevPki, DeviceSpec};
    use std::time::Duration;

    #[test]
    fn reads_identity_and_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate("Test").unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let trust = TrustConfig::default();
        let td = trust.trust_domain.clone();
        let good = pki
            .issuing
            .issue_device(&DeviceSpec::new("laptop-alice", &td))
            .unwrap();
        let cert = dir.path().join("alice.pem");
        good.write(&cert, dir.path().join("alice.key")).unwrap();
        let mut req = InspectRequest {
            cert: cert.clone(),
            roots: vec![files.root_cert.clone()],
            trust,
            at: None,
        };
        let report = inspect(&req).unwrap();
        assert!(report.text.contains("laptop-alice"), "{}", report.text);
        assert!(
            report.text.contains("PermanentIdentifier"),
            "{}",
            report.text
        );
        assert_eq!(report.verdict, Some(Ok(())), "{}", report.text);

        req.at = Some(SystemTime::now() + Duration::from_secs(3 * 24 * 3600));
        let report = inspect(&req).unwrap();
        assert_eq!(
            report.verdict,
            Some(Err("expired".into())),
            "{}",
            report.text
        );

        req.roots.clear();
        assert_eq!(inspect(&req).unwrap().verdict, None);
        assert_eq!(human(Duration::from_secs(24 * 3600)), "1d");
        assert_eq!(human(Duration::from_secs(5400)), "1h 30m");
    }
}
