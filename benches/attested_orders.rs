//! Attested orders/s (issue 4): the whole device-attest-01 flow end to end with the instant-acme
//! client against the CA running in this process on loopback HTTP (`AcmeServer::with_inventory`,
//! `tpm_roots` = a test AK CA), with `tpm` attestations synthesized in software — no TPM:
//!
//! - per device, a software P-256 attestation key (AK) with an AK certificate from
//!   `portcullis_agent::testing::TestAkCa` (the profile the `tpm` verifier checks; its SAN
//!   names the device as a PermanentIdentifier);
//! - per order, a fresh P-256 device key, its TPMT_PUBLIC (ECC, nameAlg SHA-256, fixedTPM |
//!   fixedParent | sensitiveDataOrigin | userWithAuth | sign), a TPMS_ATTEST of type CERTIFY
//!   with extraData = SHA-256(key authorization) and attested.name = 0x000b || SHA-256(pubArea),
//!   signed by the AK (TPMT_SIGNATURE, ECDSA SHA-256), as `portcullis_agent::attestation::
//!   tpm_att_obj` packs it.
//!
//! One flow = newOrder (permanent-identifier) → device-attest-01 with the attObj → poll until
//! ready → finalize with a CSR of the device key → poll → download. One account per client.
//! Also the cost of `TpmVerifier::verify` alone (single thread) for context.
//!
//! ```text
//! cargo bench --bench attested_orders
//! cargo bench --bench attested_orders -- --secs 10 --levels 1,4,16 --devices 256
//! ```
//!
//! Options: `--secs S` measured seconds per concurrency level (10, at most 20), `--levels
//! 1,4,16`, `--devices N` active devices in the inventory (256), `--poll-ms N` fixed refresh
//! interval of a pending/processing order (10, as acme_vs_pebble), `--warmup N` unmeasured
//! orders before each level (8), `--server-threads N` / `--client-threads N` Tokio workers of
//! the CA's runtime and the client's runtime (2 / 2), `--verify-secs S` (2), `--out FILE`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, BodyWrapper, ChallengeType, DeviceAttestation, Identifier, NewAccount, NewOrder,
    Order, OrderStatus,
};
use portcullis_agent::attestation::tpm_att_obj;
use portcullis_agent::testing::{TestAkCa, TpmIdentity};
use portcullis_agent::tpm::certify::Certification;
use portcullis_ca::acme::{AcmeConfig, AcmeServer};
use portcullis_ca::attest::tpm::TpmVerifier;
use portcullis_ca::attest::{attobj, AttestationFormat};
use portcullis_ca::clock::{Clock, SystemClock};
use portcullis_ca::inventory::Inventory;
use portcullis_ca::pki::{Authority, CaPaths, InitOptions, LifetimePolicy};
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;
use rcgen::{CertificateParams, DnType, KeyPair};
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

const ORDER_TIMEOUT: Duration = Duration::from_secs(30);

// TPM 2.0 Part 2 constants.
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const USER_WITH_AUTH: u32 = 1 << 6;
const SIGN: u32 = 1 << 18;
/// ES256 (IANA COSE Algorithms).
const COSE_ES256: i64 = -7;

#[derive(Debug, Clone)]
struct Options {
    secs: f64,
    levels: Vec<usize>,
    devices: usize,
    poll: Duration,
    warmup: usize,
    server_threads: usize,
    client_threads: usize,
    verify_secs: f64,
    out: Option<std::path::PathBuf>,
}

fn parse() -> anyhow::Result<Options> {
    let mut o = Options {
        secs: 10.0,
        levels: vec![1, 4, 16],
        devices: 256,
        poll: Duration::from_millis(10),
        warmup: 8,
        server_threads: 2,
        client_threads: 2,
        verify_secs: 2.0,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--secs" => o.secs = val()?.parse()?,
            "--levels" => {
                o.levels = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--devices" => o.devices = val()?.parse()?,
            "--poll-ms" => o.poll = Duration::from_millis(val()?.parse()?),
            "--warmup" => o.warmup = val()?.parse()?,
            "--server-threads" => o.server_threads = val()?.parse()?,
            "--client-threads" => o.client_threads = val()?.parse()?,
            "--verify-secs" => o.verify_secs = val()?.parse()?,
            "--out" => o.out = Some(val()?.into()),
            other => bail!("unknown option {other}"),
        }
    }
    if !(0.5..=20.0).contains(&o.secs) {
        bail!("--secs must be within 0.5..=20 (the issue's limit per level is 20 s)");
    }
    Ok(o)
}

