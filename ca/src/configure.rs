//! From the `[ca]` section of the config file to the CA's settings: the one place where an
//! operator's words become the CA's types, including the secret files the section names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use portcullis_config::{CaConfig, CaKeyType};

use crate::acme::{AcmeConfig, AttestationConfig, DirectoryMeta, Http01Config};
use crate::admin_api::AdminApiSettings;
use crate::enroll::EnrollSettings;
use crate::pki::{CertTemplate, InitOptions, KeyAlgorithm};
use crate::service::CaSettings;

/// An EAB MAC key shorter than this is refused (HS256 wants at least its output size).
const MIN_EAB_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// The settings `Ca::open` takes for this `[ca]` section. `trust_domain` is the config's
/// `[trust] trust_domain`: device certificates name `spiffe://<trust_domain>/device/<id>`,
/// which is what enforcement points parse them with.
pub fn settings(config: &CaConfig, trust_domain: &str) -> Result<CaSettings, ConfigureError> {
    let mut acme = AcmeConfig::new(config.base_url());
    acme.trust_domain = trust_domain.to_string();
    acme.meta = DirectoryMeta {
        terms_of_service: config.acme.terms_of_service.clone(),
        website: config.acme.website.clone(),
        caa_identities: config.acme.caa_identities.clone(),
        external_account_required: config.acme.external_account_required,
    };
    if let Some(path) = &config.acme.eab_keys_file {
        acme.eab_keys = read_eab_keys(path)?;
    }
    acme.order_lifetime = config.acme.order_lifetime;
    acme.http01 = config.acme.http01.as_ref().map(|h| Http01Config {
        allowed_names: h.allowed_names.clone(),
        port: h.port,
        hosts: h.hosts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        timeout: h.timeout,
    });
    acme.workload_template = CertTemplate {
        lifetime: config.templates.workload.lifetime,
        ..CertTemplate::workload()
    };
    acme.device_template = CertTemplate {
        lifetime: config.templates.device.lifetime,
        ..CertTemplate::device()
    };
    let att = &config.attestation;
    acme.attestation = AttestationConfig {
        tpm_roots: read_roots(&att.tpm_roots)?,
        apple_roots: read_roots(&att.apple_roots)?,
        step_roots: read_roots(&att.step_roots)?,
        allow_sha1_tpm: att.allow_sha1_tpm,
        allow_unattested: att.allow_unattested,
    };

    let mut settings = CaSettings::new(&config.data_dir, acme);
    settings.init = InitOptions {
        name: config.name.clone(),
        key: key_algorithm(config.key_type),
        ..InitOptions::default()
    };
    settings.max_lifetime = config.max_lifetime;
    settings.enroll = enroll_settings(config)?;
    settings.http_listen = config.http_listen;
    settings.http_base_url = config.http_base_url();
    settings.admin_api = AdminApiSettings {
        tokens_file: config.admin_api.tokens_file.clone(),
        client_roots: config.admin_api.client_roots.clone(),
    };
    // The CA's own certificate names the host clients dial (base_url) and the listen address.
    let host = base_url_host(&config.base_url());
    let mut dns_names = config.tls_names.clone();
    let mut ips = vec![config.listen.ip()];
    match host.parse::<IpAddr>() {
        Ok(ip) => ips.push(ip),
        Err(_) => dns_names.push(host),
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    dns_names.sort();
    dns_names.dedup();
    settings.tls_dns_names = dns_names;
    settings.tls_ip_addresses = ips;
    Ok(settings)
}

/// The certificates of PEM `files` (DER), `None` for no files (the embedded vendor roots).
/// A file without a certificate is an error: it would otherwise replace the vendor roots with
/// nothing and refuse every device.
fn read_roots(files: &[PathBuf]) -> Result<Option<Vec<Vec<u8>>>, ConfigureError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut roots = Vec::new();
    for path in files {
        let err = |message: String| ConfigureError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let certs = crate::attest::pem_certificates(&text).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        for der in &certs {
            crate::attest::chain::parse_certificate(der, "root").map_err(|e| err(e.to_string()))?;
        }
        roots.extend(certs);
    }
    Ok(Some(roots))
}

/// Open TPM enrollment's settings for this `[ca]` section: the EK roots of
/// `[ca.attestation] ek_roots` and its `allow_sha1_tpm`.
pub fn enroll_settings(config: &CaConfig) -> Result<EnrollSettings, ConfigureError> {
    let att = &config.attestation;
    Ok(EnrollSettings {
        ek_roots: read_roots(&att.ek_roots)?.unwrap_or_default(),
        allow_sha1: att.allow_sha1_tpm,
        ..EnrollSettings::default()
    })
}

pub fn key_algorithm(key: CaKeyType) -> KeyAlgorithm {
    match key {
        CaKeyType::EcdsaP256 => KeyAlgorithm::EcdsaP256,
        CaKeyType::EcdsaP384 => KeyAlgorithm::EcdsaP384,
        CaKeyType::Rsa2048 => KeyAlgorithm::Rsa2048,
        CaKeyType::Rsa3072 => KeyAlgorithm::Rsa3072,
        CaKeyType::Rsa4096 => KeyAlgorithm::Rsa4096,
    }
}

/// `https://host:port` → `host` (brackets of an IPv6 literal removed).
fn base_url_host(base_url: &str) -> String {
    let authority = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
        .trim_end_matches('/');
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_string()
}

