//! The `[ca]` section: the attesting ACME CA and its inventory, run by `portcullis serve`
//! beside (or without) the gateway. The CA crate maps these onto its own settings; this file
//! only says what an operator can write and what it defaults to.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// HTTPS listener: ACME under `/acme/`, the inventory admin API under `/admin/v1/`.
    pub listen: SocketAddr,
    /// Scheme, host and port clients reach the CA at (every ACME URL starts with it).
    /// Default: `https://<listen>`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Plain-HTTP listener for the CRL (`/crl/intermediate.crl`) and the OCSP responder
    /// (`/ocsp`, and `/` for clients given a bare URL). Plain HTTP because relying parties
    /// fetch them before they can trust anything (RFC 5280 §4.2.1.13, RFC 6960 §A.1).
    /// Default: off (both are still served on the HTTPS listener).
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// `http://host:port` relying parties reach the CRL and OCSP at; issued certificates
    /// carry `<http_base_url>/crl/intermediate.crl` (CRL distribution point) and
    /// `<http_base_url>/ocsp` (authority information access). Default: `http://<http_listen>`
    /// when `http_listen` is set; otherwise none, and certificates carry neither extension.
    #[serde(default)]
    pub http_base_url: Option<String>,
    /// Holds `pki/` (root, intermediate, `bundle.pem`) and `ca.db`; created on first start.
    pub data_dir: PathBuf,
    /// Extra DNS names on the CA's own TLS certificate (the host of `base_url` is always on it).
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Used only when the CA is created: "<name> Root CA", "<name> Intermediate CA".
    #[serde(default = "default_ca_name")]
    pub name: String,
    /// Used only when the CA is created.
    #[serde(default)]
    pub key_type: CaKeyType,
    /// No certificate the CA issues lives longer than this, whatever a template or an order
    /// asks for.
    #[serde(default = "default_ca_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    #[serde(default)]
    pub acme: AcmeSection,
    #[serde(default)]
    pub templates: Templates,
    /// The inventory admin API; off unless a credential source is configured.
    #[serde(default)]
    pub admin_api: AdminApiSection,
    /// Trust anchors of device attestations (device-attest-01), per format.
    #[serde(default)]
    pub attestation: AttestationSection,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum CaKeyType {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl CaKeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            CaKeyType::EcdsaP256 => "ecdsa-p256",
            CaKeyType::EcdsaP384 => "ecdsa-p384",
            CaKeyType::Rsa2048 => "rsa-2048",
            CaKeyType::Rsa3072 => "rsa-3072",
            CaKeyType::Rsa4096 => "rsa-4096",
        }
    }
}

impl std::str::FromStr for CaKeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            CaKeyType::EcdsaP256,
            CaKeyType::EcdsaP384,
            CaKeyType::Rsa2048,
            CaKeyType::Rsa3072,
            CaKeyType::Rsa4096,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| {
            format!(
                "`{s}` is not a key type (ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096)"
            )
        })
    }
}

fn default_ca_name() -> String {
    "Portcullis".into()
}
fn default_ca_max_lifetime() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// RFC 8555 settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The directory's `meta.termsOfService` (RFC 8555 §7.1.1).
    #[serde(default)]
    pub terms_of_service: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub caa_identities: Vec<String>,
    /// newAccount needs an external account binding (RFC 8555 §7.3.4) made with a key of
    /// `eab_keys_file`.
    #[serde(default)]
    pub external_account_required: bool,
    /// `kid base64url-key` per line, `#` comments; must be 0600.
    #[serde(default)]
    pub eab_keys_file: Option<PathBuf>,
    /// How long an order and its authorizations may stay unfinished.
    #[serde(default = "default_order_lifetime", with = "humantime_serde")]
    pub order_lifetime: Duration,
    /// http-01 for workload (server) certificates; absent: off, and DNS identifiers are refused.
    #[serde(default)]
    pub http01: Option<Http01Section>,
}

