//! Every validation rule, and that errors point at the file, line and key an operator must edit.

use std::path::{Path, PathBuf};

use portcullis_config::{parse_str, ClientAuth, ConfigHandle, Criterion, IdentityHeader};

/// A directory with the files a gateway config refers to.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "roots.pem",
            "gw.pem",
            "gw.key",
            "inventory.toml",
            "upstream-ca.pem",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        Self { dir }
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }
    fn parse(
        &self,
        text: &str,
    ) -> Result<portcullis_config::Config, portcullis_config::ConfigError> {
        parse_str(text, &self.file())
    }
    /// The problems as `line: key: message` strings (file name left out).
    fn problems(&self, text: &str) -> Vec<String> {
        let err = self.parse(text).expect_err("config should be refused");
        err.problems
            .iter()
            .map(|p| {
                format!(
                    "{}: {}: {}",
                    p.line.map(|l| l.to_string()).unwrap_or("-".into()),
                    p.key,
                    p.message
                )
            })
            .collect()
    }
}

const GOOD: &str = r#"
[trust]
roots = ["roots.pem"]

[inventory]
file = "inventory.toml"

[gateway]
listen = "127.0.0.1:8443"
cert = "gw.pem"
key = "gw.key"

[[gateway.routes]]
name = "app"
from = "app.example.com"
to = "http://127.0.0.1:9000"
allow = [ { and = [ { tag = "eng" }, { not = { platform = "linux" } } ] } ]
"#;

#[test]
fn a_good_config_loads_with_defaults_and_resolved_paths() {
    let fx = Fixture::new();
    let cfg = fx.parse(GOOD).unwrap();
    assert_eq!(cfg.trust.roots, vec![fx.dir.path().join("roots.pem")]);
    assert_eq!(cfg.trust.trust_domain, "portcullis.local");
    let gw = cfg.gateway.unwrap();
    assert_eq!(gw.client_auth, ClientAuth::Required);
    assert_eq!(gw.cert, fx.dir.path().join("gw.pem"));
    let route = &gw.routes[0];
    assert_eq!(route.path_prefix, "/");
    assert_eq!(
        route.identity_headers,
        vec![IdentityHeader::Plain, IdentityHeader::Assertion]
    );
    assert_eq!(
        route.allow,
        vec![Criterion::And(vec![
            Criterion::Tag("eng".into()),
            Criterion::Not(Box::new(Criterion::Platform("linux".into())))
        ])]
    );
}

#[test]
fn a_bad_upstream_url_names_file_line_and_key() {
    let fx = Fixture::new();
    let text = GOOD.replace("http://127.0.0.1:9000", "htp://x");
    let err = fx.parse(&text).unwrap_err();
    let shown = err.to_string();
    let file = fx.file();
    assert_eq!(
        shown,
        format!(
            "{}:16: gateway.routes[0].to: `htp://x` is not an http(s) URL",
            file.display()
        )
    );
}

#[test]
fn syntax_and_type_errors_carry_a_line() {
    let fx = Fixture::new();
    assert_eq!(fx.problems("[trust]\nclock_skew = 30\n").len(), 1);
    let p = &fx.problems("[trust]\nclock_skew = 30\n")[0];
    assert!(p.starts_with("2: "), "{p}");
    let p = &fx.problems("[trust]\nclock_skew = \"thirty\"\n")[0];
    assert!(p.starts_with("2: ") && p.contains("thirty"), "{p}");
    let p = &fx.problems("[gateway\n")[0];
    assert!(p.starts_with("1: "), "{p}");
}

#[test]
fn unknown_keys_are_refused() {
    let fx = Fixture::new();
    let p = &fx.problems("[trust]\nroot = [\"roots.pem\"]\n")[0];
    assert!(
        p.starts_with("2: ") && p.contains("unknown field `root`"),
        "{p}"
    );
    let p = &fx.problems(&GOOD.replace("{ tag = \"eng\" }", "{ tags = \"eng\" }"))[0];
    assert!(p.contains("unknown variant `tags`"), "{p}");
}

