//! The agent's configuration (what `portcullis agent …` flags fill in).

use std::path::PathBuf;

use crate::keys::KeyMode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The CA's base URL (`https://ca.corp.example:8443`): the ACME directory is
    /// `{ca_url}/acme/directory` and enrollment `{ca_url}/enroll/tpm/…`. A URL that already ends
    /// in `/directory` is taken as the ACME directory itself, its base being what precedes
    /// `/acme/directory`.
    pub ca_url: String,
    /// The inventory id of this device: the `permanent-identifier` of the ACME order
    /// (draft-ietf-acme-device-attest §3).
    pub device_id: String,
    /// Where the certificate chain, key reference and account live.
    pub out_dir: PathBuf,
    /// PEM file of CA certificates to trust for the CA's TLS; `None`: the system roots.
    pub ca_roots: Option<PathBuf>,
    pub key_mode: KeyMode,
    /// PEM intermediates between the EK certificate and the manufacturer root, sent in open
    /// enrollment (most TPMs do not store them).
    pub ek_chain: Option<PathBuf>,
}

impl AgentConfig {
    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        let url = self.ca_url.trim_end_matches('/');
        if url.ends_with("/directory") {
            url.to_owned()
        } else {
            format!("{url}/acme/directory")
        }
    }

    /// The CA's base URL (for enrollment).
    pub fn base_url(&self) -> String {
        let url = self.ca_url.trim_end_matches('/');
        url.strip_suffix("/acme/directory")
            .or_else(|| url.strip_suffix("/directory"))
            .unwrap_or(url)
            .to_owned()
    }

    pub fn validate(&self) -> crate::Result<()> {
        use crate::AgentError;
        if !(self.ca_url.starts_with("https://") || self.ca_url.starts_with("http://")) {
            return Err(AgentError::Config(format!(
                "--ca {:?} is not an http(s) URL",
                self.ca_url
            )));
        }
        let id = &self.device_id;
        // draft-ietf-acme-device-attest §3 grammar, as the CA checks it: printable, no spaces.
        if id.is_empty()
            || id.len() > 256
            || id.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(AgentError::Config(format!(
                "--device-id {id:?} must be 1 to 256 printable characters without spaces"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> AgentConfig {
        AgentConfig {
            ca_url: url.into(),
            device_id: "d1".into(),
            out_dir: "/tmp/x".into(),
            ca_roots: None,
            key_mode: KeyMode::Software,
            ek_chain: None,
        }
    }

    #[test]
    fn config_urls() {
        let c = cfg("https://ca.example:8443/");
        assert_eq!(c.directory_url(), "https://ca.example:8443/acme/directory");
        assert_eq!(c.base_url(), "https://ca.example:8443");
        let c = cfg("https://ca.example/acme/directory");
        assert_eq!(c.directory_url(), "https://ca.example/acme/directory");
        assert_eq!(c.base_url(), "https://ca.example");
        assert!(cfg("ftp://x").validate().is_err());
        let mut c = cfg("https://x");
        c.device_id = "a b".into();
        assert!(c.validate().is_err());
    }
}