impl Default for AcmeSection {
    fn default() -> Self {
        Self {
            terms_of_service: None,
            website: None,
            caa_identities: Vec::new(),
            external_account_required: false,
            eab_keys_file: None,
            order_lifetime: default_order_lifetime(),
            http01: None,
        }
    }
}

fn default_order_lifetime() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Http01Section {
    /// DNS names the CA may issue for: exact names, or `*.suffix` for any name below `suffix`.
    pub allowed_names: Vec<String>,
    /// The port the validator connects to: 80 per RFC 8555 §8.3; lab setups point it at a
    /// test server (like Pebble's `httpPort`).
    #[serde(default = "default_http01_port")]
    pub port: u16,
    /// Name → address map consulted before DNS (lab setups on loopback).
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// Whole-validation time limit: connect, request, response.
    #[serde(default = "default_http01_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_http01_port() -> u16 {
    80
}
fn default_http01_timeout() -> Duration {
    Duration::from_secs(10)
}

/// What issued certificates look like; names and keys come from the validated order.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    /// Device certificates (EKU clientAuth).
    #[serde(default)]
    pub device: TemplateSection,
    /// Workload certificates from http-01 (EKU serverAuth).
    #[serde(default)]
    pub workload: TemplateSection,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    /// At least 5 minutes, at most `ca.max_lifetime`.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for TemplateSection {
    fn default() -> Self {
        Self {
            lifetime: default_cert_lifetime(),
        }
    }
}

fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Credentials the inventory admin API accepts. Neither set: the API is off.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminApiSection {
    /// Bearer tokens, `name token` per line (`name` is the actor in the audit log); 0600.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// PEM roots an admin client certificate must chain to (mTLS); the actor is its CN.
    #[serde(default)]
    pub client_roots: Vec<PathBuf>,
}

/// Roots a device attestation must chain to, per attestation format. An empty list means the
/// vendor roots built into the CA: the Microsoft TPM Root CA 2014 (`tpm`), the Apple
/// Enterprise Attestation Root CA (`apple`), the Yubico PIV roots (`step`). A non-empty list
/// replaces them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttestationSection {
    /// PEM files of TPM manufacturer / attestation CA roots for AK certificates.
    #[serde(default)]
    pub tpm_roots: Vec<PathBuf>,
    /// PEM files of Apple Managed Device Attestation roots.
    #[serde(default)]
    pub apple_roots: Vec<PathBuf>,
    /// PEM files of YubiKey PIV attestation roots.
    #[serde(default)]
    pub step_roots: Vec<PathBuf>,
    /// PEM files of TPM manufacturer roots (or intermediates) that EK certificates must chain
    /// to for open TPM enrollment (`/enroll/tpm/start`), where the CA issues AK certificates
    /// itself. No embedded default: empty means only EKs the inventory pins can enrol.
    #[serde(default)]
    pub ek_roots: Vec<PathBuf>,
    /// Accept SHA-1 in TPM attestations (RS1 signatures, SHA-1 Names and certificates). Real
    /// Windows TPM attestations use RS1; SHA-1 collisions are practical, so off by default.
    #[serde(default)]
    pub allow_sha1_tpm: bool,
    /// DEVELOPMENT ONLY: accept the agent's software key mode (`fmt =
    /// "portcullis-software-unattested"`): nothing is attested and the device id is the
    /// client's claim. Certificates issued so carry that format in their attestation-format
    /// extension. Off by default.
    #[serde(default)]
    pub allow_unattested: bool,
}

impl CaConfig {
    /// Where relying parties fetch the CRL and ask OCSP, without a trailing slash; `None`
    /// when neither `http_base_url` nor `http_listen` is set.
    pub fn http_base_url(&self) -> Option<String> {
        match (&self.http_base_url, self.http_listen) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(listen)) => Some(format!("http://{listen}")),
            (None, None) => None,
        }
    }

    /// The URL every ACME URL starts with, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}", self.listen),
        }
    }
}
