//! Settings of the ACME server. The `[ca]` section of the Portcullis config maps onto these.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::pki::CertTemplate;

/// The trust domain when none is configured (the config's `[trust]` default).
pub const DEFAULT_TRUST_DOMAIN: &str = "portcullis.local";

/// The directory's `meta` object (RFC 8555 §7.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryMeta {
    pub terms_of_service: Option<String>,
    pub website: Option<String>,
    pub caa_identities: Vec<String>,
    /// Advertised as `externalAccountRequired`: newAccount then needs an external account
    /// binding made with one of [`AcmeConfig::eab_keys`] (RFC 8555 §7.3.4).
    pub external_account_required: bool,
}

/// http-01 (RFC 8555 §8.3) for workload/server certificates, off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http01Config {
    /// DNS names the CA may issue for: exact names, or `*.suffix` for any name below `suffix`
    /// (not `suffix` itself). Everything else is `rejectedIdentifier`.
    pub allowed_names: Vec<String>,
    /// The port the validator connects to: 80 per the RFC; lab setups (like Pebble's
    /// `httpPort`) point it at a test server's port.
    pub port: u16,
    /// Static name → address map consulted before DNS (lab setups: everything on loopback).
    pub hosts: HashMap<String, IpAddr>,
    /// Whole-validation time limit: connect, request, response.
    pub timeout: Duration,
}

impl Default for Http01Config {
    fn default() -> Self {
        Self {
            allowed_names: Vec::new(),
            port: 80,
            hosts: HashMap::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Trust anchors per attestation format for `device-attest-01` (`[ca.attestation]`). `None`
/// for a format: the vendor roots embedded in [`crate::attest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationConfig {
    /// TPM manufacturer / attestation CA roots for AK certificates (DER).
    pub tpm_roots: Option<Vec<Vec<u8>>>,
    /// Apple Enterprise Attestation roots (DER).
    pub apple_roots: Option<Vec<Vec<u8>>>,
    /// YubiKey PIV attestation roots (DER).
    pub step_roots: Option<Vec<Vec<u8>>>,
    /// Accept SHA-1 in TPM attestations (RS1 signatures, SHA-1 Names and certificates).
    pub allow_sha1_tpm: bool,
    /// Register the dev-only unattested software format ([`super::challenge::unattested`]).
    pub allow_unattested: bool,
}

impl AttestationConfig {
    /// The verifiers for these roots: every format, configured roots replacing the embedded
    /// ones. The Yubico A1/B1 intermediates stay supplied: they only help chains that reach a
    /// configured root.
    pub fn verifiers(&self) -> crate::attest::Verifiers {
        use crate::attest::{apple::AppleVerifier, step::StepVerifier, tpm::TpmVerifier};
        let mut tpm = TpmVerifier::with_default_roots();
        if let Some(roots) = &self.tpm_roots {
            tpm.roots = roots.clone();
        }
        tpm.allow_sha1 = self.allow_sha1_tpm;
        let mut apple = AppleVerifier::with_default_roots();
        if let Some(roots) = &self.apple_roots {
            apple.roots = roots.clone();
        }
        let mut step = StepVerifier::with_default_roots();
        if let Some(roots) = &self.step_roots {
            step.roots = roots.clone();
        }
        let mut v = crate::attest::Verifiers::default();
        v.register(std::sync::Arc::new(tpm));
        v.register(std::sync::Arc::new(apple));
        v.register(std::sync::Arc::new(step));
        if self.allow_unattested {
            tracing::warn!(
                "[ca.attestation] allow_unattested: software keys are accepted WITHOUT any \
                 attestation (development only)"
            );
            v.register(std::sync::Arc::new(
                super::challenge::unattested::UnattestedVerifier,
            ));
        }
        v
    }
}

#[derive(Clone)]
pub struct AcmeConfig {
    /// Scheme, host and port clients reach the server at, without a trailing slash, e.g.
    /// `https://ca.example:8443`. Every URL the server hands out starts with it, and the JWS
    /// `url` of each request is compared with it (RFC 8555 §6.4), never with a Host header.
    pub base_url: String,
    pub meta: DirectoryMeta,
    /// External account binding MAC keys by key id (raw bytes, not base64). Each key id binds
    /// at most one ACME account.
    pub eab_keys: HashMap<String, Vec<u8>>,
    /// `None`: http-01 is off and no DNS identifier can be ordered.
    pub http01: Option<Http01Config>,
    /// What http-01 (workload) certificates look like.
    pub workload_template: CertTemplate,
    /// What device-attest-01 (device) certificates look like.
    pub device_template: CertTemplate,
    /// The SPIFFE trust domain of the device URI `spiffe://<trust_domain>/device/<id>` put on
    /// device certificates (`[trust] trust_domain`, which enforcement points parse with).
    pub trust_domain: String,
    /// Roots per attestation format for device-attest-01.
    pub attestation: AttestationConfig,
    /// How long a new order (and its authorizations) may stay unfinished.
    pub order_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub nonce_capacity: usize,
    /// Request bodies above this are refused (`malformed`, 413) before any parsing.
    pub max_body_bytes: usize,
    /// The `Retry-After` sent while an order or challenge is processing (RFC 8555 §7.4, §8.2).
    pub retry_after: Duration,
}

impl std::fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // EAB keys are secrets: their ids only.
        f.debug_struct("AcmeConfig")
            .field("base_url", &self.base_url)
            .field("meta", &self.meta)
            .field("eab_key_ids", &self.eab_keys.keys().collect::<Vec<_>>())
            .field("http01", &self.http01)
            .field("workload_template", &self.workload_template)
            .field("device_template", &self.device_template)
            .field("trust_domain", &self.trust_domain)
            .field("order_lifetime", &self.order_lifetime)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl AcmeConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            meta: DirectoryMeta::default(),
            eab_keys: HashMap::new(),
            http01: None,
            workload_template: CertTemplate::workload(),
            device_template: CertTemplate::device(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            attestation: AttestationConfig::default(),
            order_lifetime: Duration::from_secs(24 * 3600),
            nonce_lifetime: Duration::from_secs(3600),
            nonce_capacity: 100_000,
            max_body_bytes: 64 * 1024,
            retry_after: Duration::from_secs(1),
        }
    }
}