fn tpm2b(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest(&SHA256, b).as_ref().to_vec()
}

/// `nameAlg || H(data)` with SHA-256 (TPM 2.0 Part 1 §16).
fn name_of(data: &[u8]) -> Vec<u8> {
    let mut n = TPM_ALG_SHA256.to_be_bytes().to_vec();
    n.extend(sha256(data));
    n
}

/// SubjectPublicKeyInfo of an uncompressed P-256 point.
fn p256_spki(point: &[u8]) -> Vec<u8> {
    let mut spki =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    spki.extend_from_slice(point);
    spki
}

/// The TPMT_PUBLIC of an ECC P-256 signing key (TPM 2.0 Part 2 §12.2.4).
fn pub_area(point: &[u8]) -> Vec<u8> {
    assert_eq!(point.len(), 65);
    let mut p = Vec::with_capacity(100);
    p.extend(TPM_ALG_ECC.to_be_bytes());
    p.extend(TPM_ALG_SHA256.to_be_bytes());
    p.extend(
        (FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | SIGN).to_be_bytes(),
    );
    tpm2b(&mut p, &[]); // authPolicy
    p.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
    p.extend(TPM_ALG_ECDSA.to_be_bytes()); // scheme
    p.extend(TPM_ALG_SHA256.to_be_bytes()); // scheme.details.hashAlg
    p.extend(TPM_ECC_NIST_P256.to_be_bytes());
    p.extend(TPM_ALG_NULL.to_be_bytes()); // kdf
    tpm2b(&mut p, &point[1..33]);
    tpm2b(&mut p, &point[33..65]);
    p
}

/// A software TPM device: its AK and the AK certificate naming it.
struct Device {
    id: String,
    ak: EcdsaKeyPair,
    ak_name: Vec<u8>,
    ak_cert: Vec<u8>,
}

impl Device {
    fn new(id: String, ca: &TestAkCa, rng: &SystemRandom) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).unwrap();
        let ak = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
            .unwrap();
        let point = ak.public_key().as_ref().to_vec();
        let ak_cert = ca.issue(&p256_spki(&point), &TpmIdentity::default(), Some(&id));
        Self {
            id,
            ak_name: name_of(&pub_area(&point)),
            ak,
            ak_cert,
        }
    }

    /// What TPM2_Certify(device key, AK, qualifyingData = SHA-256(ka)) returns, packed as the
    /// `tpm` attObj; and the device key (for the CSR).
    fn attest(&self, key_authorization: &[u8], rng: &SystemRandom) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pub_area = pub_area(key.public_key_raw());
        let mut ci = Vec::with_capacity(160);
        ci.extend(TPM_GENERATED_VALUE.to_be_bytes());
        ci.extend(TPM_ST_ATTEST_CERTIFY.to_be_bytes());
        tpm2b(&mut ci, &self.ak_name); // qualifiedSigner
        tpm2b(&mut ci, &sha256(key_authorization)); // extraData
        ci.extend(123_456_789u64.to_be_bytes()); // clockInfo.clock
        ci.extend(7u32.to_be_bytes()); // resetCount
        ci.extend(0u32.to_be_bytes()); // restartCount
        ci.push(1); // safe
        ci.extend(0x0002_0000_0001_0000u64.to_be_bytes()); // firmwareVersion
        let name = name_of(&pub_area);
        tpm2b(&mut ci, &name); // attested.name
        tpm2b(
            &mut ci,
            &name_of(&[self.ak_name.as_slice(), &name].concat()),
        ); // qualifiedName
        let rs = self.ak.sign(rng, &ci).unwrap();
        let rs = rs.as_ref();
        let mut sig = Vec::with_capacity(72);
        sig.extend(TPM_ALG_ECDSA.to_be_bytes());
        sig.extend(TPM_ALG_SHA256.to_be_bytes());
        tpm2b(&mut sig, &rs[..32]);
        tpm2b(&mut sig, &rs[32..]);
        let cert = Certification {
            cert_info: ci,
            signature: sig,
            pub_area,
            alg: COSE_ES256,
        };
        (tpm_att_obj(&cert, std::slice::from_ref(&self.ak_cert)), key)
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    directory: String,
    ak_root: Vec<u8>,
    devices: Vec<Device>,
}

