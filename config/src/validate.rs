//! What a well-typed config must also satisfy. Each rule returns the key it concerns and a
//! message that says what is wrong and, where it helps, what would be right.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::ca::CaConfig;
use crate::locate::KeyPath;
use crate::model::{Config, Criterion, GatewayConfig, RouteConfig};

type Problems = Vec<(KeyPath, String)>;

/// Longest clock skew we let an operator configure: more would make "expired" meaningless.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);
/// An assertion is a bearer token; it must not outlive a few minutes.
const MAX_ASSERTION_TTL: Duration = Duration::from_secs(300);
/// Below a few minutes, clock skew between devices and enforcement points makes certificates
/// unusable (the CA crate enforces the same floor).
const MIN_CERT_LIFETIME: Duration = Duration::from_secs(5 * 60);

pub(crate) fn validate(config: &Config) -> Problems {
    let mut out = Problems::new();
    let root = KeyPath::default();

    let trust = root.key("trust");
    if !is_dns_name(&config.trust.trust_domain) {
        out.push((
            trust.key("trust_domain"),
            format!(
                "`{}` is not a DNS-style trust domain",
                config.trust.trust_domain
            ),
        ));
    }
    for (i, p) in config.trust.roots.iter().enumerate() {
        check_file(&mut out, trust.key("roots").index(i), p);
    }
    if config.trust.clock_skew > MAX_CLOCK_SKEW {
        out.push((
            trust.key("clock_skew"),
            format!("at most {}s", MAX_CLOCK_SKEW.as_secs()),
        ));
    }
    if config.trust.max_lifetime.is_zero() {
        out.push((trust.key("max_lifetime"), "must be longer than zero".into()));
    }
    if let Some(f) = &config.inventory.file {
        check_file(&mut out, root.key("inventory").key("file"), f);
    }
    if config.log.level.trim().is_empty() {
        out.push((
            root.key("log").key("level"),
            "must not be empty (e.g. `info`)".into(),
        ));
    }
    if config.audit.sink.trim().is_empty() {
        out.push((
            root.key("audit").key("sink"),
            "must be stdout, stderr, off or a file path".into(),
        ));
    }
    if let Some(ca) = &config.ca {
        validate_ca(&mut out, &root.key("ca"), ca);
        if config.inventory.file.is_some() {
            // Two sources of truth for one fleet would disagree sooner or later.
            out.push((
                root.key("inventory").key("file"),
                "with [ca] the CA's inventory is the status source; import this file with \
                 `portcullis inventory import` and remove the key"
                    .into(),
            ));
        }
    }
    if let Some(feed) = &config.status_feed {
        let at = root.key("status_feed");
        if !feed.url.starts_with("https://") {
            out.push((
                at.key("url"),
                "must be an https:// URL (the feed is authenticated with mTLS)".into(),
            ));
        }
        for (key, f) in [
            ("ca_roots", &feed.ca_roots),
            ("cert", &feed.cert),
            ("key", &feed.key),
        ] {
            check_file(&mut out, at.key(key), f);
        }
        if feed.max_staleness < Duration::from_secs(1) {
            // Heartbeats come every second; less would count every point stale.
            out.push((at.key("max_staleness"), "at least 1s".into()));
        }
        if config.ca.is_some() {
            out.push((
                at.clone(),
                "this process runs the CA, whose inventory reaches its enforcement points in \
                 memory; remove [status_feed]"
                    .into(),
            ));
        }
        if config.inventory.file.is_some() {
            out.push((
                root.key("inventory").key("file"),
                "[status_feed] is the status source; an inventory file beside it would be a \
                 second source of truth"
                    .into(),
            ));
        }
    }
    if let Some(gw) = &config.gateway {
        // With a CA in the same process, the gateway trusts the CA's bundle by default.
        if config.trust.roots.is_empty() && config.ca.is_none() {
            out.push((
                trust.key("roots"),
                "the gateway is enabled but no trust roots are configured: no device could connect"
                    .into(),
            ));
        }
        validate_gateway(&mut out, &root.key("gateway"), gw);
    }
    out
}

