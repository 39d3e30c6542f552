//! `enroll`, `renew`, `run`, `status`: the agent's four verbs over [`AgentConfig`].

use std::time::{Duration, SystemTime};

use crate::certificate::{pem_chain, pem_encode, summarize, CertSummary};
use crate::clock::{Clock, Sleep, TokioSleep};
use crate::config::AgentConfig;
use crate::error::{io, AgentError, Result};
use crate::keys::{DeviceKey, KeyMode};
use crate::output::{OutDir, AK_CERT_FILE, CERT_FILE, KEY_JSON_FILE, KEY_REF_FILE};
use crate::renewal::{self, Backoff};
use crate::{acme, enroll as open_enrollment, http};

/// What `enroll` and `renew` leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: CertSummary,
    /// `handle:0x81000101` or the software key file.
    pub key_reference: String,
    pub chain_path: std::path::PathBuf,
}

fn read_chain(out: &OutDir) -> Result<Option<Vec<Vec<u8>>>> {
    match out.read(CERT_FILE)? {
        Some(pem) => Ok(Some(pem_chain(&pem)?)),
        None => Ok(None),
    }
}

/// The AK certificate: the saved one, or (TPM mode, none saved) from open enrollment.
async fn ak_chain(
    config: &AgentConfig,
    http: &http::HttpClient,
    out: &OutDir,
) -> Result<Vec<Vec<u8>>> {
    let KeyMode::Tpm(tpm) = &config.key_mode else {
        return Ok(Vec::new());
    };
    if let Some(pem) = out.read(AK_CERT_FILE)? {
        return pem_chain(&pem);
    }
    let ek_chain = match &config.ek_chain {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(io(path))?;
            pem_chain(&pem)?
        }
        None => Vec::new(),
    };
    tracing::info!(device = %config.device_id, "no AK certificate yet: open TPM enrollment");
    let ak = open_enrollment::enroll_ak(http, &config.base_url(), tpm, &config.device_id, ek_chain)
        .await?;
    out.write(
        AK_CERT_FILE,
        pem_encode("CERTIFICATE", &ak.cert).as_bytes(),
        0o644,
    )?;
    Ok(vec![ak.cert])
}

async fn obtain(config: &AgentConfig, renewing: bool) -> Result<Issued> {
    config.validate()?;
    if config.ca_url.starts_with("http://") {
        // Fine for a CA on loopback (tests, `portcullis up`); anywhere else the ACME JWS still
        // protects requests, but enrollment answers and certificates travel unauthenticated.
        tracing::warn!(ca = %config.ca_url, "the CA URL is plain http://");
    }
    let out = OutDir::new(&config.out_dir);
    out.create()?;
    let http = http::client(config.ca_roots.as_deref())?;
    // enroll creates the key if needed; renew insists on the existing one (same key).
    let key = DeviceKey::open(&config.key_mode, &config.out_dir, !renewing).await?;
    let previous = read_chain(&out)?;
    if renewing && previous.is_none() {
        return Err(AgentError::Config(format!(
            "no certificate in {} to renew; run `portcullis agent enroll` first",
            out.path(CERT_FILE).display()
        )));
    }
    let ak_chain = ak_chain(config, &http, &out).await?;
    let account = acme::account(&http, &config.directory_url(), &out).await?;
    let replaces = previous
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|leaf| summarize(leaf).ok())
        .filter(|s| s.spki == key.spki())
        .and_then(|s| s.ari_id);
    let pem = match acme::order_certificate(
        &account,
        &key,
        &config.device_id,
        &ak_chain,
        replaces.as_deref(),
    )
    .await
    {
        // A CA that refuses `replaces` (no ARI, already replaced) still renews without it.
        Err(AgentError::Refused { .. } | AgentError::Acme { .. }) if replaces.is_some() => {
            tracing::info!("retrying the order without `replaces`");
            acme::order_certificate(&account, &key, &config.device_id, &ak_chain, None).await?
        }
        other => other?,
    };
    let chain = pem_chain(&pem)?;
    let leaf = summarize(&chain[0])?;
    // The CA must have certified our key, and for our device.
    if leaf.spki != key.spki() {
        return Err(AgentError::Invalid(
            "the CA issued a certificate for another key than the device key".into(),
        ));
    }
    if leaf.device_id.as_deref() != Some(config.device_id.as_str()) {
        return Err(AgentError::Invalid(format!(
            "the issued certificate names device {:?}, not {:?}",
            leaf.device_id, config.device_id
        )));
    }
    out.write(CERT_FILE, pem.as_bytes(), 0o644)?;
    let reference = key.reference();
    out.write(KEY_REF_FILE, format!("{reference}\n").as_bytes(), 0o644)?;
    let key_json = match &config.key_mode {
        KeyMode::Tpm(t) => serde_json::json!({
            "mode": "tpm",
            "handle": t.device_key_handle.hex(),
            "openssl_key": reference,
            "tcti": t.tcti,
        }),
        KeyMode::Software => serde_json::json!({
            "mode": "software",
            "key_file": reference,
            "warning": "development only: the private key is a file, not hardware",
        }),
    };
    out.write(KEY_JSON_FILE, format!("{key_json:#}\n").as_bytes(), 0o644)?;
    tracing::info!(
        device = %config.device_id,
        serial = %leaf.serial,
        not_after = %humantime(leaf.not_after),
        key = %reference,
        "device certificate written to {}",
        out.path(CERT_FILE).display()
    );
    Ok(Issued {
        cert: leaf,
        key_reference: reference,
        chain_path: out.path(CERT_FILE),
    })
}

