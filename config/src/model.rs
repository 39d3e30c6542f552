//! The typed configuration: one TOML file, every section optional with defaults.
//!
//! Relative paths are resolved against the directory of the config file at load time, so a
//! config can be moved together with its data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub trust: TrustConfig,
    #[serde(default)]
    pub inventory: InventoryConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The mTLS reverse proxy; absent means the gateway is not run.
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
    /// The attesting ACME CA and its inventory; absent means the CA is not run.
    #[serde(default)]
    pub ca: Option<crate::ca::CaConfig>,
    /// The CA's status feed, for enforcement points in another process than the CA.
    #[serde(default)]
    pub status_feed: Option<crate::status_feed::StatusFeedConfig>,
}

/// What a device certificate must chain to, and how strictly its validity is read.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// The SPIFFE trust domain of device URIs: `spiffe://<trust_domain>/device/<id>`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// PEM files holding the CA certificates device certificates must chain to.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// Tolerance applied to notBefore / notAfter.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Certificates whose notAfter - notBefore exceeds this are refused, so that a long-lived
    /// certificate from the same root cannot stand in for a short-lived device certificate.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            roots: Vec::new(),
            clock_skew: default_clock_skew(),
            max_lifetime: default_max_lifetime(),
        }
    }
}

fn default_trust_domain() -> String {
    "portcullis.local".into()
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Where device status comes from when no CA feed is configured (air-gapped setups, tests).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// A TOML or JSON inventory document (see `policy::inventory`), reloaded when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `portcullis_gateway=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// One JSON line per access decision.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout`, `stderr`, `off`, or a file path (appended to).
    #[serde(default = "default_audit_sink")]
    pub sink: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: default_audit_sink(),
        }
    }
}

fn default_audit_sink() -> String {
    "stdout".into()
}

/// The operations listener: `/metrics`, `/healthz`, `/readyz`. Plain HTTP; bind it to loopback
/// or a management network.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The TLS handshake fails without a valid device certificate.
    #[default]
    Required,
    /// A handshake without a certificate is accepted; routes decide (e.g. a health page).
    /// A certificate that is presented must still verify.
    Optional,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain the gateway presents (leaf first).
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Tokio worker threads; 0 means one per core.
    #[serde(default)]
    pub worker_threads: usize,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub assertion: AssertionConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Time allowed for a client to send a complete request head (slowloris).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time allowed for the upstream to answer with a response head.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Largest request head accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body accepted, in bytes (streamed; checked as it flows). 0 = unlimited.
    #[serde(default)]
    pub max_body_bytes: u64,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            handshake_timeout: default_handshake_timeout(),
            upstream_timeout: default_upstream_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: 0,
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    250
}

/// The signed identity assertion (`X-Portcullis-Assertion`, ES256 JWT).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// `iss` claim.
    #[serde(default = "default_assertion_issuer")]
    pub issuer: String,
    /// Lifetime of an assertion (`exp - iat`); at most 5 minutes.
    #[serde(default = "default_assertion_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Directory holding the ES256 signing keys (`current.pem`, `previous.pem`), created if
    /// missing. Unset: an in-memory key per process (assertions do not survive a restart).
    #[serde(default)]
    pub key_dir: Option<PathBuf>,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        Self {
            issuer: default_assertion_issuer(),
            ttl: default_assertion_ttl(),
            key_dir: None,
        }
    }
}

fn default_assertion_issuer() -> String {
    "portcullis".into()
}
fn default_assertion_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}

/// The identity a route passes to its upstream. Inbound copies are stripped whatever is chosen.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityHeader {
    /// `X-Portcullis-Device-Id`, `-Status`, `-Serial`, `-Fingerprint`, `-Platform`, `-Tags`.
    Plain,
    /// Envoy's `X-Forwarded-Client-Cert` (Hash, URI, DNS, Subject), SANITIZE_SET semantics.
    Xfcc,
    /// RFC 9440 `Client-Cert`.
    ClientCert,
    /// `X-Portcullis-Assertion`, an ES256 JWT verifiable with the gateway's JWKS.
    Assertion,
}

fn default_identity_headers() -> Vec<IdentityHeader> {
    vec![IdentityHeader::Plain, IdentityHeader::Assertion]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs, metrics and audit; defaults to `routes[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Host this route serves (matched against the Host / :authority, port ignored, and SNI).
    /// `*` matches any host; `*.example.com` one label of wildcard.
    pub from: String,
    /// Path prefix this route serves; the longest matching prefix wins.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Upstream base URL, `http://` or `https://`.
    pub to: String,
    /// PEM CA bundle for an `https://` upstream; default: the system / webpki roots.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Client certificate the gateway presents to an `https://` upstream.
    #[serde(default)]
    pub upstream_cert: Option<PathBuf>,
    #[serde(default)]
    pub upstream_key: Option<PathBuf>,
    /// Keep the client's Host header instead of the upstream's authority.
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default = "default_identity_headers")]
    pub identity_headers: Vec<IdentityHeader>,
    /// The request is allowed if any of these match and none of `deny` does. Default deny.
    #[serde(default)]
    pub allow: Vec<Criterion>,
    #[serde(default)]
    pub deny: Vec<Criterion>,
}

fn default_path_prefix() -> String {
    "/".into()
}

/// A device's inventory status.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Active,
    Quarantined,
    Retired,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Quarantined => "quarantined",
            DeviceStatus::Retired => "retired",
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeviceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(DeviceStatus::Active),
            "quarantined" => Ok(DeviceStatus::Quarantined),
            "retired" => Ok(DeviceStatus::Retired),
            other => Err(format!(
                "`{other}` is not a device status (active, quarantined, retired)"
            )),
        }
    }
}

/// One criterion of a route rule, Pomerium-PPL-like. In TOML each is a one-key table:
/// `{ and = [ { tag = "eng" }, { not = { platform = "linux" } } ] }`.
///
/// A device must be `active` in the inventory for any rule to be evaluated at all (that check
/// is not optional); `status` is for routes that accept devices without a certificate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Criterion {
    /// Matches every request (`accept = true`); `accept = false` matches none.
    Accept(bool),
    And(Vec<Criterion>),
    Or(Vec<Criterion>),
    Not(Box<Criterion>),
    /// A verified device certificate was presented.
    Authenticated(bool),
    Status(DeviceStatus),
    DeviceId(String),
    /// The inventory record carries this tag.
    Tag(String),
    /// The inventory platform (e.g. `macos`, `windows`, `linux`), case-insensitive.
    Platform(String),
    /// The attestation format recorded in the certificate (`tpm`, `apple`, `step`).
    Attestation(String),
    /// SHA-256 of the leaf certificate DER, hex (colons allowed).
    Fingerprint(String),
    /// A DNS or URI SAN of the leaf certificate, exact.
    San(String),
    /// The client's address lies in this network.
    SourceIp(IpNet),
    /// The HTTP method, case-sensitive as RFC 9110 says.
    Method(String),
    PathPrefix(String),
    /// A glob over the path: `*` any run within a segment or across, `?` one character.
    Path(String),
}
