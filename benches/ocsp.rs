//! OCSP responder throughput (issue 5): responses/s of the CA's responder, in process and over
//! plain HTTP on loopback, with the breakdown of one response (parse, store lookup, signing).
//!
//! ```text
//! cargo bench --bench ocsp                          # 3 s per measurement, 16 connections
//! cargo bench --bench ocsp -- --secs 5 --concurrency 32 --certs 100000
//! ```
//!
//! Every response is signed per request (the nonce makes responses unique), by the delegated
//! responder's ECDSA P-256 key, after a primary-key lookup in the CA's SQLite store. Requests
//! ask about a random serial among `--certs` recorded certificates, a tenth of them revoked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_ca::acme::AcmeConfig;
use portcullis_ca::clock::SystemClock;
use portcullis_ca::revocation::{der, ocsp};
use portcullis_ca::service::{Ca, CaSettings};
use portcullis_ca::store::{AcmeStore, NewCert};
use ring::digest;
use x509_parser::prelude::FromDer;

struct Options {
    secs: f64,
    concurrency: usize,
    certs: usize,
}

fn options() -> Options {
    let mut o = Options {
        secs: 3.0,
        concurrency: 16,
        certs: 10_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--secs" => o.secs = value.parse().expect("--secs S"),
            "--concurrency" => o.concurrency = value.parse().expect("--concurrency N"),
            "--certs" => o.certs = value.parse().expect("--certs N"),
            // `cargo bench` passes --bench; nothing else is known.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// A SHA-1 OCSPRequest for `serial` with a 16-octet nonce, as `openssl ocsp` sends it.
fn request(name_hash: &[u8], key_hash: &[u8], serial: &[u8], nonce: u64) -> Vec<u8> {
    let cert_id = der::sequence(&[
        &der::sequence(&[
            &der::tlv(der::OID, &[0x2b, 14, 3, 2, 26]),
            &der::tlv(der::NULL, &[]),
        ]),
        &der::tlv(der::OCTET_STRING, name_hash),
        &der::tlv(der::OCTET_STRING, key_hash),
        &der::unsigned_integer(der::INTEGER, serial),
    ]);
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&nonce.to_be_bytes());
    let ext = der::sequence(&[
        &der::tlv(der::OID, &[0x2b, 6, 1, 5, 5, 7, 48, 1, 2]),
        &der::tlv(der::OCTET_STRING, &der::tlv(der::OCTET_STRING, &n)),
    ]);
    let tbs = der::sequence(&[
        &der::sequence(&[&der::sequence(&[&cert_id])]),
        &der::tlv(der::context(2), &der::sequence(&[&ext])),
    ]);
    der::sequence(&[&tbs])
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = CaSettings::new(dir.path(), AcmeConfig::new("https://127.0.0.1:1"));
    let (ca, _) = rt
        .block_on(Ca::open(settings, Arc::new(SystemClock)))
        .unwrap();

    // Recorded certificates (rows only: the responder never reads the DER).
    let mut serials = Vec::with_capacity(o.certs);
    for i in 0..o.certs {
        let serial = {
            let mut s = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            s &= !(1u128 << 127);
            s.to_be_bytes().to_vec()
        };
        let hex = hex::encode(&serial);
        ca.store
            .record_certificate(&NewCert {
                serial: &hex,
                fingerprint: &hex,
                der: b"",
                chain_pem: "",
                not_before: 0,
                not_after: i64::MAX / 2,
                device_id: None,
            })
            .unwrap();
        if i % 10 == 0 {
            ca.store.revoke_certificate(&hex, 6, 1_800_000_000).unwrap();
        }
        serials.push(serial);
    }
    let (_, int) =
        x509_parser::certificate::X509Certificate::from_der(ca.pki.intermediate_der()).unwrap();
    let sha1 = |b: &[u8]| {
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, b)
            .as_ref()
            .to_vec()
    };
    let name_hash = sha1(int.subject().as_raw());
    let key_hash = sha1(&int.public_key().subject_public_key.data);
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..1024u64)
            .map(|i| {
                request(
                    &name_hash,
                    &key_hash,
                    &serials[(i as usize * 7919) % serials.len()],
                    i,
                )
            })
            .collect(),
    );
    let d = Duration::from_secs_f64(o.secs);
    let rev = ca.revocation.clone();
    let check = rev.respond(&requests[0]);
    assert_eq!(
        &check[..7],
        &[0x30, 0x82, check[2], check[3], 0x0a, 1, 0],
        "successful"
    );

    // In process, one thread: the cost of one response and its parts.
    let time = |f: &mut dyn FnMut(usize)| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            for _ in 0..64 {
                f(n as usize);
                n += 1;
            }
        }
        (n, start.elapsed())
    };
    let (n_parse, t_parse) = time(&mut |i| {
        std::hint::black_box(ocsp::parse_request(&requests[i % requests.len()]).unwrap());
    });
    let (n_lookup, t_lookup) = time(&mut |i| {
        let key = hex::encode(&serials[i % serials.len()]);
        std::hint::black_box(ca.store.certificate_status(&key).unwrap());
    });
    let (n_full, t_full) = time(&mut |i| {
        std::hint::black_box(rev.respond(&requests[i % requests.len()]));
    });

    // Over plain HTTP on loopback: POST /ocsp, keep-alive, `concurrency` connections.
    let (http_n, http_t, lat) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(portcullis_ca::revocation::serve_http(
            listener,
            rev.plain_router(),
            std::future::pending(),
        ));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(o.concurrency)
                .build_http::<Full<Bytes>>();
        let uri: http::Uri = format!("http://{addr}/ocsp").parse().unwrap();
        let post = move |body: Vec<u8>| {
            http::Request::post(uri.clone())
                .header("content-type", "application/ocsp-request")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        // Warm the pool.
        for r in requests.iter().take(o.concurrency) {
            let resp = client.request(post(r.clone())).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..o.concurrency {
            let (client, stop, done, requests) =
                (client.clone(), stop.clone(), done.clone(), requests.clone());
            let post = post.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let resp = client
                        .request(post(requests[i % requests.len()].clone()))
                        .await
                        .unwrap();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert!(body.len() > 100, "a signed response");
                    lat.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    i += o.concurrency;
                }
                lat
            }));
        }
        tokio::time::sleep(d).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat.sort();
        (done.load(Ordering::Relaxed), elapsed, lat)
    });
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];

    let us = |n: u64, t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    println!("## OCSP responder — {}", time::OffsetDateTime::now_utc());
    println!();
    println!(
        "{} recorded certificates (1 in 10 revoked), SHA-1 CertIDs with a 16-octet nonce, \
         responder key ECDSA P-256, store SQLite (WAL) on disk; {} s per measurement.",
        o.certs, o.secs
    );
    println!();
    println!("| measurement | per second | µs each |");
    println!("|---|---:|---:|");
    println!(
        "| parse request (DER reader) | {:.0} | {:.2} |",
        rate(n_parse, t_parse),
        us(n_parse, t_parse)
    );
    println!(
        "| store lookup (`certificate_status`) | {:.0} | {:.2} |",
        rate(n_lookup, t_lookup),
        us(n_lookup, t_lookup)
    );
    println!(
        "| whole response in process (parse + lookup + sign), 1 thread | {:.0} | {:.2} |",
        rate(n_full, t_full),
        us(n_full, t_full)
    );
    println!(
        "| HTTP POST /ocsp, loopback, {} keep-alive connections, 2 Tokio workers (client in the same process) | {:.0} | p50 {:.0} / p99 {:.0} latency |",
        o.concurrency,
        rate(http_n, http_t),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
}