/// First enrollment: (TPM mode, no AK certificate yet) open TPM enrollment, then an ACME
/// order with device-attest-01; creates the device key if there is none.
pub async fn enroll(config: &AgentConfig) -> Result<Issued> {
    obtain(config, false).await
}

/// A new certificate for the same device key (a new order; `replaces` the current one
/// when the CA supports ARI).
pub async fn renew(config: &AgentConfig) -> Result<Issued> {
    obtain(config, true).await
}

/// The current certificate and when it will be renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub cert: CertSummary,
    pub renew_at: SystemTime,
    pub now: SystemTime,
}

impl Status {
    pub fn time_to_renewal(&self) -> Duration {
        renewal::wait(self.now, self.renew_at)
    }
    pub fn expired(&self) -> bool {
        self.now >= self.cert.not_after
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "device id:       {}",
            self.cert.device_id.as_deref().unwrap_or("(none)")
        )?;
        writeln!(f, "serial:          {}", self.cert.serial)?;
        writeln!(f, "not before:      {}", humantime(self.cert.not_before))?;
        writeln!(f, "not after:       {}", humantime(self.cert.not_after))?;
        if self.expired() {
            writeln!(f, "state:           EXPIRED")?;
        }
        writeln!(f, "renewal at:      {}", humantime(self.renew_at))?;
        write!(
            f,
            "time to renewal: {}",
            human_duration(self.time_to_renewal())
        )
    }
}

/// `status` at `now` (no randomness: the jitter-free two-thirds point).
pub fn status(config: &AgentConfig, now: SystemTime) -> Result<Status> {
    let out = OutDir::new(&config.out_dir);
    let chain = read_chain(&out)?.ok_or_else(|| {
        AgentError::Config(format!(
            "no certificate at {}",
            out.path(CERT_FILE).display()
        ))
    })?;
    let cert = summarize(&chain[0])?;
    let renew_at = renewal::two_thirds(cert.not_before, cert.not_after, 0.0);
    Ok(Status {
        cert,
        renew_at,
        now,
    })
}

/// Keeps the certificate fresh until the CA refuses the device: renews at two thirds of
/// the lifetime, or in the CA's ARI window; retries failures with backoff and jitter.
/// Returns only with an error: [`AgentError::DeviceNotTrusted`] when the CA says the device
/// is no longer trusted (the caller exits non-zero), or a configuration error.
pub async fn run(config: &AgentConfig, clock: &dyn Clock) -> Result<()> {
    run_with(config, clock, &TokioSleep).await
}

/// [`run`] with an injected way to wait.
pub async fn run_with(config: &AgentConfig, clock: &dyn Clock, sleep: &dyn Sleep) -> Result<()> {
    config.validate()?;
    let out = OutDir::new(&config.out_dir);
    let mut backoff = Backoff::default();
    // After a failure the next attempt is the backoff's, not a fresh (re-jittered) renewal
    // point: a failed renewal is retried, never postponed.
    let mut retry_at: Option<SystemTime> = None;
    loop {
        let current = read_chain(&out)?.map(|c| summarize(&c[0])).transpose()?;
        let at = match (retry_at, &current) {
            (Some(at), _) => at,
            (None, None) => clock.now(),
            (None, Some(cert)) => {
                let window = ari_window(config, cert).await;
                let at =
                    renewal::renew_at(cert.not_before, cert.not_after, window, renewal::rand01());
                tracing::info!(
                    serial = %cert.serial,
                    renew_at = %humantime(at),
                    ari = window.is_some(),
                    "next renewal in {}",
                    human_duration(renewal::wait(clock.now(), at))
                );
                at
            }
        };
        sleep.sleep(renewal::wait(clock.now(), at)).await;
        let result = match &current {
            None => enroll(config).await.map(|_| ()),
            Some(_) => renew(config).await.map(|_| ()),
        };
        match result {
            Ok(()) => {
                backoff.reset();
                retry_at = None;
            }
            Err(e @ AgentError::DeviceNotTrusted { .. }) => {
                tracing::error!(device = %config.device_id, error = %e, "the CA no longer trusts this device; renewal stopped");
                return Err(e);
            }
            Err(e @ AgentError::Config(_)) => return Err(e),
            Err(e) => {
                let now = clock.now();
                // While the certificate is valid, retry before it expires.
                let deadline = current.as_ref().map(|c| c.not_after).unwrap_or(now);
                let wait = backoff.next_before(renewal::rand01(), now, deadline);
                tracing::warn!(error = %e, attempt = backoff.attempt, "renewal failed; retrying in {}", human_duration(wait));
                retry_at = Some(now + wait);
            }
        }
    }
}

async fn ari_window(config: &AgentConfig, cert: &CertSummary) -> Option<(SystemTime, SystemTime)> {
    let id = cert.ari_id.as_deref()?;
    let http = http::client(config.ca_roots.as_deref()).ok()?;
    let out = OutDir::new(&config.out_dir);
    let account = acme::account(&http, &config.directory_url(), &out)
        .await
        .ok()?;
    acme::ari_window(&account, id).await
}

fn humantime(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_human_formats() {
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 61)),
            "3h01m01s"
        );
        assert_eq!(humantime(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