/// Reads `kid base64url-key` lines (`#` comments, blank lines). The file holds secrets: it
/// must not be readable by group or others.
pub fn read_eab_keys(path: &Path) -> Result<HashMap<String, Vec<u8>>, ConfigureError> {
    let err = |message: String| ConfigureError::File {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "holds secrets but is readable by others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: &str| err(format!("line {}: {m}", n + 1));
        let mut parts = line.split_whitespace();
        let (Some(kid), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(at("expected `kid base64url-key`"));
        };
        let key = B64
            .decode(key.trim_end_matches('='))
            .map_err(|_| at("the key is not base64url"))?;
        if key.len() < MIN_EAB_KEY_BYTES {
            return Err(at(&format!(
                "the key is shorter than {MIN_EAB_KEY_BYTES} bytes"
            )));
        }
        if keys.insert(kid.to_string(), key).is_some() {
            return Err(at(&format!("key id `{kid}` appears twice")));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn ca_config(dir: &Path, extra: &str) -> CaConfig {
        let text = format!("[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n{extra}");
        portcullis_config::parse_str(&text, &dir.join("portcullis.toml"))
            .unwrap()
            .ca
            .unwrap()
    }

    #[test]
    fn eab_keys_are_read_and_bad_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = B64.encode([7u8; 32]);
        let good = write(
            dir.path(),
            "good",
            &format!("# ops\n\nkid-1 {key}\n"),
            0o600,
        );
        assert_eq!(read_eab_keys(&good).unwrap()["kid-1"], vec![7u8; 32]);

        let open = write(dir.path(), "open", &format!("kid-1 {key}\n"), 0o644);
        assert!(read_eab_keys(&open)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        for (text, expected) in [
            (
                "kid-1\n".to_string(),
                "line 1: expected `kid base64url-key`",
            ),
            (
                "kid-1 !!!\n".to_string(),
                "line 1: the key is not base64url",
            ),
            ("kid-1 AAAA\n".to_string(), "shorter than 32 bytes"),
            (
                format!("a {key}\na {key}\n"),
                "line 2: key id `a` appears twice",
            ),
        ] {
            let p = write(dir.path(), "bad", &text, 0o600);
            let e = read_eab_keys(&p).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn settings_follow_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ca_config(
            dir.path(),
            "base_url = \"https://ca.test:9443\"\ntls_names = [\"ca.internal\"]\nkey_type = \"rsa-2048\"\n\
             [ca.acme.http01]\nallowed_names = [\"*.apps.test\"]\nport = 5002\n\
             [ca.templates.workload]\nlifetime = \"6h\"\n",
        );
        let s = settings(&cfg, "corp.example").unwrap();
        assert_eq!(s.acme.base_url, "https://ca.test:9443");
        assert_eq!(s.acme.trust_domain, "corp.example");
        assert_eq!(s.acme.device_template.lifetime.as_secs(), 24 * 3600);
        // Default roots for every format (`Ca::open` adds its own AK CA to the TPM roots).
        assert_eq!(s.acme.attestation, AttestationConfig::default());
        assert_eq!(s.data_dir, dir.path().join("ca"));
        assert_eq!(s.init.key, KeyAlgorithm::Rsa2048);
        assert_eq!(s.tls_dns_names, vec!["ca.internal", "ca.test"]);
        assert_eq!(
            s.tls_ip_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.acme.http01.as_ref().unwrap().port, 5002);
        assert_eq!(s.acme.workload_template.lifetime.as_secs(), 6 * 3600);
    }

    #[test]
    fn device_template_and_attestation_roots_follow_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let root = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        write(dir.path(), "step.pem", &root.pem(), 0o644);
        // Passes config validation (a PEM block) but is no certificate.
        write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let cfg = ca_config(
            dir.path(),
            "[ca.templates.device]\nlifetime = \"2h\"\n\
             [ca.attestation]\nstep_roots = [\"step.pem\"]\nek_roots = [\"step.pem\"]\nallow_sha1_tpm = true\n",
        );
        let s = settings(&cfg, "portcullis.local").unwrap();
        let enroll = enroll_settings(&cfg).unwrap();
        assert_eq!(enroll.ek_roots, vec![root.der().to_vec()]);
        assert!(enroll.allow_sha1);
        assert_eq!(s.acme.device_template.lifetime.as_secs(), 2 * 3600);
        assert_eq!(
            s.acme.attestation.step_roots,
            Some(vec![root.der().to_vec()])
        );
        assert_eq!(
            s.acme.attestation.tpm_roots, None,
            "vendor roots by default"
        );
        assert!(s.acme.attestation.allow_sha1_tpm);
        let cfg = ca_config(
            dir.path(),
            "[ca.attestation]\napple_roots = [\"bad.pem\"]\n",
        );
        let e = settings(&cfg, "portcullis.local").unwrap_err().to_string();
        assert!(e.contains("bad.pem"), "{e}");
    }

    #[test]
    fn the_host_of_a_base_url() {
        assert_eq!(base_url_host("https://ca.test:9443"), "ca.test");
        assert_eq!(base_url_host("https://[::1]:9443/"), "::1");
        assert_eq!(base_url_host("https://127.0.0.1"), "127.0.0.1");
    }
}