fn lab(o: &Options, server_rt: &tokio::runtime::Runtime) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemClock.now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
    let ak_ca = TestAkCa::new();
    let rng = SystemRandom::new();
    let devices: Vec<Device> = (0..o.devices)
        .map(|i| Device::new(format!("bench-device-{i:05}"), &ak_ca, &rng))
        .collect();
    for d in &devices {
        inventory
            .upsert(
                &NewDevice {
                    id: d.id.clone(),
                    hw_module_id: None,
                    platform: Some("tpm".into()),
                    owner: None,
                    tags: Default::default(),
                    status: DeviceStatus::Active,
                    source: "bench".into(),
                },
                "bench",
                "attested_orders bench",
            )
            .unwrap();
    }
    let directory = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = AcmeConfig::new(&base);
        config.trust_domain = "corp.example".into();
        config.attestation.tpm_roots = Some(vec![ak_ca.root_der.clone()]);
        let server = AcmeServer::with_inventory(config, store, pki, clock, inventory);
        tokio::spawn(portcullis_ca::revocation::serve_http(
            listener,
            server.router(),
            std::future::pending(),
        ));
        format!("{base}/acme/directory")
    });
    Lab {
        _dir: dir,
        directory,
        ak_root: ak_ca.root_der.clone(),
        devices,
    }
}

async fn account(directory: &str) -> anyhow::Result<Account> {
    let http = HyperClient::builder(TokioExecutor::new()).build_http::<BodyWrapper<Bytes>>();
    let (account, _) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .map_err(|e| anyhow!("newAccount: {e}"))?;
    Ok(account)
}

/// Refreshes `order` every `poll` while it is `status`.
async fn wait_while(order: &mut Order, status: OrderStatus, poll: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + ORDER_TIMEOUT;
    while order.state().status == status {
        if Instant::now() > deadline {
            bail!("order still {status:?} after {ORDER_TIMEOUT:?}");
        }
        tokio::time::sleep(poll).await;
        order
            .refresh()
            .await
            .map_err(|e| anyhow!("order refresh: {e}"))?;
    }
    Ok(())
}

/// One attested order end to end; the downloaded chain (PEM).
async fn attested_order(
    account: &Account,
    device: &Device,
    poll: Duration,
    rng: &SystemRandom,
) -> anyhow::Result<String> {
    let ids = [Identifier::PermanentIdentifier(device.id.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| anyhow!("newOrder: {e}"))?;
    let key = {
        let mut authzs = order.authorizations();
        let mut authz = authzs
            .next()
            .await
            .context("no authorization")?
            .map_err(|e| anyhow!("authorization: {e}"))?;
        let mut ch = authz
            .challenge(ChallengeType::DeviceAttest01)
            .context("no device-attest-01 challenge")?;
        let ka = ch.key_authorization().as_str().to_owned();
        let (att_obj, key) = device.attest(ka.as_bytes(), rng);
        ch.send_device_attestation(&DeviceAttestation {
            att_obj: Cow::Owned(att_obj),
        })
        .await
        .map_err(|e| anyhow!("device-attest-01: {e}"))?;
        key
    };
    order
        .refresh()
        .await
        .map_err(|e| anyhow!("order refresh: {e}"))?;
    wait_while(&mut order, OrderStatus::Pending, poll).await?;
    let state = order.state();
    if state.status != OrderStatus::Ready {
        bail!("order is {:?}: {:?}", state.status, state.error);
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "device");
    let csr = params.serialize_request(&key)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| anyhow!("finalize: {e}"))?;
    wait_while(&mut order, OrderStatus::Processing, poll).await?;
    order
        .certificate()
        .await
        .map_err(|e| anyhow!("certificate download: {e}"))?
        .context("no certificate")
}

#[derive(Debug, Default, Clone)]
struct Level {
    concurrency: usize,
    ok: usize,
    errors: Vec<String>,
    wall: Duration,
    latencies: Vec<Duration>,
    cpu: f64,
    ca_cpu: f64,
    client_cpu: f64,
}

impl Level {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64()
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((p / 100.0) * (l.len() - 1) as f64).round() as usize;
        l[i].as_secs_f64() * 1000.0
    }
}

