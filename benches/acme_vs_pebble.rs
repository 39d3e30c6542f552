//! The ACME CA against Pebble: orders/s end to end (newOrder → http-01 → finalize →
//! download) with ONE Rust client (instant-acme, N concurrent orders, one account) on loopback,
//! against the real `portcullis serve` binary and against Pebble in the same run; plus the raw
//! crypto ceiling on this machine (ring ECDSA P-256 sign/verify, and what issuance costs).
//!
//! ```text
//! cargo bench --bench acme_vs_pebble                           # 300 orders, C=16, 3 rounds
//! cargo bench --bench acme_vs_pebble -- --orders 500 --concurrency 32 --out /tmp/acme.md
//! ```
//!
//! Options:
//! - `--orders N`: measured orders per server and round (300)
//! - `--concurrency N`: orders in flight at once (16)
//! - `--rounds N`: rounds; the first server alternates each round; best and median reported (3)
//! - `--warmup N`: unmeasured orders per server before the first round (20)
//! - `--poll-ms N`: the client refreshes a pending/processing order every N ms, whatever
//!   `Retry-After` says, so that both servers are timed by their work (10)
//! - `--client-threads N`: Tokio workers of the client (2)
//! - `--crypto-secs S`: time per crypto micro-benchmark (1)
//! - `--portcullis PATH` / `PORTCULLIS_BIN`: the binary (default: the one Cargo builds for
//!   this bench, release settings)
//! - `--only portcullis|pebble`, `--keep-dir`, `--out FILE` (also write the markdown there)
//!
//! Fairness: both servers validate http-01 for real against the same in-process responder
//! (Pebble: `PEBBLE_VA_NOSLEEP=1`, `PEBBLE_WFE_NONCEREJECT=0`, `PEBBLE_AUTHZREUSE=0`, never
//! `PEBBLE_VA_ALWAYS_VALID`; its DNS is `pebble-challtestsrv`, every name → 127.0.0.1);
//! Portcullis logs at `warn` (Pebble logs every request to a file; it cannot be silenced).

#[path = "acme/mod.rs"]
mod acme;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use acme::load::LoadResult;
use acme::pebble::Pebble;
use acme::portcullis::{CaOptions, PortcullisCa};
use acme::responder::Responder;
use anyhow::{anyhow, bail, Context};

#[derive(Debug, Clone)]
struct Options {
    orders: usize,
    concurrency: usize,
    rounds: usize,
    warmup: usize,
    poll: Duration,
    client_threads: usize,
    crypto_secs: f64,
    portcullis: PathBuf,
    only: Option<String>,
    keep_dir: bool,
    out: Option<PathBuf>,
}

