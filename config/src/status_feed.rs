//! `[status_feed]`: how an enforcement point without a CA in its own process follows the CA's
//! status feed (inventory and revocations, pushed), and what it does when the feed goes silent.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an enforcement point does once its status feed has been silent for `max_staleness`
/// (Teleport's locking modes).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StaleMode {
    /// Keep the last known state: a CA restart or a network cut locks nobody out, and a
    /// revocation already heard stays in force.
    #[default]
    BestEffort,
    /// Refuse every device (and cut their sessions) until the feed is heard again.
    Strict,
}

impl StaleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleMode::BestEffort => "best_effort",
            StaleMode::Strict => "strict",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatusFeedConfig {
    /// The CA's feed URL: `https://<ca>/feed/v2/status`.
    pub url: String,
    /// PEM file of the CA certificates the feed's TLS server certificate must chain to (the
    /// CA's `bundle.pem`).
    pub ca_roots: PathBuf,
    /// The node certificate chain (PEM) the CA issued to this enforcement point
    /// (`portcullis ca node-cert`), and its private key (PEM, mode 0600).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Longest silence (no event, no heartbeat) before the point counts itself stale.
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
    #[serde(default)]
    pub mode: StaleMode,
    /// Where to keep the last state heard (written 0600 after every change; read at start).
    /// Without it, a point restarted while the CA is unreachable knows no device and refuses
    /// everyone until the CA answers; with it, it starts from that state, counted as heard
    /// when the file was written, so `mode` decides as for any silence.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(30)
}
