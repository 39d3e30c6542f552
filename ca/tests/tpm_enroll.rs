//! Open TPM enrollment (`portcullis_ca::enroll`) against a real software TPM: swtpm
//! manufactured by `swtpm_setup --create-ek-cert` with a local TPM manufacturer CA in the
//! test's temporary directory, driven by tpm2-tools over swtpm's TCP TCTI.
//!
//! The CA side runs MakeCredential; the real `tpm2_activatecredential` must recover the
//! credential; the AK certificate issued at finish must then make a real `tpm2_certify`
//! attestation verify under `portcullis_ca::attest::tpm` with the AK CA as its only root.
//! Every refusal is checked by the rule it names.
//!
//! Needs swtpm, swtpm_setup and tpm2-tools. Without them the tests print a loud SKIP, or fail
//! when `CI=true`.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ciborium::value::Value;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use portcullis_ca::attest::tpm::{self, TpmVerifier};
use portcullis_ca::attest::{AttObj, AttStmt, AttestationFormat, DeviceIdentifier};
use portcullis_ca::clock::{Clock, ManualClock};
use portcullis_ca::enroll::{
    self, AkCa, EnrollSettings, Enrollment, FinishRequest, Rule, StartRequest,
};
use portcullis_ca::pki::KeyAlgorithm;
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Whether `program` runs; when not, a loud SKIP, or a failure under `CI=true`.
fn require_program(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("`{program}` is required by this test and CI=true: install swtpm, swtpm-tools and tpm2-tools (.ci/run does)");
        }
        eprintln!();
        eprintln!("################################################################");
        eprintln!("## SKIP: `{program}` is not installed; this test did NOT run.");
        eprintln!("################################################################");
        eprintln!();
    }
    found
}

fn have_tools() -> bool {
    [
        "swtpm",
        "swtpm_setup",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_nvread",
        "tpm2_activatecredential",
        "tpm2_certify",
    ]
    .iter()
    .all(|p| require_program(p))
}