#[test]
fn each_semantic_rule_is_checked() {
    let fx = Fixture::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "roots = [\"roots.pem\"]",
            "roots = [\"missing.pem\"]",
            "trust.roots[0]: `",
        ),
        (
            "roots = [\"roots.pem\"]",
            "roots = []",
            "trust.roots: the gateway is enabled but no trust roots",
        ),
        (
            "[trust]\n",
            "[trust]\nclock_skew = \"11m\"\n",
            "trust.clock_skew: at most 600s",
        ),
        (
            "[trust]\n",
            "[trust]\nmax_lifetime = \"0s\"\n",
            "trust.max_lifetime: must be longer than zero",
        ),
        (
            "[trust]\n",
            "[trust]\ntrust_domain = \"bad domain\"\n",
            "trust.trust_domain: `bad domain`",
        ),
        (
            "file = \"inventory.toml\"",
            "file = \"nope.toml\"",
            "inventory.file: `",
        ),
        (
            "cert = \"gw.pem\"",
            "cert = \"gw-missing.pem\"",
            "gateway.cert: `",
        ),
        (
            "from = \"app.example.com\"",
            "from = \"app example\"",
            "gateway.routes[0].from: `app example` is not a host name",
        ),
        (
            "to = \"http://127.0.0.1:9000\"",
            "to = \"http://\"",
            "gateway.routes[0].to: `http://` has no host",
        ),
        (
            "to = \"http://127.0.0.1:9000\"",
            "to = \"http://u:p@h\"",
            "must not carry credentials",
        ),
        (
            "to = \"http://127.0.0.1:9000\"",
            "to = \"http://h/?q\"",
            "must not have a query",
        ),
        (
            "to = \"http://127.0.0.1:9000\"",
            "to = \"http://h\"\nupstream_ca = \"upstream-ca.pem\"",
            "gateway.routes[0].upstream_ca: only applies to an https:// upstream",
        ),
        (
            "to = \"http://127.0.0.1:9000\"",
            "to = \"https://h\"\nupstream_cert = \"gw.pem\"",
            "gateway.routes[0].upstream_key: upstream_cert and upstream_key go together",
        ),
        (
            "name = \"app\"",
            "name = \"app\"\npath_prefix = \"api\"",
            "gateway.routes[0].path_prefix: `api` must start with `/`",
        ),
        (
            "{ tag = \"eng\" }",
            "{ fingerprint = \"abc\" }",
            "gateway.routes[0].allow[0].and[0].fingerprint: `abc` is not a SHA-256",
        ),
        (
            "{ tag = \"eng\" }",
            "{ or = [] }",
            "gateway.routes[0].allow[0].and[0].or: an empty list",
        ),
        (
            "{ platform = \"linux\" }",
            "{ path_prefix = \"x\" }",
            "allow[0].and[1].not.path_prefix: `x` must start with `/`",
        ),
        (
            "{ tag = \"eng\" }",
            "{ method = \"G T\" }",
            "`G T` is not an HTTP method",
        ),
        (
            "",
            "[gateway.assertion]\nttl = \"10m\"\n",
            "gateway.assertion.ttl: between 10s and 5m",
        ),
        (
            "",
            "[gateway.limits]\nmax_header_bytes = 10\n",
            "gateway.limits.max_header_bytes: at least 1024",
        ),
        (
            "",
            "[gateway.limits]\nidle_timeout = \"0s\"\n",
            "gateway.limits.idle_timeout: must be longer",
        ),
    ];
    for (from, to, expect) in cases {
        // An empty `from` appends `to` as a new table at the end.
        let text = if from.is_empty() {
            format!("{GOOD}\n{to}")
        } else {
            assert!(GOOD.contains(from), "fixture lacks {from}");
            GOOD.replacen(from, to, 1)
        };
        let problems = fx.problems(&text);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{to:?}: expected {expect:?} in {problems:#?}"
        );
    }
}

#[test]
fn validation_problems_point_at_their_line() {
    let fx = Fixture::new();
    let text = GOOD.replace("{ tag = \"eng\" }", "{ fingerprint = \"abc\" }");
    let line = text
        .lines()
        .position(|l| l.contains("fingerprint"))
        .unwrap()
        + 1;
    let p = &fx.problems(&text)[0];
    assert!(p.starts_with(&format!("{line}: ")), "{p}");
    let text = GOOD.replace(
        "roots = [\"roots.pem\"]",
        "roots = [\"a.pem\",\n  \"b.pem\"]",
    );
    let problems = fx.problems(&text);
    assert!(problems[0].starts_with("3: trust.roots[0]"), "{problems:?}");
    assert!(problems[1].starts_with("4: trust.roots[1]"), "{problems:?}");
}

