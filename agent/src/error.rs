//! The agent's errors: each says which step failed and, for the CA's refusals, the problem
//! document it sent (RFC 7807; RFC 8555 §6.7).

use std::path::PathBuf;

use crate::tpm::TpmError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{during}: HTTP request to {url} failed: {detail}")]
    Http {
        during: &'static str,
        url: String,
        detail: String,
    },
    /// The CA answered with a problem document.
    #[error("{during}: the CA refused (HTTP {status}, {kind}): {detail}")]
    Refused {
        during: &'static str,
        status: u16,
        kind: String,
        detail: String,
    },
    /// The CA refuses because the device is not (or no longer) trusted: unknown to the
    /// inventory, quarantined or retired. Renewing again will not help; `run` stops.
    #[error("{during}: the CA refuses this device ({kind}): {detail}")]
    DeviceNotTrusted {
        during: &'static str,
        kind: String,
        detail: String,
    },
    #[error("{during}: ACME: {detail}")]
    Acme {
        during: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |source| AgentError::Io { path, source }
}

/// ACME problem types (RFC 8555 §6.7) and CA rules that mean "this device is not trusted":
/// `unauthorized` and `rejectedIdentifier` as RFC 8555 defines them, and the
/// `badAttestationStatement` the Portcullis CA sends when its inventory check fails (its
/// detail names rule `device-active` or `device-known`, ca/src/acme/device.rs).
pub(crate) fn is_device_refusal(kind: &str, detail: &str) -> bool {
    let kind = kind
        .strip_prefix("urn:ietf:params:acme:error:")
        .unwrap_or(kind);
    match kind {
        "unauthorized" | "rejectedIdentifier" => true,
        "badAttestationStatement" => {
            detail.contains("device-active") || detail.contains("device-known")
        }
        _ => false,
    }
}

/// Classifies an ACME client error from step `during`.
pub(crate) fn acme(during: &'static str) -> impl FnOnce(instant_acme::Error) -> AgentError {
    move |e| match e {
        instant_acme::Error::Api(p) => problem(during, p),
        other => AgentError::Acme {
            during,
            detail: with_sources(&other),
        },
    }
}

/// An error and its causes ("client error (Connect): tcp connect error: Connection refused").
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub(crate) fn problem(during: &'static str, p: instant_acme::Problem) -> AgentError {
    let kind = p.r#type.clone().unwrap_or_else(|| "about:blank".into());
    let detail = p.detail.clone().unwrap_or_default();
    if is_device_refusal(&kind, &detail) {
        AgentError::DeviceNotTrusted {
            during,
            kind,
            detail,
        }
    } else {
        AgentError::Refused {
            during,
            status: p.status.unwrap_or(0),
            kind,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_refusals_are_recognised() {
        let ns = "urn:ietf:params:acme:error:";
        assert!(is_device_refusal(&format!("{ns}unauthorized"), ""));
        assert!(is_device_refusal(&format!("{ns}rejectedIdentifier"), "x"));
        assert!(is_device_refusal(
            &format!("{ns}badAttestationStatement"),
            "inventory: rule device-active: device d is quarantined, not active"
        ));
        assert!(!is_device_refusal(
            &format!("{ns}badAttestationStatement"),
            "tpm: sig does not verify"
        ));
        assert!(!is_device_refusal(&format!("{ns}serverInternal"), ""));
        assert!(!is_device_refusal(&format!("{ns}rateLimited"), ""));
    }
}
