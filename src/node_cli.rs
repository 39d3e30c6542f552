//! Node certificates, the credentials enforcement points subscribe to the CA's status feed
//! with. Run on the CA host (they need the intermediate key and the CA database; the running
//! CA sees the database's changes within a second):
//!
//! - `portcullis ca node-cert NAME`: issue one (copy the two files to the enforcement point
//!   and name them in its `[status_feed]`);
//! - `portcullis ca nodes`: list them;
//! - `portcullis ca node-revoke NAME`: revoke a node's certificates — its feed subscription
//!   ends, it cannot reconnect, and the CRL and OCSP say revoked.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use portcullis_ca::pki::{Authority, LifetimePolicy};
use portcullis_ca::service::Ca;
use portcullis_ca::store::{NodeRevocationReason, SqliteStore};
use portcullis_config::CaConfig;

/// Writes `<out>/<name>.pem` (leaf + intermediate) and `<out>/<name>.key` (0600); returns the
/// two paths.
pub fn issue(
    config_path: &Path,
    name: &str,
    out: &Path,
    lifetime: Option<Duration>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let config = portcullis_config::load_file(config_path).map_err(|e| anyhow!("{e}"))?;
    let ca = ca_section(&config)?;
    let paths = Ca::paths(&ca.data_dir);
    let pki = Authority::load(&paths, LifetimePolicy::new(ca.max_lifetime)?)?;
    let store = open_store(&ca.data_dir)?;
    let (cert, key_pem) = portcullis_ca::feed::node::issue(
        &pki,
        &store,
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

/// Revokes every live certificate of node `name`; returns their serials.
pub fn revoke(config_path: &Path, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let reason = NodeRevocationReason::parse(reason).ok_or_else(|| {
        anyhow!("reason `{reason}`: one of keyCompromise, superseded, cessationOfOperation")
    })?;
    let store = open_config_store(config_path)?;
    let now = portcullis_ca::clock::unix_seconds(SystemTime::now());
    let serials = store.revoke_node(name, reason, now)?;
    if serials.is_empty() && !store.node_certificates()?.iter().any(|c| c.node == name) {
        anyhow::bail!("no node `{name}` in this CA's records (see `portcullis ca nodes`)");
    }
    Ok(serials)
}

/// Every node certificate the CA recorded, as a table: node, serial, notAfter, state.
pub fn list(config_path: &Path) -> anyhow::Result<String> {
    let now = portcullis_ca::clock::unix_seconds(SystemTime::now());
    let at = |t| crate::inspect::rfc3339(portcullis_ca::clock::from_unix_seconds(t));
    let mut out = format!(
        "{:<24} {:<34} {:<20} state\n",
        "node", "serial", "not after"
    );
    for cert in open_config_store(config_path)?.node_certificates()? {
        let state = match cert.revoked_at {
            Some(t) => format!("revoked {}", at(t)),
            None if cert.not_after <= now => "expired".to_string(),
            None => "valid".to_string(),
        };
        out += &format!(
            "{:<24} {:<34} {:<20} {state}\n",
            cert.node,
            cert.serial,
            at(cert.not_after)
        );
    }
    Ok(out)
}

fn ca_section(config: &portcullis_config::Config) -> anyhow::Result<&CaConfig> {
    config
        .ca
        .as_ref()
        .ok_or_else(|| anyhow!("the config has no [ca] section"))
}

fn open_config_store(config_path: &Path) -> anyhow::Result<SqliteStore> {
    let config = portcullis_config::load_file(config_path).map_err(|e| anyhow!("{e}"))?;
    open_store(&ca_section(&config)?.data_dir)
}

fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    let db = Ca::db_path(data_dir);
    SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))
}