/// utime + stime of this process in seconds (/proc/self/stat; the CA and the client both).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(i) = stat.rfind(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    let t = |k: usize| {
        f.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (t(11) + t(12)) / hz
}

/// utime + stime in seconds of this process's threads whose name starts with `prefix` (the
/// runtimes name their workers and blocking threads "ca" and "client").
fn thread_cpu(prefix: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
        let v = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (v(11) + v(12)) / hz;
    }
    total
}

async fn run_level(
    lab: &Arc<Lab>,
    next_device: &Arc<AtomicUsize>,
    concurrency: usize,
    secs: f64,
    warmup: usize,
    poll: Duration,
) -> anyhow::Result<Level> {
    let mut accounts = Vec::new();
    for _ in 0..concurrency {
        accounts.push(account(&lab.directory).await?);
    }
    let rng = SystemRandom::new();
    for i in 0..warmup {
        let d = &lab.devices[next_device.fetch_add(1, Ordering::Relaxed) % lab.devices.len()];
        attested_order(&accounts[i % concurrency], d, poll, &rng)
            .await
            .context("warm-up order")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Level {
        concurrency,
        ..Level::default()
    }));
    let cpu0 = cpu_seconds();
    let (ca0, client0) = (thread_cpu("ca"), thread_cpu("client"));
    let start = Instant::now();
    let tasks: Vec<_> = accounts
        .into_iter()
        .map(|account| {
            let (lab, next, stop, out) =
                (lab.clone(), next_device.clone(), stop.clone(), out.clone());
            tokio::spawn(async move {
                let rng = SystemRandom::new();
                while !stop.load(Ordering::Relaxed) {
                    let d = &lab.devices[next.fetch_add(1, Ordering::Relaxed) % lab.devices.len()];
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(
                        ORDER_TIMEOUT,
                        attested_order(&account, d, poll, &rng),
                    )
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timeout")));
                    let took = t0.elapsed();
                    let mut o = out.lock().unwrap();
                    match r {
                        Ok(pem) if pem.contains("BEGIN CERTIFICATE") => {
                            o.ok += 1;
                            o.latencies.push(took);
                        }
                        Ok(_) => o.errors.push("no certificate in the download".into()),
                        Err(e) => o.errors.push(format!("{e:#}")),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Orders in flight at the stop signal finish and count: the wall clock runs to the last.
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let mut l = out.lock().unwrap().clone();
    l.wall = wall;
    l.cpu = cpu;
    l.ca_cpu = thread_cpu("ca") - ca0;
    l.client_cpu = thread_cpu("client") - client0;
    Ok(l)
}

/// Single-threaded cost of `TpmVerifier::verify` over pre-built statements (parse apart).
fn verify_cost(lab: &Lab, secs: f64) -> (f64, f64, usize) {
    let rng = SystemRandom::new();
    let verifier = TpmVerifier::with_roots(vec![lab.ak_root.clone()]);
    let samples: Vec<(Vec<u8>, Vec<u8>)> = (0..64)
        .map(|i| {
            let ka = format!("token{i:04}.thumbprint-of-the-account-key-base64url-43chars");
            let (cbor, _) = lab.devices[i % lab.devices.len()].attest(ka.as_bytes(), &rng);
            (cbor, ka.into_bytes())
        })
        .collect();
    let parsed: Vec<_> = samples
        .iter()
        .map(|(c, ka)| (attobj::parse(c).unwrap(), ka.clone()))
        .collect();
    let now = SystemTime::now();
    let time = |f: &mut dyn FnMut(usize)| {
        for i in 0..32 {
            f(i);
        }
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..16 {
                f(n);
                n += 1;
            }
        }
        (start.elapsed().as_secs_f64() * 1e6 / n as f64, n)
    };
    let (verify_us, n) = time(&mut |i| {
        let (att, ka) = &parsed[i % parsed.len()];
        std::hint::black_box(verifier.verify(att, ka, now).unwrap());
    });
    let (parse_verify_us, _) = time(&mut |i| {
        let (cbor, ka) = &samples[i % samples.len()];
        let att = attobj::parse(cbor).unwrap();
        std::hint::black_box(verifier.verify(&att, ka, now).unwrap());
    });
    (verify_us, parse_verify_us, n)
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.server_threads)
        .thread_name("ca")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads)
        .thread_name("client")
        .enable_all()
        .build()?;
    let t_setup = Instant::now();
    let lab = Arc::new(lab(&o, &server_rt));
    eprintln!(
        "setup: CA + {} devices (AK + AK certificate each) in {:.1} s",
        lab.devices.len(),
        t_setup.elapsed().as_secs_f64()
    );

    // The synthetic statement passes the real verifier, and names the device and its key.
    {
        let rng = SystemRandom::new();
        let d = &lab.devices[0];
        let ka = b"sanity-token.sanity-thumbprint";
        let (cbor, key) = d.attest(ka, &rng);
        let att = attobj::parse(&cbor).expect("the synthetic attObj parses");
        let attested = TpmVerifier::with_roots(vec![lab.ak_root.clone()])
            .verify(&att, ka, SystemTime::now())
            .expect("the synthetic tpm attestation verifies");
        assert_eq!(
            attested.public_key_spki,
            p256_spki(key.public_key_raw()),
            "the attested key is the device key"
        );
        let ids: Vec<String> = attested
            .identifiers
            .iter()
            .map(|i| i.acme_value())
            .collect();
        assert!(ids.contains(&d.id), "identifiers {ids:?} name {}", d.id);
        assert!(
            TpmVerifier::with_roots(vec![lab.ak_root.clone()])
                .verify(&att, b"another.key-authorization", SystemTime::now())
                .is_err(),
            "a statement over another key authorization is refused"
        );
        eprintln!("sanity: synthetic tpm attestation verifies (identifiers {ids:?})");
    }

    let (verify_us, parse_verify_us, verify_n) = verify_cost(&lab, o.verify_secs);
    eprintln!("TpmVerifier::verify: {verify_us:.1} µs ({verify_n} runs); parse + verify {parse_verify_us:.1} µs");

    let next_device = Arc::new(AtomicUsize::new(0));
    let mut levels = Vec::new();
    for &c in &o.levels {
        let l = client_rt.block_on(run_level(&lab, &next_device, c, o.secs, o.warmup, o.poll))?;
        eprintln!(
            "C={c}: {} ok, {} errors in {:.2} s: {:.1} orders/s, p50 {:.1} ms, p99 {:.1} ms, CPU {:.1} ms/order (CA threads {:.1}, client threads {:.1})",
            l.ok,
            l.errors.len(),
            l.wall.as_secs_f64(),
            l.per_sec(),
            l.pct_ms(50.0),
            l.pct_ms(99.0),
            l.cpu * 1000.0 / l.ok.max(1) as f64,
            l.ca_cpu * 1000.0 / l.ok.max(1) as f64,
            l.client_cpu * 1000.0 / l.ok.max(1) as f64
        );
        for e in l.errors.iter().take(5) {
            eprintln!("  error: {e}");
        }
        levels.push(l);
    }

    let mut md = String::new();
    md.push_str(&format!(
        "{} active devices; {} s per level (+{} warm-up orders); poll every {} ms; CA runtime {} workers, client runtime {} workers, one process\n\n",
        o.devices,
        o.secs,
        o.warmup,
        o.poll.as_millis(),
        o.server_threads,
        o.client_threads
    ));
    md.push_str("| concurrency | orders | errors | orders/s | p50 ms | p99 ms | CPU ms/order, process | of which CA threads | client threads |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in &levels {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
            l.concurrency,
            l.ok,
            l.errors.len(),
            l.per_sec(),
            l.pct_ms(50.0),
            l.pct_ms(99.0),
            l.cpu * 1000.0 / l.ok.max(1) as f64,
            l.ca_cpu * 1000.0 / l.ok.max(1) as f64,
            l.client_cpu * 1000.0 / l.ok.max(1) as f64
        ));
    }
    md.push_str(&format!(
        "\n`TpmVerifier::verify` alone (single thread, parsed attObj, P-256 AK, 1-certificate x5c): {verify_us:.1} µs/verification; with CBOR parsing {parse_verify_us:.1} µs\n"
    ));
    println!("\n{md}");
    if let Some(path) = &o.out {
        std::fs::write(path, &md)?;
    }
    let failed: usize = levels.iter().map(|l| l.errors.len()).sum();
    if failed > 0 {
        bail!("{failed} orders failed");
    }
    Ok(())
}