fn parse() -> anyhow::Result<Options> {
    let mut o = Options {
        orders: 300,
        concurrency: 16,
        rounds: 3,
        warmup: 20,
        poll: Duration::from_millis(10),
        client_threads: 2,
        crypto_secs: 1.0,
        portcullis: std::env::var_os("PORTCULLIS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))),
        only: None,
        keep_dir: false,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--orders" => o.orders = val()?.parse()?,
            "--concurrency" => o.concurrency = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--poll-ms" => o.poll = Duration::from_millis(val()?.parse()?),
            "--client-threads" => o.client_threads = val()?.parse()?,
            "--crypto-secs" => o.crypto_secs = val()?.parse()?,
            "--portcullis" => o.portcullis = val()?.into(),
            "--only" => o.only = Some(val()?),
            "--keep-dir" => o.keep_dir = true,
            "--out" => o.out = Some(val()?.into()),
            other if other.starts_with("--") => bail!("unknown option {other}"),
            _ => {} // a filter argument from `cargo bench NAME`
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acme_vs_pebble: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const SERVERS: [&str; 2] = ["portcullis", "pebble"];

fn run() -> anyhow::Result<()> {
    let opts = parse()?;
    let dir = tempfile::Builder::new().prefix("acme-bench-").tempdir()?;
    let mut report = String::new();
    report.push_str(&machine_section(&opts));

    eprintln!("crypto ceiling ({} s per row)…", opts.crypto_secs);
    report.push_str(&crypto_section(
        opts.crypto_secs,
        &dir.path().join("crypto"),
    )?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads.max(1))
        .enable_all()
        .build()?;
    let results = rt.block_on(orders_section(&opts, dir.path()))?;
    report.push_str(&results);

    println!("{report}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    if opts.keep_dir {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn machine_section(opts: &Options) -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "### Run\n\n- machine: {} CPUs ({}), load average at start: {}\n- pebble: {}; \
         portcullis: `{}`\n- {} measured orders per server and round, {} in flight, {} rounds \
         (first server alternates), {} warm-up orders, order refresh every {} ms, client: \
         instant-acme 0.8 on {} Tokio threads, one account, P-256 certificate keys\n\n",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("dpkg-query -W -f='${Version}' pebble 2>/dev/null"),
        opts.portcullis.display(),
        opts.orders,
        opts.concurrency,
        opts.rounds,
        opts.warmup,
        opts.poll.as_millis(),
        opts.client_threads,
    )
}

/// Operations per second of `f`, single thread, for about `secs`.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn crypto_section(secs: f64, dir: &Path) -> anyhow::Result<String> {
    use portcullis_ca::pki::{
        Authority, CaPaths, CertTemplate, Csr, InitOptions, IssueRequest, LifetimePolicy,
    };
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
        ECDSA_P256_SHA256_FIXED_SIGNING,
    };
    let rng = ring::rand::SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| anyhow!("{e}"))?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| anyhow!("{e}"))?;
    // About the size of a JWS signing input (protected header + payload, base64url).
    let msg = [0x5au8; 400];
    let sig = key.sign(&rng, &msg).map_err(|e| anyhow!("{e}"))?;
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());

    let sign = rate(secs, || {
        key.sign(&rng, &msg).unwrap();
    });
    let verify = rate(secs, || public.verify(&msg, sig.as_ref()).unwrap());
    let keygen = rate(secs, || {
        EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    });

    // The CA's issuance path: parse + verify the CSR, then build and sign the certificate.
    let paths = CaPaths::in_dir(&dir.join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemTime::now())?;
    let pki = Authority::load(&paths, LifetimePolicy::default())?;
    let csr_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["n0.bench.test".to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr_der = params.serialize_request(&csr_key)?.der().to_vec();
    let csr = Csr::from_der(&csr_der)?;
    let template = CertTemplate::workload();
    let names = vec!["n0.bench.test".to_owned()];
    let issue = rate(secs, || {
        pki.issue(
            &IssueRequest {
                spki_der: &csr.spki_der,
                template: &template,
                dns_names: &names,
                ip_addresses: &[],
                uris: &[],
                not_before: None,
                not_after: None,
            },
            SystemTime::now(),
        )
        .unwrap();
    });
    let csr_check = rate(secs, || {
        Csr::from_der(&csr_der).unwrap();
    });
    let row = |what: &str, per_sec: f64, note: &str| {
        format!(
            "| {what} | {per_sec:.0} | {:.1} µs | {note} |\n",
            1e6 / per_sec
        )
    };
    Ok(format!(
        "### Crypto ceiling (one thread, this machine)\n\n\
         | operation | per second | each | per ACME order |\n|---|---|---|---|\n{}{}{}{}{}\n",
        row(
            "ring ECDSA P-256 sign (400 B message)",
            sign,
            "server: 1 (the certificate) + TLS handshakes of new connections"
        ),
        row(
            "ring ECDSA P-256 verify (400 B message)",
            verify,
            "server: 1 per JWS request (~6 per order here) + the CSR"
        ),
        row(
            "ring ECDSA P-256 key generation",
            keygen,
            "client: the certificate key (1)"
        ),
        row(
            "Portcullis `Authority::issue` (build + sign a leaf, P-256 CA)",
            issue,
            "server: 1"
        ),
        row(
            "Portcullis `Csr::from_der` (parse + verify a P-256 CSR)",
            csr_check,
            "server: 1"
        ),
    ))
}

