//! `portcullis ca node-cert NAME`: a certificate for an enforcement point to subscribe to the
//! CA's status feed with. Run on the CA host (it needs the intermediate key); copy the two
//! files to the enforcement point and name them in its `[status_feed]`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use portcullis_ca::pki::{Authority, LifetimePolicy};
use portcullis_ca::service::Ca;

/// Writes `<out>/<name>.pem` (leaf + intermediate) and `<out>/<name>.key` (0600); returns the
/// two paths.
pub fn issue(
    config_path: &Path,
    name: &str,
    out: &Path,
    lifetime: Option<Duration>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let config = portcullis_config::load_file(config_path).map_err(|e| anyhow!("{e}"))?;
    let ca = config
        .ca
        .as_ref()
        .ok_or_else(|| anyhow!("the config has no [ca] section"))?;
    let paths = Ca::paths(&ca.data_dir);
    let pki = Authority::load(&paths, LifetimePolicy::new(ca.max_lifetime)?)?;
    let (cert, key_pem) = portcullis_ca::feed::node::issue(
        &pki,
        &config.trust.trust_domain,
        name,
        lifetime.unwrap_or(portcullis_ca::feed::node::DEFAULT_NODE_LIFETIME),
        SystemTime::now(),
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert.chain_pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    // Created 0600, never widened then narrowed: the key is never readable by others.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .and_then(|mut f| f.write_all(key_pem.as_bytes()))
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    Ok((cert_path, key_path))
}