fn validate_gateway(out: &mut Problems, at: &KeyPath, gw: &GatewayConfig) {
    check_file(out, at.key("cert"), &gw.cert);
    check_file(out, at.key("key"), &gw.key);
    let limits = at.key("limits");
    for (key, d) in [
        ("header_read_timeout", gw.limits.header_read_timeout),
        ("idle_timeout", gw.limits.idle_timeout),
        ("handshake_timeout", gw.limits.handshake_timeout),
        ("upstream_timeout", gw.limits.upstream_timeout),
    ] {
        if d.is_zero() {
            out.push((limits.key(key), "must be longer than zero".into()));
        }
    }
    if gw.limits.max_header_bytes < 1024 {
        out.push((limits.key("max_header_bytes"), "at least 1024".into()));
    }
    if gw.limits.max_concurrent_streams == 0 {
        out.push((limits.key("max_concurrent_streams"), "at least 1".into()));
    }
    let assertion = at.key("assertion");
    if gw.assertion.ttl > MAX_ASSERTION_TTL || gw.assertion.ttl < Duration::from_secs(10) {
        out.push((assertion.key("ttl"), "between 10s and 5m".into()));
    }
    if gw.assertion.issuer.trim().is_empty() {
        out.push((assertion.key("issuer"), "must not be empty".into()));
    }
    if gw.routes.is_empty() {
        out.push((
            at.key("routes"),
            "the gateway has no routes: every request would be refused".into(),
        ));
    }
    let mut seen_names = HashSet::new();
    let mut seen_matches = HashSet::new();
    for (i, route) in gw.routes.iter().enumerate() {
        let at = at.key("routes").index(i);
        validate_route(out, &at, route);
        if let Some(name) = &route.name {
            if !seen_names.insert(name.as_str()) {
                out.push((
                    at.key("name"),
                    format!("`{name}` names another route already"),
                ));
            }
        }
        if !seen_matches.insert((route.from.to_ascii_lowercase(), route.path_prefix.as_str())) {
            out.push((
                at.key("path_prefix"),
                format!(
                    "another route already serves `{}` with prefix `{}`",
                    route.from, route.path_prefix
                ),
            ));
        }
    }
}

