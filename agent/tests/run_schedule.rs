//! `run`'s schedule with injected time: the clock advances when `run` sleeps, nothing waits.
//! Against the CA in process with a real software TPM: the first renewal falls in the CA's
//! ARI window (RFC 9773; the Portcullis CA suggests 2/3 to 5/6 of the lifetime), an overdue
//! certificate renews at once, and quarantine ends `run` with DeviceNotTrusted. Against a CA
//! that is down: exponential backoff with jitter, retrying rather than postponing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portcullis_agent::certificate::pem_encode;
use portcullis_agent::output::{AK_CERT_FILE, CERT_FILE};
use portcullis_agent::testing::{Swtpm, TestAkCa, TpmIdentity};
use portcullis_agent::tpm::ek::EkAlg;
use portcullis_agent::tpm::Tpm;
use portcullis_agent::{AgentConfig, AgentError, Clock, KeyMode, Sleep, TpmKeyConfig};
use portcullis_ca::acme::{AcmeConfig, AcmeServer};
use portcullis_ca::clock::SystemClock;
use portcullis_ca::inventory::Inventory;
use portcullis_ca::pki::{Authority, CaPaths, InitOptions, LifetimePolicy};
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;

type Hook = Box<dyn Fn(usize) -> bool + Send + Sync>;

/// A clock that `sleep` advances. `hook(n)` runs at the n-th sleep (from 1); when it returns
/// false the sleep never ends (the test stops there).
struct MockTime {
    now: Mutex<SystemTime>,
    waits: Mutex<Vec<Duration>>,
    hook: Hook,
}

impl MockTime {
    fn new(hook: Hook) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(SystemTime::now()),
            waits: Mutex::new(Vec::new()),
            hook,
        })
    }
    fn waits(&self) -> Vec<Duration> {
        self.waits.lock().unwrap().clone()
    }
}

impl Clock for MockTime {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap()
    }
}

impl Sleep for MockTime {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let n = {
            let mut w = self.waits.lock().unwrap();
            w.push(d);
            w.len()
        };
        *self.now.lock().unwrap() += d;
        if (self.hook)(n) {
            Box::pin(async {})
        } else {
            Box::pin(std::future::pending())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_renews_in_the_ari_window_and_stops_when_quarantined() {
    let Some(swtpm) = Swtpm::start("run_schedule") else {
        return;
    };
    const DEVICE: &str = "kiosk-9";
    let ak_ca = TestAkCa::new();
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemTime::now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let clock: Arc<dyn portcullis_ca::clock::Clock> = Arc::new(SystemClock);
    let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
    inventory
        .upsert(
            &NewDevice {
                id: DEVICE.into(),
                hw_module_id: None,
                platform: Some("tpm".into()),
                owner: None,
                tags: Default::default(),
                status: DeviceStatus::Active,
                source: "test".into(),
            },
            "test",
            "run schedule",
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut acme = AcmeConfig::new(&base);
    acme.attestation.tpm_roots = Some(vec![ak_ca.root_der.clone()]);
    let router = AcmeServer::with_inventory(acme, store, pki, clock, inventory.clone()).router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let out = tempfile::tempdir().unwrap();
    let tpm_cfg = TpmKeyConfig::new(swtpm.tcti());
    {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak = tpm
            .ensure_ak(EkAlg::Rsa2048, tpm_cfg.ak_alg, tpm_cfg.ak_handle)
            .unwrap();
        let cert = ak_ca.issue(&ak.spki().unwrap(), &TpmIdentity::default(), Some(DEVICE));
        std::fs::write(
            out.path().join(AK_CERT_FILE),
            pem_encode("CERTIFICATE", &cert),
        )
        .unwrap();
    }
    let config = AgentConfig {
        ca_url: base,
        device_id: DEVICE.into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: Some(paths.bundle.clone()),
        key_mode: KeyMode::Tpm(tpm_cfg),
        ek_chain: None,
    };
    let first = portcullis_agent::enroll(&config).await.unwrap();

    // Sleep 1 waits for the ARI choice (~16-20 h of mock time) and the renewal after it gets
    // a fresh certificate; sleep 2 waits for that one's window, the device is quarantined
    // meanwhile, and the renewal after it is refused: `run` returns.
    let inv = inventory.clone();
    let time = MockTime::new(Box::new(move |n| {
        if n == 2 {
            inv.set_status(DEVICE, DeviceStatus::Quarantined, "test", "stolen")
                .unwrap();
        }
        true
    }));
    let e = portcullis_agent::run_with(&config, time.as_ref(), time.as_ref())
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::DeviceNotTrusted { .. }), "{e}");
    let waits = time.waits();
    assert_eq!(waits.len(), 2, "{waits:?}");
    let lifetime = first
        .cert
        .not_after
        .duration_since(first.cert.not_before)
        .unwrap();
    // Inside [2/3, 5/6] of the lifetime from not_before, measured from (about) now.
    let lo = lifetime * 2 / 3 - Duration::from_secs(120);
    let hi = lifetime * 5 / 6;
    assert!(
        waits[0] >= lo && waits[0] <= hi,
        "{:?} not in [{lo:?}, {hi:?}]",
        waits[0]
    );
    // One renewal happened between the two sleeps: a new certificate on disk.
    let now = portcullis_agent::status(&config, SystemTime::now()).unwrap();
    assert_ne!(now.cert.serial, first.cert.serial);
    assert_eq!(now.cert.spki, first.cert.spki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_backs_off_with_jitter_while_the_ca_is_down() {
    // A software-mode device with a 3-hour certificate and a CA that is not there.
    let out = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out.path().join("key.pem"))
            .unwrap();
        f.write_all(key.serialize_pem().as_bytes()).unwrap();
    }
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::hours(3);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(out.path().join(CERT_FILE), cert.pem()).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let config = AgentConfig {
        ca_url: format!("http://127.0.0.1:{port}"),
        device_id: "dev-1".into(),
        out_dir: out.path().to_path_buf(),
        ca_roots: None,
        key_mode: KeyMode::Software,
        ek_chain: None,
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let time = MockTime::new(Box::new(move |n| {
        if n == 5 {
            stop2.notify_one();
            return false;
        }
        true
    }));
    let t = time.clone();
    let runner = tokio::spawn(async move {
        let _ = portcullis_agent::run_with(&config, t.as_ref(), t.as_ref()).await;
        panic!("run returned while the CA was down");
    });
    tokio::time::timeout(Duration::from_secs(60), stop.notified())
        .await
        .expect("run slept 5 times");
    runner.abort();
    let waits = time.waits();
    // First: two thirds of 3 h (minus up to 1/30 of it in jitter, ARI unavailable).
    assert!(
        waits[0] <= Duration::from_secs(7200) && waits[0] >= Duration::from_secs(7200 - 360 - 5),
        "{waits:?}"
    );
    // Then the backoff: [5,10], [10,20], [20,40], [40,80] seconds — retried, not postponed.
    for (i, w) in waits[1..].iter().enumerate() {
        let ceiling = Duration::from_secs(10 << i);
        assert!(
            *w >= ceiling / 2 && *w <= ceiling,
            "backoff {i}: {w:?} ({waits:?})"
        );
    }
}