/// A manufactured swtpm, running, in its own temporary directory; killed when dropped.
struct SwTpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl SwTpm {
    /// `swtpm_setup` with the EK and platform certificates issued by a local CA whose state
    /// (root, intermediate, keys) lives in the temporary directory, not in /var/lib.
    fn manufacture() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("state")).unwrap();
        std::fs::create_dir_all(d.join("localca")).unwrap();
        let lca = d.join("localca");
        std::fs::write(
            d.join("swtpm-localca.conf"),
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                lca.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("swtpm-localca.options"),
            "--platform-manufacturer Portcullis\n--platform-version 2.1\n--platform-model Test\n",
        )
        .unwrap();
        std::fs::write(
            d.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {0}/swtpm-localca.conf\ncreate_certs_tool_options = {0}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                d.display()
            ),
        )
        .unwrap();
        let out = Command::new("swtpm_setup")
            .args([
                "--tpm2",
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
            ])
            .arg("--tpmstate")
            .arg(d.join("state"))
            .arg("--config")
            .arg(d.join("swtpm_setup.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "swtpm_setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // swtpm wants two ports (server and control); try a few pairs the OS says are free.
        for _ in 0..10 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "startup-clear"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", d.join("state").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if TcpStream::connect(addr).is_ok() {
                    return Self { dir, port, child };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("swtpm did not start");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local manufacturer CA: (root, intermediate) DER.
    fn manufacturer_ca(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |name: &str| {
            let pem = std::fs::read_to_string(self.path("localca").join(name)).unwrap();
            portcullis_ca::attest::pem_certificates(&pem)
                .unwrap()
                .remove(0)
        };
        (
            read("swtpm-localca-rootca-cert.pem"),
            read("issuercert.pem"),
        )
    }

    /// Runs a tpm2-tools command against this TPM (in its directory), then flushes the
    /// transient objects: without a resource manager the TPM has only a few object slots.
    fn tpm2(&self, args: &[&str]) -> Vec<u8> {
        let out = self.tpm2_status(args);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn tpm2_status(&self, args: &[&str]) -> std::process::Output {
        let tcti = format!("swtpm:host=127.0.0.1,port={}", self.port);
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", &tcti)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let _ = Command::new("tpm2_flushcontext")
            .arg("-t")
            .env("TPM2TOOLS_TCTI", &tcti)
            .current_dir(self.dir.path())
            .output();
        out
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A TPM2B_PUBLIC file (what tpm2-tools write) as the TPMT_PUBLIC inside it.
    fn tpmt_public(&self, name: &str) -> Vec<u8> {
        let b = self.read(name);
        let size = usize::from(u16::from_be_bytes([b[0], b[1]]));
        assert_eq!(size + 2, b.len(), "{name} is a TPM2B_PUBLIC");
        b[2..].to_vec()
    }

    /// The RSA EK (TCG default template, what `tpm2_createek -G rsa` makes), its certificate
    /// from NV 0x01c00002, and an RSA AK under it: (ek_cert, ek_pub, ak_pub).
    fn ek_and_ak(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        self.tpm2(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
        self.tpm2(&["tpm2_nvread", "0x01c00002", "-o", "ek.der"]);
        self.tpm2(&[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "rsa",
            "-g",
            "sha256",
            "-s",
            "rsassa",
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
        ]);
        (
            self.read("ek.der"),
            self.tpmt_public("ek.pub"),
            self.tpmt_public("ak.pub"),
        )
    }

    /// TPM2_ActivateCredential with the RSA EK (its policy: PolicySecret(endorsement)) and
    /// the AK, on the CA's answer; the recovered credential.
    fn activate(&self, credential_blob: &[u8], secret: &[u8]) -> Result<Vec<u8>, String> {
        self.activate_with("ek.ctx", true, credential_blob, secret)
    }

    /// TPM2_ActivateCredential with the EK `ek` (a context file or a persistent handle),
    /// authorized by PolicySecret(endorsement) when `policy`, else by its (empty) authValue.
    fn activate_with(
        &self,
        ek: &str,
        policy: bool,
        credential_blob: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        // tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
        // TPM2B_ENCRYPTED_SECRET (what tpm2_makecredential writes).
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend(1u32.to_be_bytes());
        file.extend_from_slice(credential_blob);
        file.extend_from_slice(secret);
        std::fs::write(self.path("cred.in"), file).unwrap();
        let _ = std::fs::remove_file(self.path("cred.out"));
        let mut args = vec![
            "tpm2_activatecredential",
            "-c",
            "ak.ctx",
            "-C",
            ek,
            "-i",
            "cred.in",
            "-o",
            "cred.out",
        ];
        if policy {
            self.tpm2(&[
                "tpm2_startauthsession",
                "--policy-session",
                "-S",
                "session.ctx",
            ]);
            self.tpm2(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"]);
            args.extend(["-P", "session:session.ctx"]);
        }
        let out = self.tpm2_status(&args);
        if policy {
            self.tpm2(&["tpm2_flushcontext", "session.ctx"]);
        }
        if out.status.success() {
            Ok(self.read("cred.out"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port P with P+1 also free (at the time of asking).
fn free_port_pair() -> Option<u16> {
    let a = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = a.local_addr().ok()?.port();
    let b = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
    drop((a, b));
    Some(port)
}

/// The CA side: a store with devices, an AK CA, and the enrollment service trusting `roots`.
struct Ca {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    enrollment: Arc<Enrollment>,
}

impl Ca {
    fn new(ek_roots: Vec<Vec<u8>>, devices: &[(&str, DeviceStatus)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
        for (id, status) in devices {
            set_device(&store, id, *status);
        }
        let clock = Arc::new(ManualClock::starting_now());
        let ak_ca = AkCa::load_or_create(
            &dir.path().join("pki"),
            "Test",
            KeyAlgorithm::EcdsaP256,
            clock.now(),
        )
        .unwrap();
        let settings = EnrollSettings {
            ek_roots,
            ..EnrollSettings::default()
        };
        let enrollment = Arc::new(Enrollment::new(
            settings,
            Arc::new(ak_ca),
            store.clone(),
            clock.clone(),
        ));
        Self {
            _dir: dir,
            store,
            clock,
            enrollment,
        }
    }

    fn start(&self, req: &StartRequest) -> Result<enroll::StartResponse, enroll::EnrollError> {
        self.enrollment.start(req)
    }

    fn finish(
        &self,
        session_id: &str,
        credential: &[u8],
    ) -> Result<enroll::FinishResponse, enroll::EnrollError> {
        self.enrollment.finish(&FinishRequest {
            session_id: session_id.into(),
            credential: B64.encode(credential),
        })
    }
}

fn set_device(store: &SqliteStore, id: &str, status: DeviceStatus) {
    store
        .upsert_device(
            &NewDevice {
                id: id.into(),
                hw_module_id: None,
                platform: Some("linux".into()),
                owner: None,
                tags: BTreeSet::new(),
                status,
                source: "test".into(),
            },
            "test",
            "setup",
            SystemTime::now(),
        )
        .unwrap();
}

fn start_request(
    device: &str,
    ek_cert: Option<&[u8]>,
    chain: &[&[u8]],
    ak_pub: &[u8],
) -> StartRequest {
    StartRequest {
        device_id: device.into(),
        ek_cert: ek_cert.map(|c| B64.encode(c)),
        ek_chain: chain.iter().map(|c| B64.encode(c)).collect(),
        ek_pub: None,
        ak_pub: B64.encode(ak_pub),
    }
}

fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s).unwrap()
}

#[track_caller]
fn assert_rule<T: std::fmt::Debug>(r: Result<T, enroll::EnrollError>, rule: Rule) -> String {
    match r {
        Err(e) => {
            assert_eq!(e.rule, rule, "{e}");
            assert!(
                e.to_string().starts_with(&format!("rule {}:", rule.name())),
                "{e}"
            );
            e.detail
        }
        Ok(v) => panic!("expected rule {rule:?}, got {v:?}"),
    }
}

/// POSTs JSON to the enrollment routes in process: (status, JSON body).
async fn post(
    router: &axum::Router,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    if !status.is_success() {
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    }
    (status, json)
}

/// A `tpm` attestation (W3C WebAuthn §8.3 as device-attest-01 uses it) of a fresh,
/// non-restricted signing key, certified by the AK with TPM2_Certify, extraData =
/// SHA-256(key authorization).
///
/// tpm2-tools 5.4's `tpm2_certify` cannot set qualifying data, so the command is marshalled
/// here (TPM 2.0 Part 3 §18.2) and sent with `tpm2_send`, the AK and the key made persistent
/// first so that the raw command can name them.
fn certify_attestation(tpm: &SwTpm, ak_cert: &[u8], key_authorization: &[u8]) -> AttObj {
    const AK_HANDLE: &str = "0x81000100";
    const KEY_HANDLE: &str = "0x81000101";
    tpm.tpm2(&["tpm2_createprimary", "-C", "o", "-c", "primary.ctx"]);
    tpm.tpm2(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        "ecc256",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
    ]);
    tpm.tpm2(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-c",
        "key.ctx",
    ]);
    for (ctx, handle) in [("ak.ctx", AK_HANDLE), ("key.ctx", KEY_HANDLE)] {
        // A handle left from an earlier certification in this TPM is evicted first.
        let _ = tpm.tpm2_status(&["tpm2_evictcontrol", "-C", "o", "-c", handle]);
        tpm.tpm2(&["tpm2_evictcontrol", "-C", "o", "-c", ctx, handle]);
    }
    let qualifying = Sha256::digest(key_authorization);
    let mut cmd = Vec::new();
    cmd.extend(0x8002u16.to_be_bytes()); // TPM_ST_SESSIONS
    cmd.extend(0u32.to_be_bytes()); // commandSize, below
    cmd.extend(0x0000_0148u32.to_be_bytes()); // TPM_CC_Certify
    cmd.extend(0x8100_0101u32.to_be_bytes()); // objectHandle: the key (ADMIN role)
    cmd.extend(0x8100_0100u32.to_be_bytes()); // signHandle: the AK (USER role)
    cmd.extend(18u32.to_be_bytes()); // two empty password sessions (TPM_RS_PW)
    for _ in 0..2 {
        cmd.extend(0x4000_0009u32.to_be_bytes());
        cmd.extend([0, 0, 0, 0, 0]); // nonce (empty), attributes, hmac (empty)
    }
    cmd.extend(32u16.to_be_bytes());
    cmd.extend_from_slice(&qualifying); // qualifyingData
    cmd.extend(0x0010u16.to_be_bytes()); // inScheme TPM_ALG_NULL: the AK's own scheme
    let size = cmd.len() as u32;
    cmd[2..6].copy_from_slice(&size.to_be_bytes());
    std::fs::write(tpm.path("certify.cmd"), &cmd).unwrap();
    let out = Command::new("tpm2_send")
        .args(["-o", "certify.rsp"])
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", tpm.port),
        )
        .current_dir(tpm.dir.path())
        .stdin(std::fs::File::open(tpm.path("certify.cmd")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tpm2_send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Response: tag, size, responseCode, parameterSize, TPM2B_ATTEST certifyInfo,
    // TPMT_SIGNATURE (sigAlg, hash, TPM2B signature for RSASSA), then the session area.
    let rsp = tpm.read("certify.rsp");
    let rc = u32::from_be_bytes(rsp[6..10].try_into().unwrap());
    assert_eq!(rc, 0, "TPM2_Certify response code {rc:#x}");
    let u16_at = |at: usize| usize::from(u16::from_be_bytes([rsp[at], rsp[at + 1]]));
    let info_len = u16_at(14);
    let cert_info = rsp[16..16 + info_len].to_vec();
    let sig_at = 16 + info_len;
    let sig_len = 4 + 2 + u16_at(sig_at + 4);
    let sig = rsp[sig_at..sig_at + sig_len].to_vec();
    AttObj {
        fmt: "tpm".into(),
        att_stmt: AttStmt::from_entries(vec![
            ("ver".into(), Value::Text("2.0".into())),
            ("alg".into(), Value::Integer((-257).into())), // RS256: the AK is RSASSA-SHA256
            (
                "x5c".into(),
                Value::Array(vec![Value::Bytes(ak_cert.to_vec())]),
            ),
            ("sig".into(), Value::Bytes(sig)),
            ("certInfo".into(), Value::Bytes(cert_info)),
            ("pubArea".into(), Value::Bytes(tpm.tpmt_public("key.pub"))),
        ]),
        auth_data: None,
    }
}

/// The whole protocol over HTTP with the real TPM, and the AK certificate doing its job.
#[tokio::test]
async fn tpm_enroll_swtpm_end_to_end() {
    if !have_tools() {
        return;
    }
    let tpm = SwTpm::manufacture();
    let (root, intermediate) = tpm.manufacturer_ca();
    let (ek_cert, _ek_pub, ak_pub) = tpm.ek_and_ak();
    let ca = Ca::new(vec![root], &[("laptop-7", DeviceStatus::Active)]);
    let router = enroll::routes(ca.enrollment.clone());

    let (status, started) = post(
        &router,
        enroll::START_PATH,
        serde_json::to_value(start_request(
            "laptop-7",
            Some(&ek_cert),
            &[&intermediate],
            &ak_pub,
        ))
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let credential = tpm
        .activate(
            &unb64(started["credential_blob"].as_str().unwrap()),
            &unb64(started["secret"].as_str().unwrap()),
        )
        .expect("the real TPM activates the CA's credential");
    assert_eq!(credential.len(), 32);

    let finish = serde_json::json!({
        "session_id": started["session_id"],
        "credential": B64.encode(&credential),
    });
    let (status, done) = post(&router, enroll::FINISH_PATH, finish.clone()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let ak_cert = unb64(done["ak_cert"].as_str().unwrap());
    let ak_ca = unb64(done["ak_ca_cert"].as_str().unwrap());
    assert_eq!(ak_ca, ca.enrollment.ak_ca().cert_der());

    // The AK certificate profile (TCG EK Credential Profile §3.2; WebAuthn §8.3.1).
    let (_, cert) = X509Certificate::from_der(&ak_cert).unwrap();
    assert_eq!(cert.version().0, 2);
    assert!(
        cert.subject().iter_attributes().next().is_none(),
        "empty subject"
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.other.iter().any(|o| o.to_id_string() == "2.23.133.8.3"));
    let san = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.5.29.17")
        .unwrap();
    assert!(san.critical, "the SAN is the only name: critical");
    // The certified key is the AK's, as the TPM has it.
    let ak_spki = tpm::parse_pub_area(&ak_pub).unwrap().spki().unwrap();
    assert_eq!(cert.public_key().raw, ak_spki.as_slice());

    // One-shot: the same finish again finds no session.
    let (status, replay) = post(&router, enroll::FINISH_PATH, finish).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{replay}");
    assert_eq!(replay["rule"], "session-unknown");

    // The EK is now bound to the device, with the TPM named by its certificate.
    let eks = ca.store.device_eks("laptop-7").unwrap();
    assert_eq!(eks.len(), 1);
    assert_eq!(eks[0].tpm_model.as_deref(), Some("swtpm"));
    let ek_hash = hex::encode(Sha256::digest(
        X509Certificate::from_der(&ek_cert)
            .unwrap()
            .1
            .public_key()
            .raw,
    ));
    assert_eq!(
        eks[0].ek_hash, ek_hash,
        "the EK hash is SHA-256 of its SPKI"
    );
    assert_eq!(ca.store.ak_certificates("laptop-7").unwrap().len(), 1);

    // The AK certificate makes a real TPM2_Certify attestation verify under the `tpm` format
    // with only the AK CA as root, naming the device.
    let ka = b"token.thumbprint";
    let att = certify_attestation(&tpm, &ak_cert, ka);
    let verifier = TpmVerifier::with_roots(vec![ak_ca]);
    let attested = verifier
        .verify(&att, ka, ca.clock.now())
        .expect("the tpm format accepts the enrolled AK");
    assert!(attested.identifiers.iter().any(|i| matches!(
        i,
        DeviceIdentifier::PermanentIdentifier { value, .. } if value == "laptop-7"
    )));
    assert_eq!(attested.details.model.as_deref(), Some("swtpm"));
    // And the same attestation under the vendor defaults alone is refused: the AK CA is what
    // vouches for it.
    assert!(TpmVerifier::with_default_roots()
        .verify(&att, ka, ca.clock.now())
        .is_err());
}

/// An ECC EK: swtpm_setup makes a NIST P-384 EK (TCG high-range template: SHA-384,
/// AES-256-CFB, userWithAuth) persistent at 0x81010016 with its certificate at NV 0x01c00016.
/// MakeCredential is then ECDH + KDFe (TPM 2.0 Part 1 §C.6.4); the AK may be anywhere in the
/// same TPM (here under the RSA EK).
#[tokio::test]
async fn tpm_enroll_swtpm_ecc_ek() {
    if !have_tools() {
        return;
    }
    let tpm = SwTpm::manufacture();
    let (root, intermediate) = tpm.manufacturer_ca();
    let (_rsa_ek_cert, _rsa_ek_pub, ak_pub) = tpm.ek_and_ak();
    tpm.tpm2(&["tpm2_nvread", "0x01c00016", "-o", "ecc-ek.der"]);
    tpm.tpm2(&["tpm2_readpublic", "-c", "0x81010016", "-o", "ecc-ek.pub"]);
    let ek_cert = tpm.read("ecc-ek.der");
    let ca = Ca::new(vec![root], &[("laptop-9", DeviceStatus::Active)]);
    // Certificate alone (the template follows from the P-384 key), then with the public area.
    for ek_pub in [None, Some(B64.encode(tpm.tpmt_public("ecc-ek.pub")))] {
        let s = ca
            .start(&StartRequest {
                ek_pub,
                ..start_request("laptop-9", Some(&ek_cert), &[&intermediate], &ak_pub)
            })
            .unwrap();
        // TPMS_ECC_POINT of the ephemeral key: two 48-byte coordinates.
        assert_eq!(unb64(&s.secret).len(), 2 + 2 + 48 + 2 + 48);
        let credential = tpm
            .activate_with(
                "0x81010016",
                false,
                &unb64(&s.credential_blob),
                &unb64(&s.secret),
            )
            .expect("the real TPM activates an ECC EK credential");
        let done = ca.finish(&s.session_id, &credential).unwrap();
        let ak_cert = unb64(&done.ak_cert);
        let (_, cert) = X509Certificate::from_der(&ak_cert).unwrap();
        assert!(!cert.is_ca());
    }
}

/// Refusals that need a TPM's real structures, each by its rule.
#[tokio::test]
async fn tpm_enroll_swtpm_refusals() {
    if !have_tools() {
        return;
    }
    let tpm = SwTpm::manufacture();
    let (root, intermediate) = tpm.manufacturer_ca();
    let (ek_cert, ek_pub, ak_pub) = tpm.ek_and_ak();
    let ca = Ca::new(
        vec![root.clone()],
        &[
            ("laptop-7", DeviceStatus::Active),
            ("laptop-8", DeviceStatus::Active),
            ("stolen-1", DeviceStatus::Quarantined),
        ],
    );
    let good = start_request("laptop-7", Some(&ek_cert), &[&intermediate], &ak_pub);

    // A wrong credential burns the session: the right one afterwards finds nothing.
    let s = ca.start(&good).unwrap();
    assert_rule(
        ca.finish(&s.session_id, &[0u8; 32]),
        Rule::CredentialMismatch,
    );
    let right = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap();
    assert_rule(ca.finish(&s.session_id, &right), Rule::SessionUnknown);
    assert_rule(ca.finish("no-such-session", &right), Rule::SessionUnknown);

    // A blob for another AK's Name: the real TPM refuses to activate it (the integrity HMAC
    // covers the Name, TPM 2.0 Part 1 §24.5).
    let mut other_ak = ak_pub.clone();
    let last = other_ak.len() - 1;
    other_ak[last] ^= 1;
    let s = ca
        .start(&start_request(
            "laptop-7",
            Some(&ek_cert),
            &[&intermediate],
            &other_ak,
        ))
        .unwrap();
    let e = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap_err();
    assert!(e.contains("integrity check failed"), "{e}");

    // The session expires.
    let s = ca.start(&good).unwrap();
    let right = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap();
    ca.clock.advance(Duration::from_secs(301));
    assert_rule(ca.finish(&s.session_id, &right), Rule::SessionUnknown);

    // An EK certificate from a root the CA does not trust, and one without its intermediate.
    let other_root = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let untrusting = Ca::new(
        vec![other_root.der().to_vec()],
        &[("laptop-7", DeviceStatus::Active)],
    );
    assert_rule(untrusting.start(&good), Rule::EkCertChain);
    assert_rule(
        ca.start(&start_request("laptop-7", Some(&ek_cert), &[], &ak_pub)),
        Rule::EkCertChain,
    );
    // No EK roots at all: only pins.
    let no_roots = Ca::new(vec![], &[("laptop-7", DeviceStatus::Active)]);
    let d = assert_rule(no_roots.start(&good), Rule::EkCertChain);
    assert!(d.contains("ek_roots"), "{d}");
    // NV padding left on the certificate.
    let mut padded = ek_cert.clone();
    padded.extend([0xff; 16]);
    assert_rule(
        ca.start(&start_request(
            "laptop-7",
            Some(&padded),
            &[&intermediate],
            &ak_pub,
        )),
        Rule::EkCertParse,
    );

    // AK attributes, on the real AK's public area and on a real non-restricted key.
    let attrs_at = 4; // type(2) nameAlg(2), then objectAttributes
    for (bit, what) in [
        (1u32 << 16, "restricted"),
        (1 << 1, "fixedTPM"),
        (1 << 4, "fixedParent"),
    ] {
        let mut ak = ak_pub.clone();
        let attrs = u32::from_be_bytes(ak[attrs_at..attrs_at + 4].try_into().unwrap()) & !bit;
        ak[attrs_at..attrs_at + 4].copy_from_slice(&attrs.to_be_bytes());
        let d = assert_rule(
            ca.start(&start_request(
                "laptop-7",
                Some(&ek_cert),
                &[&intermediate],
                &ak,
            )),
            Rule::AkAttributes,
        );
        assert!(d.contains(what), "{d}");
    }
    tpm.tpm2(&["tpm2_createprimary", "-C", "o", "-c", "primary.ctx"]);
    tpm.tpm2(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        "rsa2048",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        "-u",
        "plain.pub",
        "-r",
        "plain.priv",
    ]);
    let d = assert_rule(
        ca.start(&start_request(
            "laptop-7",
            Some(&ek_cert),
            &[&intermediate],
            &tpm.tpmt_public("plain.pub"),
        )),
        Rule::AkAttributes,
    );
    assert!(d.contains("restricted"), "{d}");

    // Garbage and lying sizes in the AK's TPMT_PUBLIC.
    for (ak, what) in [
        (vec![0xde, 0xad, 0xbe, 0xef], "garbage"),
        (ak_pub[..ak_pub.len() - 1].to_vec(), "truncated"),
        ([ak_pub.as_slice(), &[0]].concat(), "trailing byte"),
        (
            {
                // authPolicy size 0xffff.
                let mut a = ak_pub.clone();
                a[8] = 0xff;
                a[9] = 0xff;
                a
            },
            "lying authPolicy size",
        ),
        (
            {
                // unique.rsa size one more than is there.
                let mut a = ak_pub.clone();
                let at = a.len() - 256 - 2;
                a[at..at + 2].copy_from_slice(&257u16.to_be_bytes());
                a
            },
            "lying unique size",
        ),
    ] {
        let r = ca.start(&start_request(
            "laptop-7",
            Some(&ek_cert),
            &[&intermediate],
            &ak,
        ));
        let d = assert_rule(r, Rule::AkPubParse);
        assert!(d.contains("pubArea"), "{what}: {d}");
    }
    // And in the EK's.
    let mut lying_ek = ek_pub.clone();
    lying_ek[8] = 0x7f;
    let r = ca.start(&StartRequest {
        ek_pub: Some(B64.encode(&lying_ek)),
        ..good.clone()
    });
    assert_rule(r, Rule::EkPubParse);
    assert_rule(
        ca.start(&StartRequest {
            ak_pub: "not base64!".into(),
            ..good.clone()
        }),
        Rule::Request,
    );

    // Inventory: unknown and inactive devices, at start and (quarantined in between) at finish.
    assert_rule(
        ca.start(&StartRequest {
            device_id: "nobody".into(),
            ..good.clone()
        }),
        Rule::DeviceUnknown,
    );
    assert_rule(
        ca.start(&StartRequest {
            device_id: "stolen-1".into(),
            ..good.clone()
        }),
        Rule::DeviceNotActive,
    );
    assert_rule(
        ca.start(&StartRequest {
            device_id: "../etc".into(),
            ..good.clone()
        }),
        Rule::DeviceId,
    );
    let s = ca.start(&good).unwrap();
    let right = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap();
    set_device(&ca.store, "laptop-7", DeviceStatus::Quarantined);
    assert_rule(ca.finish(&s.session_id, &right), Rule::DeviceNotActive);
    assert!(
        ca.store.device_eks("laptop-7").unwrap().is_empty(),
        "nothing bound"
    );
    set_device(&ca.store, "laptop-7", DeviceStatus::Active);

    // Binding: enrolled as laptop-7, the TPM cannot enrol as laptop-8.
    let s = ca.start(&good).unwrap();
    let right = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap();
    ca.finish(&s.session_id, &right).unwrap();
    let d = assert_rule(
        ca.start(&StartRequest {
            device_id: "laptop-8".into(),
            ..good.clone()
        }),
        Rule::EkBoundToOtherDevice,
    );
    assert!(d.contains("laptop-7"), "{d}");

    // A bare EK public area: refused unless pinned; pinned, the whole protocol works with it.
    let bare = StartRequest {
        device_id: "laptop-8".into(),
        ek_cert: None,
        ek_chain: vec![],
        ek_pub: Some(B64.encode(&ek_pub)),
        ak_pub: B64.encode(&ak_pub),
    };
    let fresh = Ca::new(vec![], &[("laptop-8", DeviceStatus::Active)]);
    assert_rule(fresh.start(&bare), Rule::EkNotPinned);
    let ek_hash = hex::encode(Sha256::digest(
        X509Certificate::from_der(&ek_cert)
            .unwrap()
            .1
            .public_key()
            .raw,
    ));
    fresh.store.pin_device_ek("laptop-8", &ek_hash, 0).unwrap();
    let s = fresh.start(&bare).unwrap();
    let right = tpm
        .activate(&unb64(&s.credential_blob), &unb64(&s.secret))
        .unwrap();
    let done = fresh.finish(&s.session_id, &right).unwrap();
    let ak_cert = unb64(&done.ak_cert);
    let att = certify_attestation(&tpm, &ak_cert, b"ka");
    TpmVerifier::with_roots(vec![unb64(&done.ak_ca_cert)])
        .verify(&att, b"ka", fresh.clock.now())
        .expect("a pinned EK's AK certificate verifies");
    // An ek_pub beside the certificate must carry the certificate's key.
    let mut other_ek = ek_pub.clone();
    let last = other_ek.len() - 1;
    other_ek[last] ^= 1;
    assert_rule(
        ca.start(&StartRequest {
            ek_pub: Some(B64.encode(&other_ek)),
            ..good.clone()
        }),
        Rule::EkPubMismatch,
    );
}

/// Malformed HTTP requests are problem documents with status 400 and the rule.
#[tokio::test]
async fn tpm_enroll_http_malformed_requests() {
    let ca = Ca::new(vec![], &[]);
    let router = enroll::routes(ca.enrollment.clone());
    let (status, p) = post(
        &router,
        enroll::START_PATH,
        serde_json::json!({"device_id": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["rule"], "request");
    assert_eq!(p["type"], "urn:portcullis:enroll:malformed");
    let (status, p) = post(
        &router,
        enroll::START_PATH,
        serde_json::json!({"device_id": "x", "ak_pub": "AAAA", "surprise": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("surprise"), "{p}");
    let (status, p) = post(
        &router,
        enroll::START_PATH,
        serde_json::json!({"device_id": "x", "ak_pub": "AAAA"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["rule"], "ak-pub-parse");
    let (status, p) = post(
        &router,
        enroll::FINISH_PATH,
        serde_json::json!({"session_id": "nope", "credential": "AAAA"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
    // Not JSON.
    let req = Request::post(enroll::START_PATH)
        .header("content-type", "text/plain")
        .body(Body::from("hi"))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Too big.
    let req = Request::post(enroll::START_PATH)
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; 128 * 1024]))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// A real Windows AK (a GCP shielded VM's, from go-attestation's test data; provenance in
/// tests/data/attest): the AK rules accept what real platforms make.
#[test]
fn tpm_enroll_real_windows_ak_passes_the_ak_rules() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/attest/tpm/go-attestation/windows_gcp_shielded_vm.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let public = base64::engine::general_purpose::STANDARD
        .decode(json.pointer("/AK/Public").unwrap().as_str().unwrap())
        .unwrap();
    let ak = enroll::ak::check(&public, false).unwrap();
    assert_eq!(ak.object_attributes, 0x0005_0472);
    assert_eq!(&ak.name[..2], &[0x00, 0x0b]);
}