#[test]
fn duplicate_routes_are_refused() {
    let fx = Fixture::new();
    let text = format!("{GOOD}\n[[gateway.routes]]\nname = \"app\"\nfrom = \"APP.example.com\"\nto = \"http://h\"\n");
    let problems = fx.problems(&text);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("gateway.routes[1].name: `app` names another route")),
        "{problems:?}"
    );
    assert!(problems
        .iter()
        .any(|p| p.contains("gateway.routes[1].path_prefix: another route already serves")));
}

#[test]
fn every_problem_is_reported_at_once() {
    let fx = Fixture::new();
    let text = GOOD.replace("gw.pem", "x1.pem").replace("gw.key", "x2.key");
    assert_eq!(fx.problems(&text).len(), 2);
}

#[test]
fn reload_keeps_the_old_config_when_the_new_one_is_bad() {
    let fx = Fixture::new();
    let path = fx.file();
    std::fs::write(&path, GOOD).unwrap();
    let handle = ConfigHandle::load(&path).unwrap();
    assert_eq!(handle.generation(), 1);
    std::fs::write(&path, GOOD.replace("http://127.0.0.1:9000", "ftp://x")).unwrap();
    let err = handle.reload().unwrap_err();
    assert!(err.to_string().contains("gateway.routes[0].to"));
    assert_eq!(
        handle.current().gateway.as_ref().unwrap().routes[0].to,
        "http://127.0.0.1:9000"
    );
    assert_eq!(handle.generation(), 1);
    std::fs::write(
        &path,
        GOOD.replace("http://127.0.0.1:9000", "https://app.internal"),
    )
    .unwrap();
    handle.reload().unwrap();
    assert_eq!(
        handle.current().gateway.as_ref().unwrap().routes[0].to,
        "https://app.internal"
    );
    assert_eq!(handle.generation(), 2);
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    let err = portcullis_config::load_file(Path::new("/nonexistent/portcullis.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/portcullis.toml: cannot read:"),
        "{err}"
    );
}

#[test]
fn an_empty_file_is_a_valid_config_without_components() {
    let fx = Fixture::new();
    let cfg = fx.parse("").unwrap();
    assert!(cfg.gateway.is_none());
}

const CA: &str = r#"
[ca]
listen = "127.0.0.1:8444"
data_dir = "ca"
tls_names = ["ca.internal"]
key_type = "ecdsa-p384"

[ca.acme]
terms_of_service = "https://example.com/tos"
eab_keys_file = "eab.keys"
external_account_required = true

[ca.acme.http01]
allowed_names = ["*.apps.test", "build.test"]
port = 5002
hosts = { "build.test" = "127.0.0.1" }

[ca.templates.device]
lifetime = "8h"

[ca.admin_api]
tokens_file = "admin.tokens"
client_roots = ["roots.pem"]
"#;

#[test]
fn a_ca_section_loads_with_defaults_and_resolved_paths() {
    let fx = Fixture::new();
    for f in ["eab.keys", "admin.tokens"] {
        std::fs::write(fx.dir.path().join(f), "x").unwrap();
    }
    let cfg = fx.parse(CA).unwrap();
    let ca = cfg.ca.expect("[ca] parsed");
    assert_eq!(ca.base_url(), "https://127.0.0.1:8444");
    assert_eq!(ca.data_dir, fx.dir.path().join("ca"));
    assert_eq!(ca.key_type, portcullis_config::CaKeyType::EcdsaP384);
    assert_eq!(ca.templates.device.lifetime.as_secs(), 8 * 3600);
    assert_eq!(ca.templates.workload.lifetime.as_secs(), 24 * 3600);
    assert_eq!(ca.max_lifetime.as_secs(), 7 * 24 * 3600);
    assert_eq!(ca.acme.eab_keys_file, Some(fx.dir.path().join("eab.keys")));
    assert_eq!(
        ca.admin_api.tokens_file,
        Some(fx.dir.path().join("admin.tokens"))
    );
    assert_eq!(
        ca.admin_api.client_roots,
        vec![fx.dir.path().join("roots.pem")]
    );
    let http01 = ca.acme.http01.expect("http01 on");
    assert_eq!(http01.port, 5002);
    assert_eq!(http01.hosts["build.test"].to_string(), "127.0.0.1");
    assert_eq!(
        ca.attestation,
        portcullis_config::AttestationSection::default()
    );
}

