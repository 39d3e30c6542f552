//! CRL (RFC 5280) and OCSP (RFC 6960) as third parties see them: the real `openssl` binary
//! parses and verifies what the CA serves over plain HTTP, through a device's life —
//! active, quarantined (certificateHold), active again (released), retired
//! (cessationOfOperation) — and `curl` drives the GET form of OCSP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_ca::acme::AcmeConfig;
use portcullis_ca::clock::SystemClock;
use portcullis_ca::pki::{pem, CertTemplate, IssueRequest};
use portcullis_ca::service::{Ca, CaSettings};
use portcullis_ca::store::{AcmeStore, NewCert, NewDevice};
use portcullis_config::DeviceStatus;
use rcgen::PublicKeyData;

/// True when `program` runs; otherwise a loud skip — or a failure on CI, where the tools are
/// part of the image and a silent skip would hide a lost test.
fn have(program: &str) -> bool {
    let ok = Command::new(program)
        .arg(if program == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("`{program}` is required on CI");
        }
        eprintln!("\n!!! SKIPPED: `{program}` is not installed; this test did not run !!!\n");
    }
    ok
}

struct Lab {
    dir: tempfile::TempDir,
    ca: Ca,
    url: String,
    /// The device certificate's serial (lowercase hex).
    serial: String,
    intermediate: PathBuf,
    bundle: PathBuf,
    chain: PathBuf,
    leaf: PathBuf,
}

