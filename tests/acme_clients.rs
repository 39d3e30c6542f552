//! Real ACME clients against the real CA: the `portcullis serve` binary with a `[ca]` section
//! (ACME over HTTPS, http-01 with the lab settings: the validator connects to a port the test
//! picks, `app.test` and friends map to 127.0.0.1), driven by
//!
//! - **certbot** (standalone http-01): account, issuance, revocation;
//! - **lego** (its own http-01 server): account, issuance, renewal, revocation;
//! - **dehydrated** (WELLKNOWN directory served by a small in-test HTTP server): account,
//!   issuance, revocation;
//! - **instant-acme** (the Rust client): account, issuance, key change (RFC 8555 §7.3.5;
//!   lego 4.9 has none), revocation with the new key, and the old key refused.
//!
//! Every certificate obtained is checked with the real `openssl verify -CAfile bundle
//! -untrusted chain leaf` (purpose sslserver), for the name asked, and against the CA's
//! database (`ca.db`): the serial is recorded, revocations carry the reason given.
//!
//! The programs come from apt (`.ci/run`). Missing under `CI=true`: the test fails;
//! elsewhere it says SKIP loudly and returns.

#[path = "../benches/acme/mod.rs"]
mod acme;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use acme::portcullis::{CaOptions, PortcullisCa};
use acme::responder::BackgroundResponder;
use portcullis_ca::pki::Serial;
use x509_parser::prelude::{FromDer, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const NAME: &str = "app.test";

/// A CA of its own in a temp dir, its http-01 validator pointed at a port free for the client.
struct Lab {
    ca: PortcullisCa,
    http01_port: u16,
    dir: tempfile::TempDir,
}

impl Lab {
    fn start(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-acme-")
            .tempdir()
            .unwrap();
        let http01_port = acme::free_port();
        let ca = PortcullisCa::start(
            Path::new(BIN),
            dir.path(),
            &CaOptions::new(http01_port, names),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            ca,
            http01_port,
            dir,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.ca.db()).expect("open ca.db")
    }

    /// (order_id, revocation_reason) of the certificate with `serial`.
    fn cert_row(&self, serial: &str) -> Option<(Option<i64>, Option<i64>)> {
        self.db()
            .query_row(
                "SELECT order_id, revocation_reason FROM certificates WHERE serial = ?1",
                [serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    }

    /// Checks a certificate a client saved: the chain verifies against the CA bundle for TLS
    /// servers, it names exactly `names`, and the CA recorded it for an ACME order. Returns its
    /// serial (lowercase hex, as the CA stores it).
    fn check_issued(&self, leaf: &Path, chain: &Path, names: &[&str]) -> String {
        acme::openssl_verify(&self.ca.bundle(), chain, leaf, Some("sslserver"))
            .unwrap_or_else(|e| panic!("openssl verify {}: {e}", leaf.display()));
        let pem = std::fs::read_to_string(leaf).unwrap();
        let der = portcullis_ca::pki::pem::decode_first(&pem, "CERTIFICATE").unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let mut sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .expect("a SAN extension")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        sans.sort();
        let mut want: Vec<String> = names.iter().map(|n| format!("DNSName({n})")).collect();
        want.sort();
        assert_eq!(sans, want, "{}", leaf.display());
        let serial = Serial::from_be_bytes(cert.raw_serial()).to_hex();
        let (order, revoked) = self
            .cert_row(&serial)
            .unwrap_or_else(|| panic!("serial {serial} is not in ca.db"));
        assert!(order.is_some(), "{serial} was issued for an ACME order");
        assert_eq!(revoked, None, "{serial} is fresh");
        serial
    }

    fn fail(&self, what: &str, out: &Output) -> ! {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- CA log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.ca.log_text()
        )
    }
}

fn run(lab: &Lab, what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        lab.fail(what, &out);
    }
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn certbot_registers_issues_and_revokes() {
    if !acme::require_program("certbot", "--version")
        || !acme::require_program("openssl", "version")
    {
        return;
    }
    let lab = Lab::start(&[NAME]);
    let certbot = |args: &[&str]| {
        let mut cmd = Command::new("certbot");
        cmd.args(args)
            .args(["--server", &lab.ca.directory()])
            .arg("--config-dir")
            .arg(lab.path("certbot/config"))
            .arg("--work-dir")
            .arg(lab.path("certbot/work"))
            .arg("--logs-dir")
            .arg(lab.path("certbot/logs"))
            .args(["--non-interactive", "--no-random-sleep-on-renew"])
            .env("REQUESTS_CA_BUNDLE", lab.ca.bundle());
        cmd
    };
    let port = lab.http01_port.to_string();
    run(
        &lab,
        "certbot certonly",
        certbot(&[
            "certonly",
            "--standalone",
            "--http-01-port",
            &port,
            "--http-01-address",
            "127.0.0.1",
            "-d",
            NAME,
            "--register-unsafely-without-email",
            "--agree-tos",
        ])
        .arg("--cert-name")
        .arg(NAME),
    );
    let live = lab.path("certbot/config/live/app.test");
    let serial = lab.check_issued(&live.join("cert.pem"), &live.join("chain.pem"), &[NAME]);
    let accounts: i64 = lab
        .db()
        .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(accounts, 1, "certbot registered one account");

    run(
        &lab,
        "certbot revoke",
        certbot(&[
            "revoke",
            "--reason",
            "superseded",
            "--no-delete-after-revoke",
        ])
        .arg("--cert-path")
        .arg(live.join("cert.pem")),
    );
    assert_eq!(
        lab.cert_row(&serial).map(|r| r.1),
        Some(Some(4)),
        "revoked as superseded (4)"
    );
}

#[test]
fn lego_registers_issues_renews_and_revokes() {
    if !acme::require_program("lego", "--version") || !acme::require_program("openssl", "version") {
        return;
    }
    let lab = Lab::start(&[NAME, "www.app.test"]);
    // lego names a certificate after its first domain; `revoke` goes through every domain
    // given, so it gets only that one.
    let lego = |domains: &[&str], args: &[&str]| {
        let mut cmd = Command::new("lego");
        cmd.args(["--server", &lab.ca.directory()])
            .args(["--accept-tos", "--email", "ops@example.com"])
            .arg("--path")
            .arg(lab.path("lego"));
        for d in domains {
            cmd.args(["--domains", d]);
        }
        cmd.args(["--http", "--http.port"])
            .arg(format!("127.0.0.1:{}", lab.http01_port))
            .args(args)
            .env("LEGO_CA_CERTIFICATES", lab.ca.bundle());
        cmd
    };
    let leaf = lab.path("lego/certificates/app.test.crt");
    let issuer = lab.path("lego/certificates/app.test.issuer.crt");
    let names = [NAME, "www.app.test"];

    run(&lab, "lego run", &mut lego(&names, &["run"]));
    let first = lab.check_issued(&leaf, &issuer, &names);

    // Renewal: the certificate lives 24 h, so "renew when fewer than 30 days are left" renews.
    let out = run(
        &lab,
        "lego renew",
        &mut lego(&names, &["renew", "--days", "30", "--no-random-sleep"]),
    );
    let second = lab.check_issued(&leaf, &issuer, &names);
    assert_ne!(first, second, "renewal gives a new certificate:\n{out}");

    run(
        &lab,
        "lego revoke",
        &mut lego(&[NAME], &["revoke", "--reason", "5"]),
    );
    assert_eq!(
        lab.cert_row(&second).map(|r| r.1),
        Some(Some(5)),
        "the renewed certificate is revoked (cessationOfOperation)"
    );
    assert_eq!(lab.cert_row(&first).map(|r| r.1), Some(None));
    let accounts: i64 = lab
        .db()
        .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        accounts, 1,
        "lego reused its account for renewal and revocation"
    );
}

#[test]
fn dehydrated_registers_issues_and_revokes() {
    if !acme::require_program("dehydrated", "--version")
        || !acme::require_program("curl", "--version")
        || !acme::require_program("openssl", "version")
    {
        return;
    }
    let lab = Lab::start(&[NAME]);
    let base = lab.path("dehydrated");
    let wellknown = base.join("wellknown");
    std::fs::create_dir_all(&wellknown).unwrap();
    // The web server dehydrated expects to exist: it serves WELLKNOWN on the http-01 port.
    let _web = BackgroundResponder::start(
        ([127, 0, 0, 1], lab.http01_port).into(),
        Some(wellknown.clone()),
    )
    .expect("bind the http-01 port");
    let config = base.join("config");
    std::fs::write(
        &config,
        format!(
            "CA=\"{}\"\nCHALLENGETYPE=\"http-01\"\nBASEDIR=\"{}\"\nWELLKNOWN=\"{}\"\n\
             CONTACT_EMAIL=\"ops@example.com\"\n",
            lab.ca.directory(),
            base.display(),
            wellknown.display()
        ),
    )
    .unwrap();
    let dehydrated = |args: &[&str]| {
        let mut cmd = Command::new("dehydrated");
        cmd.arg("-f")
            .arg(&config)
            .args(args)
            .env("CURL_CA_BUNDLE", lab.ca.bundle());
        cmd
    };
    run(
        &lab,
        "dehydrated --register",
        &mut dehydrated(&["--register", "--accept-terms"]),
    );
    let out = run(&lab, "dehydrated -c", &mut dehydrated(&["-c", "-d", NAME]));
    let certs = base.join("certs/app.test");
    let serial = lab.check_issued(&certs.join("cert.pem"), &certs.join("chain.pem"), &[NAME]);
    assert!(out.contains("Challenge is valid"), "{out}");
    // The token files are cleaned up after validation.
    assert_eq!(std::fs::read_dir(&wellknown).unwrap().count(), 0);

    run(
        &lab,
        "dehydrated --revoke",
        dehydrated(&["--revoke"]).arg(certs.join("cert.pem")),
    );
    assert_eq!(lab.cert_row(&serial).map(|r| r.1.is_some()), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_acme_changes_its_account_key_against_the_binary() {
    use instant_acme::{RevocationReason, RevocationRequest};
    use rustls_pki_types::CertificateDer;

    if !acme::require_program("openssl", "version") {
        return;
    }
    let responder = acme::responder::Responder::start(([127, 0, 0, 1], 0).into(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = PortcullisCa::start(
        Path::new(BIN),
        dir.path(),
        &CaOptions::new(responder.port(), &[NAME]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let poll = Duration::from_millis(50);
    let (mut account, old_credentials) = acme::flow::new_account(&ca.directory(), &ca.bundle())
        .await
        .unwrap();
    let issued = acme::flow::issue(&account, &responder, &[NAME.to_string()], poll)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ca.log_text()));
    let blocks = acme::flow::split_pem(&issued.chain_pem);
    assert_eq!(blocks.len(), 2, "leaf + intermediate");
    std::fs::write(dir.path().join("leaf.pem"), &blocks[0]).unwrap();
    std::fs::write(dir.path().join("chain.pem"), &blocks[1]).unwrap();
    acme::openssl_verify(
        &ca.bundle(),
        &dir.path().join("chain.pem"),
        &dir.path().join("leaf.pem"),
        Some("sslserver"),
    )
    .unwrap();

    // Key change (RFC 8555 §7.3.5).
    let thumbprint = account.key_thumbprint().to_owned();
    let _new_credentials = account.update_key().await.expect("key change");
    assert_ne!(account.key_thumbprint(), thumbprint);
    let db = rusqlite::Connection::open(ca.db()).unwrap();
    let stored: String = db
        .query_row("SELECT thumbprint FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, account.key_thumbprint(), "the CA holds the new key");

    // The new key revokes; the old key is no longer the account.
    let der = portcullis_ca::pki::pem::decode_first(&blocks[0], "CERTIFICATE").unwrap();
    let old = acme::flow::load_account(&ca.bundle(), &old_credentials)
        .await
        .unwrap();
    let refused = old
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(der.clone()),
            reason: None,
        })
        .await;
    assert!(refused.is_err(), "the old account key must be refused");
    account
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(der.clone()),
            reason: Some(RevocationReason::KeyCompromise),
        })
        .await
        .expect("revocation with the new key");
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let serial = Serial::from_be_bytes(cert.raw_serial()).to_hex();
    let reason: Option<i64> = db
        .query_row(
            "SELECT revocation_reason FROM certificates WHERE serial = ?1",
            [&serial],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, Some(1));
}

/// The benchmark's harness (`benches/acme_vs_pebble.rs`), a few orders against the debug
/// binary and Pebble: both must issue every order with real http-01 validation. No figure is
/// asserted (timings belong to the bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_harness_issues_against_portcullis_and_pebble() {
    if !acme::require_program("pebble", "-h") || !acme::require_program("pebble-challtestsrv", "-h")
    {
        return;
    }
    let responder = std::sync::Arc::new(
        acme::responder::Responder::start(([127, 0, 0, 1], 0).into(), None)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("n{i}.bench.test")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (ca_dir, pebble_dir) = (dir.path().join("portcullis"), dir.path().join("pebble"));
    std::fs::create_dir_all(&ca_dir).unwrap();
    let port = responder.port();
    let ca = tokio::task::block_in_place(|| {
        PortcullisCa::start(Path::new(BIN), &ca_dir, &CaOptions::new(port, &refs))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let pebble = tokio::task::block_in_place(|| acme::pebble::Pebble::start(&pebble_dir, port))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let poll = Duration::from_millis(20);
    for (server, directory, root, pid) in [
        ("portcullis", ca.directory(), ca.bundle(), ca.pid().unwrap()),
        (
            "pebble",
            pebble.directory.clone(),
            pebble.tls_root.clone(),
            pebble.pid(),
        ),
    ] {
        let (account, _) = acme::flow::new_account(&directory, &root).await.unwrap();
        let before = responder.counts().0;
        let r = acme::load::run(&account, &responder, &names, 6, 3, poll, Some(pid)).await;
        assert!(r.errors.is_empty(), "{server}: {:?}", r.errors);
        assert_eq!((r.ok, r.latencies.len()), (6, 6), "{server}");
        assert!(
            responder.counts().0 >= before + 6,
            "{server} fetched a key authorization for every order"
        );
    }
}
