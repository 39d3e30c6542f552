//! The agent end to end against the Portcullis CA running in process over HTTP, with a real
//! software TPM: enroll (device-attest-01 with the `tpm` attestation, CSR signed by TPM2_Sign)
//! → the chain and key reference on disk → status → renew (same TPM key) → quarantine →
//! renewal refused as "device not trusted". The AK certificate is pre-provisioned from a test
//! AK CA the CA trusts (open enrollment is tested on its own in `enroll_swtpm.rs`).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use x509_parser::prelude::FromDer;

use portcullis_agent::output::{AK_CERT_FILE, CERT_FILE, KEY_REF_FILE};
use portcullis_agent::testing::{Swtpm, TestAkCa, TpmIdentity};
use portcullis_agent::tpm::ek::EkAlg;
use portcullis_agent::tpm::Tpm;
use portcullis_agent::{AgentConfig, AgentError, KeyMode, TpmKeyConfig};
use portcullis_ca::acme::{AcmeConfig, AcmeServer};
use portcullis_ca::clock::{Clock, SystemClock};
use portcullis_ca::inventory::Inventory;
use portcullis_ca::pki::{Authority, CaPaths, InitOptions, LifetimePolicy};
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;

const DEVICE: &str = "laptop-0042";

struct Ca {
    _dir: tempfile::TempDir,
    bundle: std::path::PathBuf,
    inventory: Arc<Inventory>,
    base: String,
}

async fn ca(tpm_root: Vec<u8>) -> Ca {
    ca_with(tpm_root, false).await
}

async fn ca_with(tpm_root: Vec<u8>, allow_unattested: bool) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemClock.now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = AcmeConfig::new(&base);
    config.trust_domain = "corp.example".into();
    config.attestation.tpm_roots = Some(vec![tpm_root]);
    config.attestation.allow_unattested = allow_unattested;
    let server = AcmeServer::with_inventory(config, store, pki, clock, inventory.clone());
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ca {
        bundle: paths.bundle.clone(),
        _dir: dir,
        inventory,
        base,
    }
}

fn add_device(ca: &Ca, id: &str, status: DeviceStatus) {
    ca.inventory
        .upsert(
            &NewDevice {
                id: id.into(),
                hw_module_id: None,
                platform: Some("tpm".into()),
                owner: None,
                tags: Default::default(),
                status,
                source: "test".into(),
            },
            "test",
            "agent e2e",
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_renews_and_stops_when_quarantined() {
    let Some(swtpm) = Swtpm::start("agent_acme_e2e") else {
        return;
    };
    let ak_ca = TestAkCa::new();
    let ca = ca(ak_ca.root_der.clone()).await;
    add_device(&ca, DEVICE, DeviceStatus::Active);

    let out = tempfile::tempdir().unwrap();
    let tpm_cfg = TpmKeyConfig::new(swtpm.tcti());
    // Pre-provision the AK and its certificate (what open enrollment would have produced).
    {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak = tpm
            .ensure_ak(EkAlg::Rsa2048, tpm_cfg.ak_alg, tpm_cfg.ak_handle)
            .unwrap();
        let cert = ak_ca.issue(&ak.spki().unwrap(), &TpmIdentity::default(), Some(DEVICE));
        std::fs::write(
            out.path().join(AK_CERT_FILE),
            portcullis_agent::certificate::pem_encode("CERTIFICATE", &cert),
        )
        .unwrap();
    }
    let config = AgentConfig {
        ca_url: ca.base.clone(),
        device_id: DEVICE.into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: Some(ca.bundle.clone()),
        key_mode: KeyMode::Tpm(tpm_cfg.clone()),
        ek_chain: None,
    };

    let issued = portcullis_agent::enroll(&config).await.expect("enroll");
    assert_eq!(issued.cert.device_id.as_deref(), Some(DEVICE));
    assert_eq!(issued.key_reference, "handle:0x81000101");
    // The certificate is for the TPM-resident key.
    let device_key = Tpm::open(&swtpm.tcti())
        .unwrap()
        .device_key_public(tpm_cfg.device_key_handle)
        .unwrap();
    assert_eq!(issued.cert.spki, device_key.spki().unwrap());
    let chain = std::fs::read_to_string(out.path().join(CERT_FILE)).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let mode = std::fs::metadata(out.path().join(CERT_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        std::fs::read_to_string(out.path().join(KEY_REF_FILE)).unwrap(),
        "handle:0x81000101\n"
    );
    // The key reference works with OpenSSL's tpm2 provider (what curl uses): it loads the
    // persistent key by handle and signs with it in the TPM.
    openssl_tpm2_signs(&swtpm.tcti(), out.path(), &issued.cert.spki);

    // The CA recorded the tpm attestation in the certificate.
    let leaf = portcullis_agent::certificate::pem_chain(&chain)
        .unwrap()
        .remove(0);
    let identity = portcullis_policy_identity(&leaf);
    assert_eq!(identity.as_deref(), Some("tpm"));

    let status = portcullis_agent::status(&config, std::time::SystemTime::now()).unwrap();
    assert_eq!(status.cert.serial, issued.cert.serial);
    assert!(status.time_to_renewal() > std::time::Duration::from_secs(3600));
    let text = status.to_string();
    assert!(
        text.contains(DEVICE) && text.contains(&issued.cert.serial),
        "{text}"
    );

    // Renew: a new certificate, same TPM key.
    let renewed = portcullis_agent::renew(&config).await.expect("renew");
    assert_ne!(renewed.cert.serial, issued.cert.serial);
    assert_eq!(renewed.cert.spki, issued.cert.spki);

    // Quarantined: the CA refuses the device, and the agent says so distinctly.
    ca.inventory
        .set_status(DEVICE, DeviceStatus::Quarantined, "test", "lost")
        .unwrap();
    match portcullis_agent::renew(&config).await {
        Err(AgentError::DeviceNotTrusted { detail, .. }) => {
            assert!(detail.contains("device-active"), "{detail}")
        }
        other => panic!("expected DeviceNotTrusted, got {other:?}"),
    }
    // `run` stops (returns the error) instead of retrying forever.
    let started = std::time::Instant::now();
    let mut short = config.clone();
    // Make the current certificate due now: remove it, so `run` enrols immediately.
    std::fs::remove_file(out.path().join(CERT_FILE)).unwrap();
    short.out_dir = out.path().to_path_buf();
    let e = portcullis_agent::run(&short, &portcullis_agent::SystemClock)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::DeviceNotTrusted { .. }), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(Tpm::open(&swtpm.tcti())
        .unwrap()
        .transient_objects()
        .unwrap()
        .is_empty());
}

/// `openssl pkey` and `openssl dgst -sign` with `-provider tpm2` and the `key.ref` string.
fn openssl_tpm2_signs(tcti: &str, out: &std::path::Path, spki: &[u8]) {
    if !portcullis_agent::testing::require_programs("openssl tpm2 provider", &["openssl"]) {
        return;
    }
    let key = std::fs::read_to_string(out.join(KEY_REF_FILE)).unwrap();
    let key = key.trim();
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .env("TPM2OPENSSL_TCTI", tcti)
            .output()
            .unwrap()
    };
    let probe = openssl(&["list", "-providers", "-provider", "tpm2"]);
    if !probe.status.success() {
        let msg = "openssl cannot load the tpm2 provider (apt-get install tpm2-openssl)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}: {}", String::from_utf8_lossy(&probe.stderr));
        }
        eprintln!("\n!!!!! SKIPPED the OpenSSL check: {msg}\n");
        return;
    }
    let pubkey = out.join("pub.der");
    let r = openssl(&[
        "pkey",
        "-provider",
        "tpm2",
        "-provider",
        "default",
        "-in",
        key,
        "-pubout",
        "-outform",
        "DER",
        "-out",
        pubkey.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&pubkey).unwrap(), spki);
    let data = out.join("data");
    std::fs::write(&data, b"signed by the TPM through openssl").unwrap();
    let sig = out.join("sig");
    let r = openssl(&[
        "dgst",
        "-sha256",
        "-provider",
        "tpm2",
        "-provider",
        "default",
        // Sign in the TPM, not with the default provider's EC code (tpm2-openssl docs).
        "-propquery",
        "?provider=tpm2",
        "-sign",
        key,
        "-out",
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        parsed.subject_public_key.data.as_ref(),
    )
    .verify(
        b"signed by the TPM through openssl",
        &std::fs::read(&sig).unwrap(),
    )
    .expect("the openssl/TPM signature verifies under the certified key");
}