const DEVICE: &str = "SN-REV-1";

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut settings = CaSettings::new(
        dir.path().join("ca"),
        AcmeConfig::new("https://127.0.0.1:1"),
    );
    settings.http_base_url = Some(url.clone());
    let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(portcullis_ca::revocation::serve_http(
        listener,
        ca.revocation.plain_router(),
        std::future::pending(),
    ));

    ca.inventory
        .upsert(
            &NewDevice {
                id: DEVICE.into(),
                hw_module_id: None,
                platform: Some("linux".into()),
                owner: None,
                tags: Default::default(),
                status: DeviceStatus::Active,
                source: "test".into(),
            },
            "test",
            "enrolled",
        )
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let uris = vec![format!("spiffe://portcullis.test/device/{DEVICE}")];
    let issued = ca
        .pki
        .issue(
            &IssueRequest {
                spki_der: &key.subject_public_key_info(),
                template: &CertTemplate::device(),
                dns_names: &[],
                ip_addresses: &[],
                uris: &uris,
                not_before: None,
                not_after: None,
            },
            std::time::SystemTime::now(),
        )
        .unwrap();
    let secs = |t: std::time::SystemTime| portcullis_ca::clock::unix_seconds(t);
    ca.store
        .record_certificate(&NewCert {
            serial: &issued.serial.to_hex(),
            fingerprint: &issued.fingerprint,
            der: &issued.der,
            chain_pem: &issued.chain_pem,
            not_before: secs(issued.not_before),
            not_after: secs(issued.not_after),
            device_id: Some(DEVICE),
        })
        .unwrap();

    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let intermediate = write("intermediate.pem", ca.pki.intermediate_pem());
    let bundle = write("bundle.pem", ca.pki.root_pem());
    let chain = write(
        "chain.pem",
        &format!("{}{}", ca.pki.intermediate_pem(), ca.pki.root_pem()),
    );
    let leaf = write("leaf.pem", &issued.pem);
    Lab {
        serial: issued.serial.to_hex(),
        dir,
        ca,
        url,
        intermediate,
        bundle,
        chain,
        leaf,
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(program: &str, args: &[&str]) -> Out {
    let o = Command::new(program).args(args).output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

impl Lab {
    /// `openssl ocsp` against the responder (POST, with a nonce): stdout + stderr.
    fn openssl_ocsp(&self) -> String {
        let o = run(
            "openssl",
            &[
                "ocsp",
                "-issuer",
                p(&self.intermediate),
                "-cert",
                p(&self.leaf),
                "-url",
                &self.url,
                "-CAfile",
                p(&self.bundle),
                "-resp_text",
            ],
        );
        assert!(o.ok, "openssl ocsp failed:\n{}\n{}", o.stdout, o.stderr);
        format!("{}{}", o.stdout, o.stderr)
    }

    /// The CRL as served, through `openssl crl` (text + signature check against the chain).
    async fn openssl_crl(&self) -> String {
        let der = get(&format!("{}/crl/intermediate.crl", self.url)).await;
        let path = self.dir.path().join("crl.der");
        std::fs::write(&path, der).unwrap();
        let text = run(
            "openssl",
            &["crl", "-inform", "DER", "-in", p(&path), "-text", "-noout"],
        );
        assert!(
            text.ok && text.stderr.is_empty(),
            "openssl crl: {}",
            text.stderr
        );
        let verify = run(
            "openssl",
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                p(&path),
                "-CAfile",
                p(&self.chain),
                "-noout",
            ],
        );
        assert!(
            verify.ok && verify.stderr.contains("verify OK"),
            "CRL signature: {}",
            verify.stderr
        );
        text.stdout
    }

    fn serial_upper(&self) -> String {
        self.serial.to_uppercase()
    }

    /// Waits (bounded) until the served CRL lists the device certificate or not.
    async fn wait_crl(&self, listed: bool) {
        let start = Instant::now();
        loop {
            let has = self
                .ca
                .revocation
                .crl()
                .revoked
                .iter()
                .any(|r| r.serial == self.serial);
            if has == listed {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "CRL did not follow (listed = {listed})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// OCSP over GET (RFC 6960 §A.1) with curl: `<url>/ocsp/<base64>` with the base64 as is,
    /// and `<url>/<percent-encoded base64>` as nginx sends it. Returns openssl's reading.
    fn curl_get_ocsp(&self) -> Vec<String> {
        let req = self.dir.path().join("req.der");
        let o = run(
            "openssl",
            &[
                "ocsp",
                "-issuer",
                p(&self.intermediate),
                "-cert",
                p(&self.leaf),
                "-no_nonce",
                "-reqout",
                p(&req),
            ],
        );
        assert!(o.ok, "{}", o.stderr);
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap());
        let escaped = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let mut readings = Vec::new();
        for url in [
            format!("{}/ocsp/{}", self.url, b64),
            format!("{}/{}", self.url, escaped),
        ] {
            let resp = self.dir.path().join("resp.der");
            let c = run(
                "curl",
                &[
                    "-sS",
                    "--path-as-is",
                    "-o",
                    p(&resp),
                    "-w",
                    "%{http_code} %{content_type}",
                    &url,
                ],
            );
            assert!(c.ok, "curl: {}", c.stderr);
            assert_eq!(c.stdout, "200 application/ocsp-response", "{url}");
            let o = run(
                "openssl",
                &[
                    "ocsp",
                    "-respin",
                    p(&resp),
                    "-issuer",
                    p(&self.intermediate),
                    "-cert",
                    p(&self.leaf),
                    "-CAfile",
                    p(&self.bundle),
                    "-no_nonce",
                ],
            );
            assert!(o.ok, "{}{}", o.stdout, o.stderr);
            readings.push(format!("{}{}", o.stdout, o.stderr));
        }
        readings
    }
}

async fn get(url: &str) -> Vec<u8> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let o = Command::new("curl")
            .args(["-sS", "-f", &url])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_follows_a_device_through_quarantine_reactivation_and_retirement() {
    if !have("openssl") || !have("curl") {
        return;
    }
    let lab = lab().await;
    let serial = lab.serial_upper();

    // Active: good, signed by the delegated responder, nonce echoed; the CRL lists nothing.
    let out = lab.openssl_ocsp();
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("leaf.pem: good"), "{out}");
    assert!(out.contains("OCSP Nonce"), "nonce echoed: {out}");
    assert!(out.contains("Next Update"), "{out}");
    // The responder certificate: EKU OCSPSigning and ocsp-nocheck (RFC 6960 §4.2.2.2).
    assert!(
        out.contains("OCSP Signing") && out.contains("OCSP No Check"),
        "{out}"
    );
    for reading in lab.curl_get_ocsp() {
        assert!(
            reading.contains("Response verify OK") && reading.contains("leaf.pem: good"),
            "{reading}"
        );
    }
    let crl = lab.openssl_crl().await;
    assert!(crl.contains("No Revoked Certificates"), "{crl}");
    assert!(
        crl.contains("X509v3 CRL Number") && crl.contains("X509v3 Authority Key Identifier"),
        "{crl}"
    );
    assert!(crl.contains("Next Update"), "{crl}");

    // Quarantined: revoked with certificateHold, in OCSP at once and in the CRL.
    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Quarantined, "test", "EDR alert")
        .unwrap();
    let out = lab.openssl_ocsp();
    assert!(
        out.contains("Response verify OK") && out.contains("leaf.pem: revoked"),
        "{out}"
    );
    assert!(out.contains("Reason: certificateHold"), "{out}");
    for reading in lab.curl_get_ocsp() {
        assert!(reading.contains("leaf.pem: revoked"), "{reading}");
    }
    lab.wait_crl(true).await;
    let crl = lab.openssl_crl().await;
    assert!(
        crl.contains(&format!("Serial Number: {serial}")),
        "{serial} in {crl}"
    );
    assert!(crl.contains("Certificate Hold"), "{crl}");

    // Re-activated: the hold is released (removeFromCRL semantic): good again, off the CRL.
    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Active, "test", "cleared")
        .unwrap();
    let out = lab.openssl_ocsp();
    assert!(
        out.contains("Response verify OK") && out.contains("leaf.pem: good"),
        "{out}"
    );
    lab.wait_crl(false).await;
    assert!(lab.openssl_crl().await.contains("No Revoked Certificates"));

    // Retired: cessationOfOperation, final.
    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Retired, "test", "disposed")
        .unwrap();
    let out = lab.openssl_ocsp();
    assert!(out.contains("Reason: cessationOfOperation"), "{out}");
    lab.wait_crl(true).await;
    let crl = lab.openssl_crl().await;
    assert!(
        crl.contains(&serial) && crl.contains("Cessation Of Operation"),
        "{crl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_outside_the_inventory_reaches_the_crl_within_a_tick() {
    if !have("openssl") || !have("curl") {
        return;
    }
    let lab = lab().await;
    let before = lab.ca.revocation.crl().number;
    // What ACME revokeCert does: a store update, no inventory event.
    assert!(lab
        .ca
        .store
        .revoke_certificate(&lab.serial, 1, 1_800_000_000)
        .unwrap());
    lab.wait_crl(true).await;
    assert!(lab.ca.revocation.crl().number > before, "cRLNumber grows");
    let crl = lab.openssl_crl().await;
    assert!(
        crl.contains(&lab.serial_upper()) && crl.contains("Key Compromise"),
        "{crl}"
    );
    let out = lab.openssl_ocsp();
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    // Re-activation never releases a revocation that was not a hold.
    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Quarantined, "test", "x")
        .unwrap();
    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Active, "test", "y")
        .unwrap();
    assert!(lab.openssl_ocsp().contains("leaf.pem: revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_serials_foreign_issuers_and_malformed_requests() {
    if !have("openssl") || !have("curl") {
        return;
    }
    let lab = lab().await;
    // A serial we never issued: unknown (RFC 6960 §2.2).
    let o = run(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            p(&lab.intermediate),
            "-serial",
            "0x1234",
            "-url",
            &lab.url,
            "-CAfile",
            p(&lab.bundle),
        ],
    );
    let out = format!("{}{}", o.stdout, o.stderr);
    assert!(
        out.contains("Response verify OK") && out.contains("0x1234: unknown"),
        "{out}"
    );
    // Another issuer (the root asked about as if it issued the leaf): unauthorized.
    let o = run(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            p(&lab.bundle),
            "-cert",
            p(&lab.leaf),
            "-url",
            &lab.url,
        ],
    );
    let out = format!("{}{}", o.stdout, o.stderr);
    assert!(out.contains("unauthorized"), "{out}");

    // Malformed requests: 200 with an OCSPResponse saying malformedRequest (§2.3, §A.1).
    let malformed = [0x30, 0x03, 0x0a, 0x01, 0x01];
    let body = lab.dir.path().join("garbage");
    for (method, data) in [
        ("POST", vec![0x30, 0x80, 0x00]),
        ("POST", b"not der at all".to_vec()),
        ("POST", vec![0x30; 20_000]),
        ("POST", Vec::new()),
    ] {
        std::fs::write(&body, &data).unwrap();
        let resp = lab.dir.path().join("resp");
        let c = run(
            "curl",
            &[
                "-sS",
                "-X",
                method,
                "-H",
                "Content-Type: application/ocsp-request",
                "--data-binary",
                &format!("@{}", p(&body)),
                "-o",
                p(&resp),
                "-w",
                "%{http_code}",
                &format!("{}/ocsp", lab.url),
            ],
        );
        assert_eq!(c.stdout, "200", "{}", c.stderr);
        assert_eq!(std::fs::read(&resp).unwrap(), malformed, "{data:02x?}");
    }
    for path in ["/ocsp/%%%", "/ocsp/!!!!", "/MAA%3D", "/ocsp/"] {
        let resp = lab.dir.path().join("resp");
        let c = run(
            "curl",
            &[
                "-sS",
                "-o",
                p(&resp),
                "-w",
                "%{http_code}",
                &format!("{}{path}", lab.url),
            ],
        );
        assert_eq!(c.stdout, "200", "{path}");
        assert_eq!(std::fs::read(&resp).unwrap(), malformed, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_name_the_crl_and_the_responder() {
    if !have("openssl") || !have("curl") {
        return;
    }
    let lab = lab().await;
    let o = run("openssl", &["x509", "-in", p(&lab.leaf), "-noout", "-text"]);
    assert!(o.ok);
    assert!(
        o.stdout
            .contains(&format!("URI:{}/crl/intermediate.crl", lab.url)),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(&format!("OCSP - URI:{}/ocsp", lab.url)),
        "{}",
        o.stdout
    );
    // The chain still verifies with the new extensions.
    let o = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            p(&lab.bundle),
            "-untrusted",
            p(&lab.intermediate),
            p(&lab.leaf),
        ],
    );
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    // The CRL is served with its media type (RFC 5280 §4.2.1.13, RFC 2585 §3).
    let c = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{content_type}",
            &format!("{}/crl/intermediate.crl", lab.url),
        ],
    );
    assert_eq!(c.stdout, "application/pkix-crl");
    let crl = pem::encode("X509 CRL", &lab.ca.revocation.crl().der);
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
}

