//! Reading a config file: TOML syntax and types (serde), then relative paths, then meaning
//! (`validate`). Every problem is located at a line when the input allows.

use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Problem};
use crate::locate::line_of;
use crate::model::Config;
use crate::validate::validate;

/// Reads, parses and validates a config file. Relative paths inside it are resolved against
/// the file's directory.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            key: String::new(),
            line: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse_str(&text, path)
}

/// Parses and validates config text as if it had been read from `file`.
pub fn parse_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let refuse = |problems| ConfigError {
        file: file.to_path_buf(),
        problems,
    };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        refuse(vec![Problem {
            key: String::new(),
            line: e.span().map(|s| line_at(text, s.start)),
            message: e.message().trim().to_string(),
        }])
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    resolve_paths(&mut config, &base);
    let problems: Vec<Problem> = validate(&config)
        .into_iter()
        .map(|(path, message)| Problem {
            line: line_of(text, &path),
            key: path.to_string(),
            message,
        })
        .collect();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(refuse(problems))
    }
}

/// 1-based line number of a byte offset.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    config.trust.roots.iter_mut().for_each(fix);
    if let Some(f) = config.inventory.file.as_mut() {
        fix(f);
    }
    if !matches!(config.audit.sink.as_str(), "stdout" | "stderr" | "off") {
        let mut sink = PathBuf::from(&config.audit.sink);
        fix(&mut sink);
        config.audit.sink = sink.to_string_lossy().into_owned();
    }
    if let Some(ca) = config.ca.as_mut() {
        fix(&mut ca.data_dir);
        for p in [&mut ca.acme.eab_keys_file, &mut ca.admin_api.tokens_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        ca.admin_api.client_roots.iter_mut().for_each(fix);
        let att = &mut ca.attestation;
        for list in [
            &mut att.tpm_roots,
            &mut att.apple_roots,
            &mut att.step_roots,
            &mut att.ek_roots,
        ] {
            list.iter_mut().for_each(fix);
        }
    }
    if let Some(feed) = config.status_feed.as_mut() {
        for p in [&mut feed.ca_roots, &mut feed.cert, &mut feed.key] {
            fix(p);
        }
    }
    if let Some(gw) = config.gateway.as_mut() {
        fix(&mut gw.cert);
        fix(&mut gw.key);
        if let Some(d) = gw.assertion.key_dir.as_mut() {
            fix(d);
        }
        for route in &mut gw.routes {
            for p in [
                &mut route.upstream_ca,
                &mut route.upstream_cert,
                &mut route.upstream_key,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
    }
}
