//! Open TPM enrollment end to end: a real software TPM whose EK certificate comes from a
//! local manufacturer CA (swtpm_setup + swtpm_localca), the CA's enrollment endpoints and ACME
//! server in process. The agent, with nothing but its TPM: open enrollment (EK certificate →
//! MakeCredential by the CA → TPM2_ActivateCredential → AK certificate from the CA's AK CA)
//! → ACME device-attest-01 with that AK certificate → device certificate.

use std::sync::Arc;

use portcullis_agent::output::AK_CERT_FILE;
use portcullis_agent::testing::Swtpm;
use portcullis_agent::tpm::Tpm;
use portcullis_agent::{AgentConfig, AgentError, KeyMode, TpmKeyConfig};
use portcullis_ca::acme::{AcmeConfig, AcmeServer};
use portcullis_ca::clock::{Clock, SystemClock};
use portcullis_ca::enroll::{ak_cert::tpm_roots_with, EnrollSettings, Enrollment};
use portcullis_ca::inventory::Inventory;
use portcullis_ca::pki::{Authority, CaPaths, InitOptions, LifetimePolicy};
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;

const DEVICE: &str = "desktop-7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_open_enrollment_then_acme_with_only_a_tpm() {
    let Some(swtpm) = Swtpm::start("agent_open_enrollment") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Authority::init(&paths, &InitOptions::default(), clock.now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
    for (id, status) in [
        (DEVICE, DeviceStatus::Active),
        ("retired-1", DeviceStatus::Retired),
    ] {
        inventory
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
                "enrollment e2e",
            )
            .unwrap();
    }
    // The CA trusts the swtpm manufacturer root for EK certificates.
    let ek_root = portcullis_agent::certificate::pem_chain(&swtpm.manufacturer_root_pem()).unwrap();
    let enrollment = Enrollment::open(
        &dir.path().join("pki"),
        &InitOptions::default(),
        EnrollSettings {
            ek_roots: ek_root,
            ..EnrollSettings::default()
        },
        store.clone(),
        clock.clone(),
    )
    .unwrap();
    let ak_ca_der = enrollment.ak_ca().cert_der().to_vec();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = AcmeConfig::new(&base);
    config.trust_domain = "corp.example".into();
    config.attestation.tpm_roots = Some(tpm_roots_with(Some(Vec::new()), &ak_ca_der));
    let acme = AcmeServer::with_inventory(config, store.clone(), pki, clock, inventory.clone());
    let router = acme
        .router()
        .merge(portcullis_ca::enroll::routes(Arc::new(enrollment)));
    tokio::spawn(async move { axum::serve(listener, router).await });

    // The EK certificate's issuer is not in the TPM: the agent sends it as ek_chain.
    let ek_chain = dir.path().join("ek-chain.pem");
    std::fs::write(&ek_chain, swtpm.manufacturer_intermediate_pem()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let agent = AgentConfig {
        ca_url: base.clone(),
        device_id: DEVICE.into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: Some(paths.bundle.clone()),
        key_mode: KeyMode::Tpm(TpmKeyConfig::new(swtpm.tcti())),
        ek_chain: Some(ek_chain.clone()),
    };
    let issued = portcullis_agent::enroll(&agent).await.expect("enroll");
    assert_eq!(issued.cert.device_id.as_deref(), Some(DEVICE));
    // The AK certificate was kept and is the CA's AK CA's.
    let ak_pem = std::fs::read_to_string(out.path().join(AK_CERT_FILE)).unwrap();
    let ak_cert = portcullis_agent::certificate::pem_chain(&ak_pem)
        .unwrap()
        .remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&ak_cert).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ak_ca_der).unwrap();
    parsed.verify_signature(Some(ca.public_key())).unwrap();
    assert!(Tpm::open(&swtpm.tcti())
        .unwrap()
        .transient_objects()
        .unwrap()
        .is_empty());

    // The same TPM cannot enrol as a retired device: refused as "not trusted", by rule.
    let out2 = tempfile::tempdir().unwrap();
    let retired = AgentConfig {
        device_id: "retired-1".into(),
        out_dir: out2.path().to_path_buf(),
        ..agent.clone()
    };
    match portcullis_agent::enroll(&retired).await {
        Err(AgentError::DeviceNotTrusted { during, .. }) => assert_eq!(during, "enrollment start"),
        other => panic!("expected DeviceNotTrusted, got {other:?}"),
    }
}