async fn orders_section(opts: &Options, dir: &Path) -> anyhow::Result<String> {
    let responder = Arc::new(Responder::start(([127, 0, 0, 1], 0).into(), None).await?);
    let names: Vec<String> = (0..64).map(|i| format!("n{i}.bench.test")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let wanted = |s: &str| opts.only.as_deref().is_none_or(|o| o == s);

    let ca_dir = dir.join("portcullis");
    std::fs::create_dir_all(&ca_dir)?;
    let mut ca_opts = CaOptions::new(responder.port(), &name_refs);
    ca_opts.log_level = "warn,portcullis::serve=info".into();
    let ca = if wanted("portcullis") {
        let bin = opts.portcullis.clone();
        let dir = ca_dir.clone();
        Some(
            tokio::task::spawn_blocking(move || PortcullisCa::start(&bin, &dir, &ca_opts))
                .await??,
        )
    } else {
        None
    };
    let pebble = if wanted("pebble") {
        let dir = dir.join("pebble");
        let port = responder.port();
        Some(tokio::task::spawn_blocking(move || Pebble::start(&dir, port)).await??)
    } else {
        None
    };

    struct Server {
        name: &'static str,
        account: instant_acme::Account,
        pid: u32,
        rounds: Vec<LoadResult>,
    }
    let mut servers = Vec::new();
    if let Some(ca) = &ca {
        let (account, _) = acme::flow::new_account(&ca.directory(), &ca.bundle()).await?;
        servers.push(Server {
            name: SERVERS[0],
            account,
            pid: ca.pid().context("portcullis is not running")?,
            rounds: Vec::new(),
        });
    }
    if let Some(p) = &pebble {
        let (account, _) = acme::flow::new_account(&p.directory, &p.tls_root).await?;
        servers.push(Server {
            name: SERVERS[1],
            account,
            pid: p.pid(),
            rounds: Vec::new(),
        });
    }
    for s in &servers {
        eprintln!("warm-up: {} orders against {}", opts.warmup, s.name);
        let r = acme::load::run(
            &s.account,
            &responder,
            &names,
            opts.warmup,
            opts.concurrency,
            opts.poll,
            Some(s.pid),
        )
        .await;
        if !r.errors.is_empty() {
            bail!(
                "{}: warm-up failed: {:?}",
                s.name,
                &r.errors[..r.errors.len().min(3)]
            );
        }
    }
    for round in 0..opts.rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let s = &mut servers[i];
            let r = acme::load::run(
                &s.account,
                &responder,
                &names,
                opts.orders,
                opts.concurrency,
                opts.poll,
                Some(s.pid),
            )
            .await;
            eprintln!(
                "round {}: {:<10} {:>7.1} orders/s  p50 {:>6.1} ms  p99 {:>6.1} ms  server CPU \
                 {:>5.2} ms/order  errors {}",
                round + 1,
                s.name,
                r.orders_per_sec(),
                r.percentile_ms(50.0),
                r.percentile_ms(99.0),
                r.server_cpu_ms_per_order(),
                r.errors.len()
            );
            for e in r.errors.iter().take(3) {
                eprintln!("    error: {e}");
            }
            s.rounds.push(r);
        }
    }

    let mut out = String::from(
        "### Orders/s end to end (newOrder → http-01 → finalize → download)\n\n\
         | server | orders/s best | orders/s median | every round | p50 ms (best round) | \
         p99 ms | server CPU ms/order | client CPU ms/order | polls/order | http-01 fetches/order \
         | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut best_by_server = Vec::new();
    for s in &servers {
        let mut rates: Vec<f64> = s.rounds.iter().map(LoadResult::orders_per_sec).collect();
        let best = s
            .rounds
            .iter()
            .max_by(|a, b| a.orders_per_sec().total_cmp(&b.orders_per_sec()))
            .context("no round")?;
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let every: Vec<String> = s
            .rounds
            .iter()
            .map(|r| format!("{:.1}", r.orders_per_sec()))
            .collect();
        let errors: usize = s.rounds.iter().map(|r| r.errors.len()).sum();
        out.push_str(&format!(
            "| {} | **{:.1}** | {:.1} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {} |\n",
            s.name,
            best.orders_per_sec(),
            median,
            every.join(", "),
            best.percentile_ms(50.0),
            best.percentile_ms(99.0),
            best.server_cpu_ms_per_order(),
            best.client_cpu * 1000.0 / best.ok.max(1) as f64,
            best.polls as f64 / best.ok.max(1) as f64,
            best.http01_fetches as f64 / best.ok.max(1) as f64,
            errors
        ));
        best_by_server.push((s.name, best.orders_per_sec(), median));
    }
    if let [(_, p_best, p_med), (_, q_best, q_med)] = best_by_server[..] {
        out.push_str(&format!(
            "\nPortcullis / Pebble: **{:.2}×** (best rounds), {:.2}× (medians).\n",
            p_best / q_best,
            p_med / q_med
        ));
    }
    let (served, missed) = responder.counts();
    out.push_str(&format!(
        "\nhttp-01 requests the challenge responder answered in the whole run: {served} with a \
         key authorization, {missed} not found.\n"
    ));
    drop(pebble);
    drop(ca);
    Ok(out)
}
