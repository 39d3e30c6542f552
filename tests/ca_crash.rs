//! Crash safety of issuance against the real binary: `kill -9` of `portcullis serve` during a
//! burst of concurrent finalizations, restart on the same data dir, then:
//!
//! - no order is left `processing` (recovery re-issued them from the stored CSR);
//! - every order of the burst is `valid` with its certificate downloadable over ACME (the same
//!   certificate the database holds), or not finalized (`ready`), and a `ready` one can still
//!   be finalized;
//! - an order the client was told is `valid` before the kill keeps the very certificate it
//!   was told about (an issued certificate is never lost);
//! - no serial and no certificate appears twice, no order has two certificates, and the serial
//!   in each certificate is the serial of its row;
//! - every certificate in `ca.db` verifies with `openssl verify` against the CA bundle.
//!
//! The kill lands after a random number (1..=N/2) of finalizations were answered, plus a random
//! 0–500 µs, so it falls inside the burst without any timing assumption; the seed is printed (`CRASH_SEED=<n>` replays it). Several rounds, one CA.

#[path = "../benches/acme/mod.rs"]
mod acme;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use acme::portcullis::{CaOptions, PortcullisCa};
use acme::responder::Responder;
use instant_acme::{Order, OrderStatus};
use portcullis_ca::pki::{pem, Serial};
use x509_parser::prelude::{FromDer, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ROUNDS: usize = 3;
/// Finalizations per burst.
const BURST: usize = 24;
const NAMES: [&str; 4] = [
    "a.crash.test",
    "b.crash.test",
    "c.crash.test",
    "d.crash.test",
];
const POLL: Duration = Duration::from_millis(25);

/// xorshift64*: enough randomness for choosing kill points, and replayable.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A fresh P-256 key's CSR for `name`, made before the burst so that the burst is only
/// finalize requests.
fn csr_for(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[derive(Debug)]
struct DbOrder {
    status: String,
    cert_serial: Option<String>,
}

fn db_orders(ca: &PortcullisCa) -> BTreeMap<i64, DbOrder> {
    let db = rusqlite::Connection::open(ca.db()).unwrap();
    let mut stmt = db
        .prepare("SELECT id, status, cert_serial FROM orders")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                DbOrder {
                    status: r.get(1)?,
                    cert_serial: r.get(2)?,
                },
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows
}

/// (serial, order_id, fingerprint, chain_pem, der) of every certificate row.
type CertRow = (String, Option<i64>, String, String, Option<Vec<u8>>);

fn db_certs(ca: &PortcullisCa) -> Vec<CertRow> {
    let db = rusqlite::Connection::open(ca.db()).unwrap();
    let mut stmt = db
        .prepare("SELECT serial, order_id, fingerprint, chain_pem, der FROM certificates")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows
}

fn order_id(url: &str) -> i64 {
    url.rsplit('/').next().unwrap().parse().unwrap()
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    pem::decode_first(chain_pem, "CERTIFICATE").unwrap()
}

struct BurstOutcome {
    /// Order URL → the certificate URL the client was told about before the kill.
    answered_valid: BTreeMap<String, String>,
    interrupted: usize,
}

/// Finalizes every order at once and kills the CA after `kill_after` answers (+ `spin_us`).
async fn burst_and_kill(
    orders: Vec<(Order, String)>,
    ca: &mut PortcullisCa,
    kill_after: usize,
    spin_us: u64,
) -> BurstOutcome {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (mut order, name) in orders {
        assert_eq!(order.state().status, OrderStatus::Ready);
        let csr = csr_for(&name);
        let tx = tx.clone();
        let url = order.url().to_owned();
        tasks.push(tokio::spawn(async move {
            let result = order
                .finalize_csr(&csr)
                .await
                .map(|()| (order.state().status, order.state().certificate.clone()));
            let _ = tx.send(());
            (url, result)
        }));
    }
    drop(tx);
    for _ in 0..kill_after {
        rx.recv().await.expect("an answer");
    }
    let until = std::time::Instant::now() + Duration::from_micros(spin_us);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
    blocking(|| ca.kill9());

    let mut outcome = BurstOutcome {
        answered_valid: BTreeMap::new(),
        interrupted: 0,
    };
    for t in tasks {
        let (url, result) = t.await.unwrap();
        match result {
            Ok((OrderStatus::Valid, Some(cert))) => {
                outcome.answered_valid.insert(url, cert);
            }
            Ok(other) => panic!("finalize answered {other:?} for {url}"),
            Err(_) => outcome.interrupted += 1,
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_finalizations_loses_nothing_and_issues_nothing_twice() {
    if !acme::require_program("openssl", "version") {
        return;
    }
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("ca_crash: CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let responder = Responder::start(([127, 0, 0, 1], 0).into(), None)
        .await
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("portcullis-crash-")
        .tempdir()
        .unwrap();
    let mut ca = blocking(|| {
        PortcullisCa::start(
            Path::new(BIN),
            dir.path(),
            &CaOptions::new(responder.port(), &NAMES),
        )
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (account, _) = acme::flow::new_account(&ca.directory(), &ca.bundle())
        .await
        .unwrap();

    let mut interrupted_total = 0;
    let mut recovered_total = 0;
    let mut all_urls: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        // Orders made ready (http-01 validated) before the burst.
        let prepared = futures_util::future::join_all((0..BURST).map(|i| {
            let names = vec![NAMES[i % NAMES.len()].to_owned()];
            let (account, responder) = (&account, &responder);
            async move { acme::flow::order_ready(account, responder, &names, POLL).await }
        }))
        .await;
        let orders: Vec<(Order, String)> = prepared
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let (order, _) = r.unwrap_or_else(|e| panic!("{e:#}"));
                (order, NAMES[i % NAMES.len()].to_owned())
            })
            .collect();
        let urls: Vec<(String, String)> = orders
            .iter()
            .map(|(o, name)| (o.url().to_owned(), name.clone()))
            .collect();
        all_urls.extend(urls.iter().map(|(u, _)| u.clone()));

        let kill_after = 1 + rng.below(BURST as u64 / 2) as usize;
        let spin_us = rng.below(500);
        let outcome = burst_and_kill(orders, &mut ca, kill_after, spin_us).await;
        interrupted_total += outcome.interrupted;

        blocking(|| ca.restart()).unwrap_or_else(|e| panic!("restart: {e:#}"));
        let recovered_orders = count_recovered(&ca);
        recovered_total = recovered_orders;
        eprintln!(
            "round {round}: killed after {kill_after} answers + {spin_us} µs; {} answered valid, \
             {} interrupted; orders re-issued by recovery so far: {recovered_orders}",
            outcome.answered_valid.len(),
            outcome.interrupted
        );

        // The database after recovery.
        let orders = db_orders(&ca);
        let stuck: Vec<_> = orders
            .iter()
            .filter(|(_, o)| o.status == "processing")
            .collect();
        assert!(stuck.is_empty(), "orders stuck processing: {stuck:?}");
        for (url, cert_url) in &outcome.answered_valid {
            let o = &orders[&order_id(url)];
            assert_eq!(o.status, "valid", "{url} was answered valid");
            let serial = o
                .cert_serial
                .as_deref()
                .expect("a valid order has a serial");
            assert!(
                cert_url.ends_with(&format!("/{serial}")),
                "{url}: the client was told {cert_url}, the database says {serial}"
            );
        }

        // Over ACME, after the restart (same account; its stale nonce is simply retried).
        for (url, name) in &urls {
            let mut order = account
                .order(url.clone())
                .await
                .expect("order after restart");
            match order.state().status {
                OrderStatus::Valid => {}
                OrderStatus::Ready => {
                    // Not finalized before the kill: it still can be.
                    order
                        .finalize_csr(&csr_for(name))
                        .await
                        .unwrap_or_else(|e| panic!("finalize after restart {url}: {e}"));
                    assert_eq!(order.state().status, OrderStatus::Valid);
                }
                other => panic!("{url} is {other:?} after recovery (it was ready before)"),
            }
            let (chain, _) = acme::flow::download(&mut order, POLL)
                .await
                .unwrap_or_else(|e| panic!("download {url}: {e:#}"));
            let id = order_id(url);
            let row = db_certs(&ca)
                .into_iter()
                .find(|c| c.1 == Some(id))
                .unwrap_or_else(|| panic!("no certificate row for order {id}"));
            assert_eq!(leaf_der(&chain), leaf_der(&row.3), "{url}: served = stored");
        }
    }

    // Across all rounds.
    let orders = db_orders(&ca);
    for url in &all_urls {
        assert_eq!(orders[&order_id(url)].status, "valid");
    }
    let certs = db_certs(&ca);
    let mut serials = BTreeSet::new();
    let mut fingerprints = BTreeSet::new();
    let mut per_order = BTreeMap::new();
    let verify_dir = dir.path().join("verify");
    std::fs::create_dir_all(&verify_dir).unwrap();
    let mut leaves = Vec::new();
    for (serial, order, fingerprint, chain_pem, der) in &certs {
        assert!(serials.insert(serial.clone()), "serial {serial} twice");
        assert!(
            fingerprints.insert(fingerprint.clone()),
            "{fingerprint} twice"
        );
        if let Some(o) = order {
            *per_order.entry(*o).or_insert(0) += 1;
        }
        let leaf = leaf_der(chain_pem);
        if let Some(der) = der {
            assert_eq!(der, &leaf, "{serial}: der column = leaf of chain_pem");
        }
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        assert_eq!(
            &Serial::from_be_bytes(cert.raw_serial()).to_hex(),
            serial,
            "the row's serial is the certificate's"
        );
        let path = verify_dir.join(format!("{serial}.pem"));
        std::fs::write(&path, pem::encode("CERTIFICATE", &leaf)).unwrap();
        leaves.push(path);
    }
    let twice: Vec<_> = per_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "orders with two certificates: {twice:?}");
    assert_eq!(
        per_order.len(),
        all_urls.len(),
        "one certificate per finalized order"
    );
    for leaf in &leaves {
        acme::openssl_verify(&ca.bundle(), &ca.intermediate(), leaf, None)
            .unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
    }
    eprintln!(
        "ca_crash: {} certificates verified, {interrupted_total} finalizations interrupted by \
         kill -9, {recovered_total} orders re-issued by recovery",
        leaves.len()
    );
    // Every kill fell inside a burst: some finalizations never got their answer.
    assert!(
        interrupted_total > 0,
        "no finalization was in flight at any kill: the test did not test a crash"
    );
}

/// Orders the restarts' recovery re-issued (from the `recovery` field of the warning line).
fn count_recovered(ca: &PortcullisCa) -> usize {
    ca.logged("the CA finished work a previous run left unfinished")
        .iter()
        .map(|v| {
            let text = v["fields"]["recovery"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // `Recovery { orders_issued: [3, 4], ... }`
            text.split("orders_issued: [")
                .nth(1)
                .and_then(|s| s.split(']').next())
                .map_or(0, |ids| {
                    ids.split(',').filter(|s| !s.trim().is_empty()).count()
                })
        })
        .sum()
}