#[test]
fn attestation_roots_resolve_and_must_hold_certificates() {
    let fx = Fixture::new();
    let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::fs::write(fx.dir.path().join("yubico.pem"), pem).unwrap();
    let text = "[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n\
                [ca.attestation]\nstep_roots = [\"yubico.pem\"]\nallow_sha1_tpm = true\n";
    let ca = fx.parse(text).unwrap().ca.unwrap();
    assert_eq!(
        ca.attestation.step_roots,
        vec![fx.dir.path().join("yubico.pem")]
    );
    assert!(ca.attestation.tpm_roots.is_empty() && ca.attestation.allow_sha1_tpm);
}

#[test]
fn a_gateway_beside_a_ca_needs_no_explicit_roots() {
    let fx = Fixture::new();
    let text = GOOD
        .replace("roots = [\"roots.pem\"]", "")
        .replace("file = \"inventory.toml\"", "")
        + "\n[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n";
    fx.parse(&text)
        .expect("the CA's bundle stands in for trust.roots");
    let alone = GOOD.replace("roots = [\"roots.pem\"]", "");
    assert!(fx
        .problems(&alone)
        .iter()
        .any(|p| p.contains("trust.roots")));
}

#[test]
fn each_ca_rule_is_checked() {
    let fx = Fixture::new();
    let base = "[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "base_url = \"http://ca:1\"\n",
            "ca.base_url: `http://ca:1` must be an https:// URL",
        ),
        (
            "base_url = \"https://ca:1/acme\"\n",
            "ca.base_url: `https://ca:1/acme` must be scheme, host and port only",
        ),
        (
            "tls_names = [\"bad name\"]\n",
            "ca.tls_names[0]: `bad name` is not a DNS name",
        ),
        ("max_lifetime = \"1m\"\n", "ca.max_lifetime: at least 300s"),
        ("key_type = \"dsa\"\n", "unknown variant `dsa`"),
        (
            "[ca.templates.device]\nlifetime = \"1m\"\n",
            "ca.templates.device.lifetime: between 300s and ca.max_lifetime",
        ),
        (
            "max_lifetime = \"1h\"\n[ca.templates.workload]\nlifetime = \"2h\"\n",
            "ca.templates.workload.lifetime: between 300s and ca.max_lifetime (3600s)",
        ),
        (
            "[ca.acme]\nexternal_account_required = true\n",
            "ca.acme.external_account_required: needs acme.eab_keys_file",
        ),
        (
            "[ca.acme]\neab_keys_file = \"missing.keys\"\n",
            "ca.acme.eab_keys_file: `",
        ),
        (
            "[ca.acme]\norder_lifetime = \"5s\"\n",
            "ca.acme.order_lifetime: at least 60s",
        ),
        (
            "[ca.acme.http01]\nallowed_names = []\n",
            "ca.acme.http01.allowed_names: is empty",
        ),
        (
            "[ca.acme.http01]\nallowed_names = [\"*.-x\"]\n",
            "ca.acme.http01.allowed_names[0]: `*.-x` is not a DNS name",
        ),
        (
            "[ca.acme.http01]\nallowed_names = [\"a.test\"]\nport = 0\n",
            "ca.acme.http01.port: must not be 0",
        ),
        (
            "[ca.admin_api]\ntokens_file = \"nope\"\n",
            "ca.admin_api.tokens_file: `",
        ),
        (
            "[ca.admin_api]\nclient_roots = [\"nope.pem\"]\n",
            "ca.admin_api.client_roots[0]: `",
        ),
        ("unknown = 1\n", "unknown field `unknown`"),
        (
            "[ca.attestation]\ntpm_roots = [\"missing.pem\"]\n",
            "ca.attestation.tpm_roots[0]: `",
        ),
        (
            // The fixture's roots.pem holds "x": no certificate.
            "[ca.attestation]\nstep_roots = [\"roots.pem\"]\n",
            "ca.attestation.step_roots[0]: `",
        ),
        (
            "[ca.attestation]\nstep_roots = [\"roots.pem\"]\n",
            "holds no PEM certificate",
        ),
        (
            "[ca.attestation]\nandroid_roots = []\n",
            "unknown field `android_roots`",
        ),
    ];
    for (extra, expected) in cases {
        let text = format!("{base}{extra}");
        let problems = fx.problems(&text);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{extra:?}: expected a problem containing {expected:?}, got {problems:?}"
        );
    }
}