/// RFC 8555 §7.1: the directory's URLs are HTTPS; a path would make every URL ambiguous.
fn validate_ca(out: &mut Problems, at: &KeyPath, ca: &CaConfig) {
    if let Some(url) = &ca.base_url {
        match url.strip_prefix("https://") {
            None => out.push((
                at.key("base_url"),
                format!("`{url}` must be an https:// URL (RFC 8555 §6.1)"),
            )),
            Some(rest) => {
                let rest = rest.trim_end_matches('/');
                if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
                    out.push((
                        at.key("base_url"),
                        format!("`{url}` must be scheme, host and port only, e.g. https://ca.example:8444"),
                    ));
                }
            }
        }
    }
    validate_ca_http(out, at, ca);
    if ca.data_dir.as_os_str().is_empty() {
        out.push((at.key("data_dir"), "must not be empty".into()));
    }
    for (i, name) in ca.tls_names.iter().enumerate() {
        if !is_dns_name(name) {
            out.push((
                at.key("tls_names").index(i),
                format!("`{name}` is not a DNS name"),
            ));
        }
    }
    if ca.max_lifetime < MIN_CERT_LIFETIME {
        out.push((
            at.key("max_lifetime"),
            format!("at least {}s", MIN_CERT_LIFETIME.as_secs()),
        ));
    }
    let templates = at.key("templates");
    for (key, t) in [
        ("device", &ca.templates.device),
        ("workload", &ca.templates.workload),
    ] {
        if t.lifetime < MIN_CERT_LIFETIME || t.lifetime > ca.max_lifetime {
            out.push((
                templates.key(key).key("lifetime"),
                format!(
                    "between {}s and ca.max_lifetime ({}s)",
                    MIN_CERT_LIFETIME.as_secs(),
                    ca.max_lifetime.as_secs()
                ),
            ));
        }
    }
    let acme = at.key("acme");
    if let Some(f) = &ca.acme.eab_keys_file {
        check_file(out, acme.key("eab_keys_file"), f);
    } else if ca.acme.external_account_required {
        out.push((
            acme.key("external_account_required"),
            "needs acme.eab_keys_file: no account could be created".into(),
        ));
    }
    if ca.acme.order_lifetime < Duration::from_secs(60) {
        out.push((acme.key("order_lifetime"), "at least 60s".into()));
    }
    if let Some(h) = &ca.acme.http01 {
        let http01 = acme.key("http01");
        if h.allowed_names.is_empty() {
            out.push((
                http01.key("allowed_names"),
                "is empty: http-01 could not issue for any name".into(),
            ));
        }
        for (i, name) in h.allowed_names.iter().enumerate() {
            if !is_dns_name(name.strip_prefix("*.").unwrap_or(name)) {
                out.push((
                    http01.key("allowed_names").index(i),
                    format!("`{name}` is not a DNS name or `*.domain`"),
                ));
            }
        }
        if h.port == 0 {
            out.push((http01.key("port"), "must not be 0".into()));
        }
        if h.timeout.is_zero() {
            out.push((http01.key("timeout"), "must be longer than zero".into()));
        }
    }
    let api = at.key("admin_api");
    if let Some(f) = &ca.admin_api.tokens_file {
        check_file(out, api.key("tokens_file"), f);
    }
    for (i, p) in ca.admin_api.client_roots.iter().enumerate() {
        check_file(out, api.key("client_roots").index(i), p);
    }
    let att = at.key("attestation");
    for (key, files) in [
        ("tpm_roots", &ca.attestation.tpm_roots),
        ("apple_roots", &ca.attestation.apple_roots),
        ("step_roots", &ca.attestation.step_roots),
        ("ek_roots", &ca.attestation.ek_roots),
    ] {
        for (i, p) in files.iter().enumerate() {
            check_pem_certificates(out, att.key(key).index(i), p);
        }
    }
}

/// A roots file must exist and hold at least one PEM certificate: an empty or mistyped file
/// would otherwise replace the vendor roots with nothing and refuse every device silently.
fn check_pem_certificates(out: &mut Problems, at: KeyPath, path: &Path) {
    match std::fs::read_to_string(path) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
        Ok(_) => out.push((at, format!("`{}` holds no PEM certificate", path.display()))),
        Err(e) => out.push((at, format!("`{}`: {e}", path.display()))),
    }
}

/// The plain-HTTP CRL/OCSP listener and the URL issued certificates carry for it
/// (RFC 5280 §4.2.1.13, RFC 6960 §A.1 and RFC 5019 §5: http, since a relying party must be
/// able to fetch them without first validating a TLS certificate).
fn validate_ca_http(out: &mut Problems, at: &KeyPath, ca: &CaConfig) {
    if let Some(http) = ca.http_listen {
        if http == ca.listen {
            out.push((
                at.key("http_listen"),
                format!("`{http}` is also ca.listen (HTTPS); use another port"),
            ));
        }
        // Port 0 is only known once bound, after certificates already name their URLs.
        if (http.ip().is_unspecified() || http.port() == 0) && ca.http_base_url.is_none() {
            out.push((
                at.key("http_base_url"),
                format!(
                    "needed when http_listen is `{http}`: certificates must name an address relying parties can reach, e.g. http://ca.example:8080"
                ),
            ));
        }
    }
    if let Some(url) = &ca.http_base_url {
        match url.strip_prefix("http://") {
            None => out.push((
                at.key("http_base_url"),
                format!(
                    "`{url}` must be an http:// URL: relying parties fetch CRLs and ask OCSP without TLS (RFC 5280 §4.2.1.13)"
                ),
            )),
            Some(rest) => {
                let rest = rest.trim_end_matches('/');
                if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) || url.len() > 200 {
                    out.push((
                        at.key("http_base_url"),
                        format!("`{url}` must be scheme, host and port only, e.g. http://ca.example:8080"),
                    ));
                }
            }
        }
    }
}