#[tokio::test]
async fn the_crl_is_resigned_before_next_update_and_the_responder_renewed_before_expiry() {
    use portcullis_ca::clock::ManualClock;
    use portcullis_ca::revocation::{crl::CRL_LIFETIME, ocsp::RESPONDER_LIFETIME};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let settings = CaSettings::new(dir.path(), AcmeConfig::new("https://127.0.0.1:1"));
    let (ca, _) = Ca::open(settings, clock.clone()).await.unwrap();
    let rev = &ca.revocation;
    let (crl, responder) = (rev.crl(), rev.responder_pem());
    assert!(!rev.refresh().unwrap(), "nothing changed, nothing due");
    assert_eq!(rev.crl().number, crl.number);
    // Half-way to nextUpdate: a new CRL, with a larger number, though nothing changed.
    clock.advance(CRL_LIFETIME / 2);
    assert!(rev.refresh().unwrap());
    let next = rev.crl();
    assert!(next.number > crl.number && next.this_update > crl.this_update);
    assert_eq!(rev.responder_pem(), responder, "responder not due yet");
    // Two thirds into the responder certificate's life: a new one.
    clock.advance(RESPONDER_LIFETIME * 2 / 3);
    rev.refresh().unwrap();
    assert_ne!(rev.responder_pem(), responder);
}

#[tokio::test]
async fn the_https_router_serves_the_crl_and_ocsp_beside_acme() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let settings = CaSettings::new(dir.path(), AcmeConfig::new("https://127.0.0.1:1"));
    let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
    let call = |req: http::Request<axum::body::Body>| {
        let router = ca.router();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let ct = resp.headers()[http::header::CONTENT_TYPE].clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (ct, body)
        }
    };
    let (ct, body) = call(
        http::Request::get("/crl/intermediate.crl")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ct, "application/pkix-crl");
    assert_eq!(body.as_ref(), ca.revocation.crl().der.as_slice());
    let (ct, body) = call(
        http::Request::post("/ocsp")
            .header("content-type", "application/ocsp-request")
            .body(axum::body::Body::from(vec![0x30, 0x00]))
            .unwrap(),
    )
    .await;
    assert_eq!(ct, "application/ocsp-response");
    assert_eq!(
        body.as_ref(),
        &[0x30, 0x03, 0x0a, 0x01, 0x01],
        "malformedRequest"
    );
    let (ct, _) = call(
        http::Request::get("/acme/directory")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ct, "application/json");
}