/// The attestation format the CA wrote into the certificate (its extension), through the
/// policy crate's parser as the gateway uses it.
fn portcullis_policy_identity(der: &[u8]) -> Option<String> {
    portcullis_policy::DeviceIdentity::from_der(der, "corp.example")
        .ok()
        .and_then(|i| i.attestation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_software_mode_is_refused_by_a_ca_that_wants_attestation() {
    let ak_ca = TestAkCa::new();
    let ca = ca(ak_ca.root_der.clone()).await;
    add_device(&ca, DEVICE, DeviceStatus::Active);
    let out = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        ca_url: format!("{}/acme/directory", ca.base),
        device_id: DEVICE.into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: Some(ca.bundle.clone()),
        key_mode: KeyMode::Software,
        ek_chain: None,
    };
    match portcullis_agent::enroll(&config).await {
        Err(AgentError::Refused { kind, detail, .. }) => {
            assert!(kind.ends_with("badAttestationStatement"), "{kind}");
            assert!(
                detail.contains("portcullis-software-unattested"),
                "{detail}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The key file was created 0600 and is reused next time.
    let mode = std::fs::metadata(out.path().join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A TPM that is not there is a TPM error naming the TCTI, before any request.
    let mut absent = config.clone();
    absent.key_mode = KeyMode::Tpm(TpmKeyConfig::new("swtpm:host=127.0.0.1,port=1"));
    let e = portcullis_agent::enroll(&absent).await.unwrap_err();
    assert!(matches!(e, AgentError::Tpm(_)), "{e}");
    assert!(e.to_string().contains("port=1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_software_mode_is_accepted_only_behind_the_switch_and_marked() {
    let ak_ca = TestAkCa::new();
    let ca = ca_with(ak_ca.root_der.clone(), true).await;
    add_device(&ca, DEVICE, DeviceStatus::Active);
    let out = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        ca_url: format!("{}/acme/directory", ca.base),
        device_id: DEVICE.into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: Some(ca.bundle.clone()),
        key_mode: KeyMode::Software,
        ek_chain: None,
    };
    portcullis_agent::enroll(&config)
        .await
        .expect("a CA that allows unattested devices issues");
    let pem = std::fs::read_to_string(out.path().join("cert.pem")).unwrap();
    let der = pem_first(&pem);
    // Marked in the certificate, where routes and `cert inspect` see it.
    assert_eq!(
        portcullis_policy_identity(&der).as_deref(),
        Some("portcullis-software-unattested")
    );
    // Still only for inventoried, active devices.
    let mut stranger = config.clone();
    stranger.device_id = "NOT-IN-INVENTORY".into();
    stranger.out_dir = tempfile::tempdir().unwrap().keep();
    assert!(portcullis_agent::enroll(&stranger).await.is_err());
}

fn pem_first(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}