fn validate_route(out: &mut Problems, at: &KeyPath, route: &RouteConfig) {
    let host = route.from.strip_prefix("*.").unwrap_or(&route.from);
    if route.from != "*" && !is_dns_name(host) {
        out.push((
            at.key("from"),
            format!("`{}` is not a host name, `*` or `*.domain`", route.from),
        ));
    }
    if !route.path_prefix.starts_with('/') {
        out.push((
            at.key("path_prefix"),
            format!("`{}` must start with `/`", route.path_prefix),
        ));
    }
    match upstream_scheme(&route.to) {
        Err(why) => out.push((at.key("to"), format!("`{}` {why}", route.to))),
        Ok("http") => {
            for (key, p) in [
                ("upstream_ca", &route.upstream_ca),
                ("upstream_cert", &route.upstream_cert),
            ] {
                if p.is_some() {
                    out.push((at.key(key), "only applies to an https:// upstream".into()));
                }
            }
        }
        Ok(_) => {}
    }
    if route.upstream_cert.is_some() != route.upstream_key.is_some() {
        out.push((
            at.key("upstream_key"),
            "upstream_cert and upstream_key go together".into(),
        ));
    }
    for (key, p) in [
        ("upstream_ca", &route.upstream_ca),
        ("upstream_cert", &route.upstream_cert),
        ("upstream_key", &route.upstream_key),
    ] {
        if let Some(p) = p {
            check_file(out, at.key(key), p);
        }
    }
    for (key, rules) in [("allow", &route.allow), ("deny", &route.deny)] {
        for (i, c) in rules.iter().enumerate() {
            validate_criterion(out, &at.key(key).index(i), c);
        }
    }
}

/// The shape rules of a criterion; what it means is the policy crate's.
fn validate_criterion(out: &mut Problems, at: &KeyPath, c: &Criterion) {
    match c {
        Criterion::And(list) | Criterion::Or(list) => {
            let key = if matches!(c, Criterion::And(_)) {
                "and"
            } else {
                "or"
            };
            if list.is_empty() {
                out.push((
                    at.key(key),
                    "an empty list matches nothing useful; remove it or add criteria".into(),
                ));
            }
            for (i, inner) in list.iter().enumerate() {
                validate_criterion(out, &at.key(key).index(i), inner);
            }
        }
        Criterion::Not(inner) => validate_criterion(out, &at.key("not"), inner),
        Criterion::Fingerprint(f) => {
            let hex: String = f.chars().filter(|&ch| ch != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|ch| ch.is_ascii_hexdigit()) {
                out.push((
                    at.key("fingerprint"),
                    format!("`{f}` is not a SHA-256 fingerprint (64 hex digits)"),
                ));
            }
        }
        Criterion::PathPrefix(p) if !p.starts_with('/') => {
            out.push((at.key("path_prefix"), format!("`{p}` must start with `/`")));
        }
        Criterion::Path(p) if p.is_empty() => out.push((at.key("path"), "empty glob".into())),
        Criterion::Method(m) if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            out.push((at.key("method"), format!("`{m}` is not an HTTP method")));
        }
        Criterion::DeviceId(s)
        | Criterion::Tag(s)
        | Criterion::Platform(s)
        | Criterion::Attestation(s)
        | Criterion::San(s)
            if s.is_empty() =>
        {
            out.push((at.clone(), "empty value matches nothing".into()));
        }
        _ => {}
    }
}

/// `http` or `https` for a usable upstream base URL, or why not.
fn upstream_scheme(url: &str) -> Result<&'static str, &'static str> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err("is not an http(s) URL");
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err("has no host");
    }
    if authority.contains('@') {
        return Err("must not carry credentials");
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("must not have a query or fragment");
    }
    Ok(scheme)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_file(out: &mut Problems, at: KeyPath, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => out.push((at, format!("`{}` is not a file", path.display()))),
        Err(e) => out.push((at, format!("`{}`: {e}", path.display()))),
    }
}