#[test]
fn an_inventory_file_beside_a_ca_is_refused() {
    let fx = Fixture::new();
    let text = format!("{GOOD}\n[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n");
    let problems = fx.problems(&text);
    assert!(
        problems.iter().any(
            |p| p.contains("inventory.file: with [ca] the CA's inventory is the status source")
        ),
        "{problems:?}"
    );
}

#[test]
fn the_crl_and_ocsp_listener_and_its_url_are_checked() {
    let fx = Fixture::new();
    let base = "[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n";
    let ca = fx
        .parse(&format!("{base}http_listen = \"127.0.0.1:8080\"\n"))
        .unwrap()
        .ca
        .unwrap();
    assert_eq!(ca.http_base_url().as_deref(), Some("http://127.0.0.1:8080"));
    let ca = fx
        .parse(&format!(
            "{base}http_listen = \"0.0.0.0:8080\"\nhttp_base_url = \"http://ca.test:8080/\"\n"
        ))
        .unwrap()
        .ca
        .unwrap();
    assert_eq!(ca.http_base_url().as_deref(), Some("http://ca.test:8080"));
    assert_eq!(fx.parse(base).unwrap().ca.unwrap().http_base_url(), None);
    for (extra, expected) in [
        (
            "http_listen = \"127.0.0.1:8444\"",
            "ca.http_listen: `127.0.0.1:8444` is also ca.listen",
        ),
        (
            "http_listen = \"0.0.0.0:8080\"",
            "ca.http_base_url: needed when http_listen is `0.0.0.0:8080`",
        ),
        (
            "http_listen = \"127.0.0.1:0\"",
            "ca.http_base_url: needed when http_listen is `127.0.0.1:0`",
        ),
        (
            "http_base_url = \"https://ca.test\"",
            "ca.http_base_url: `https://ca.test` must be an http:// URL",
        ),
        (
            "http_base_url = \"http://ca.test/crl\"",
            "must be scheme, host and port only",
        ),
        (
            "http_base_url = \"http://\"",
            "must be scheme, host and port only",
        ),
    ] {
        let problems = fx.problems(&format!("{base}{extra}\n"));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{extra}: {problems:?}"
        );
    }
}

#[test]
fn the_status_feed_section_is_checked() {
    let fx = Fixture::new();
    let feed = "[status_feed]\nurl = \"https://ca.test:8443/feed/v2/status\"\nca_roots = \"roots.pem\"\ncert = \"gw.pem\"\nkey = \"gw.key\"\n";
    let gateway_only = GOOD.replace("[inventory]\nfile = \"inventory.toml\"\n", "");
    let config = fx.parse(&format!("{gateway_only}\n{feed}")).unwrap();
    let f = config.status_feed.unwrap();
    assert_eq!(f.mode, portcullis_config::StaleMode::BestEffort);
    assert_eq!(f.max_staleness, std::time::Duration::from_secs(30));
    assert!(
        f.cert.is_absolute(),
        "paths resolve against the config's directory"
    );

    for (text, expected) in [
        (
            format!("{gateway_only}\n{}", feed.replace("https://", "http://")),
            "status_feed.url: must be an https:// URL",
        ),
        (
            format!("{gateway_only}\n{feed}max_staleness = \"500ms\"\n"),
            "status_feed.max_staleness: at least 1s",
        ),
        (
            format!("{gateway_only}\n{}", feed.replace("gw.key", "missing.key")),
            "status_feed.key",
        ),
        (
            format!("{GOOD}\n{feed}"),
            "inventory.file: [status_feed] is the status source",
        ),
        (
            format!(
                "{gateway_only}\n{feed}\n[ca]\nlisten = \"127.0.0.1:8444\"\ndata_dir = \"ca\"\n"
            ),
            "status_feed: this process runs the CA",
        ),
    ] {
        let problems = fx.problems(&text);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "expected {expected:?} in {problems:?}"
        );
    }
    let strict = fx
        .parse(&format!("{gateway_only}\n{feed}mode = \"strict\"\n"))
        .unwrap();
    assert_eq!(
        strict.status_feed.unwrap().mode,
        portcullis_config::StaleMode::Strict
    );
    let problems = fx.problems(&format!("{gateway_only}\n{feed}mode = \"lenient\"\n"));
    assert!(
        problems.iter().any(|p| p.contains("lenient")),
        "{problems:?}"
    );
}
