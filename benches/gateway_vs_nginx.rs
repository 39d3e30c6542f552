//! Portcullis vs nginx: keep-alive and new-connection (full mTLS handshake) throughput and
//! latency, same certificates, same upstream, same load client, one run.
//!
//! ```text
//! cargo bench --bench gateway_vs_nginx          # defaults: W=1, C=32, D=10 s, 3 rounds, pinned
//! cargo bench --bench gateway_vs_nginx -- --workers 2 --connections 64 --duration 20
//! ```
//!
//! Options (flag, or environment variable):
//! - `--workers N` / `BENCH_WORKERS`: Portcullis `worker_threads` = nginx `worker_processes` (1)
//! - `--connections N` / `BENCH_CONNECTIONS`: concurrent connections (32)
//! - `--duration SECS` / `BENCH_DURATION`: per scenario and proxy, warm-up included (10)
//! - `--warmup SECS` / `BENCH_WARMUP`: not measured, at most half the duration (1)
//! - `--client-threads N` / `BENCH_CLIENT_THREADS`: load client tokio workers (1)
//! - `--rounds N` / `BENCH_ROUNDS`: repeat every scenario N times per proxy, alternating which
//!   proxy goes first, and report the best round (3; a run takes about 3.5 minutes)
//! - `--no-pin`: do not pin the proxy to CPUs 1..=workers and the load client + upstream to
//!   CPU 0 (pinning is the default: it gives the proxy dedicated cores and steadies the rounds)
//! - `--no-logging-variant`: skip the audit/access-log-to-file scenario
//! - `--only keep-alive|new-connection`
//! - `--identity-headers LIST`: Portcullis' route `identity_headers`, comma-separated
//!   (`plain,assertion`, the realistic default; `""` for none, to measure what identity costs)
//! - `--keep-dir`: keep the temp dir with configs, certificates and logs
//! - `--out FILE`: also write the markdown report there
//! - `--portcullis PATH` / `PORTCULLIS_BIN`: the binary to measure. Default: the `portcullis`
//!   binary Cargo builds for this bench with the `bench` profile (= release settings), via
//!   `CARGO_BIN_EXE_portcullis`, which Cargo sets for benchmarks too; it is the same file as
//!   `target/release/portcullis` from `cargo build --release`.
//! - `NGINX_BIN`: nginx to run (default: `nginx` on PATH, then /usr/sbin/nginx).
//!
//! Exit status: 0 when the run completed, whatever the figures (the targets are printed as
//! met / NOT met, so that a slow result is recorded rather than hidden); 1 when it could not run.

#[path = "harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use harness::client::Mode;
use harness::Options;

/// The issue's targets (issue 2, "Benchmark"): Portcullis requests/s over nginx requests/s.
const TARGET_KEEPALIVE: f64 = 1.3;
const TARGET_NEW_CONNECTION: f64 = 1.2;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway_vs_nginx: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nginx = harness::nginx::find().ok_or_else(|| {
        anyhow::anyhow!("nginx not found (apt-get install -y nginx, or set NGINX_BIN)")
    })?;
    let portcullis = match flag(&args, "--portcullis").or_else(|| env("PORTCULLIS_BIN")) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_portcullis")),
    };
    if !portcullis.is_file() {
        anyhow::bail!(
            "{} does not exist: run `cargo build --release` or pass --portcullis PATH",
            portcullis.display()
        );
    }
    let mut opts = Options::new(portcullis, nginx);
    opts.pin = !args.iter().any(|a| a == "--no-pin");
    // One round on a shared 2-core box can be off by half when a neighbour compiles; the best
    // of three, with every round listed, is much steadier.
    opts.rounds = 3;
    if let Some(n) = number(&args, "--workers", "BENCH_WORKERS")? {
        opts.workers = n as usize;
    }
    if let Some(n) = number(&args, "--connections", "BENCH_CONNECTIONS")? {
        opts.connections = n as usize;
    }
    if let Some(n) = number(&args, "--duration", "BENCH_DURATION")? {
        opts.duration = Duration::from_secs_f64(n);
    }
    if let Some(n) = number(&args, "--warmup", "BENCH_WARMUP")? {
        opts.warmup = Duration::from_secs_f64(n);
    }
    if let Some(n) = number(&args, "--client-threads", "BENCH_CLIENT_THREADS")? {
        opts.client_threads = n as usize;
    }
    if let Some(n) = number(&args, "--rounds", "BENCH_ROUNDS")? {
        opts.rounds = n as usize;
    }
    if args.iter().any(|a| a == "--no-logging-variant") {
        opts.logging_variant = false;
    }
    if let Some(list) = flag(&args, "--identity-headers") {
        opts.identity_headers = list
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if args.iter().any(|a| a == "--keep-dir") {
        opts.keep_dir = true;
    }
    match flag(&args, "--only").as_deref() {
        None => {}
        Some("keep-alive") => opts.modes = vec![Mode::KeepAlive],
        Some("new-connection") => opts.modes = vec![Mode::NewConnection],
        Some(other) => anyhow::bail!("--only {other}: expected keep-alive or new-connection"),
    }
    if opts.workers == 0 || opts.connections == 0 || opts.duration.is_zero() {
        anyhow::bail!("--workers, --connections and --duration must be positive");
    }

    let report = harness::run(&opts)?;
    let mut text = report.to_markdown();
    text.push('\n');
    text.push_str("Targets (issue 2):\n");
    for row in &report.rows {
        if row.scenario.logging {
            continue;
        }
        let target = match row.scenario.mode {
            Mode::KeepAlive => TARGET_KEEPALIVE,
            Mode::NewConnection => TARGET_NEW_CONNECTION,
        };
        // Met only if both the best-round and the median-round ratio reach the target, so
        // that neither a lucky round nor an unlucky one decides.
        let verdict = match (row.ratio(), row.ratio_median()) {
            (Some(best), Some(median)) => {
                let met = best >= target && median >= target;
                format!(
                    "{best:.2}× best round, {median:.2}× median — {}",
                    if met { "met" } else { "NOT met" }
                )
            }
            _ => "no nginx figure — NOT measured".into(),
        };
        let errors = row.portcullis.phase.error_count() + row.nginx.phase.error_count();
        let caveat = if errors > 0 {
            format!(" ({errors} errors: see above)")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "- {}: ≥ {target}× nginx → {verdict}{caveat}\n",
            row.scenario.label()
        ));
    }
    print!("{text}");
    if let Some(out) = flag(&args, "--out") {
        std::fs::write(&out, &text).map_err(|e| anyhow::anyhow!("--out {out}: {e}"))?;
    }
    Ok(())
}

/// `--name VALUE` or `--name=VALUE`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A positive number from a flag, else the environment; a malformed one is an error, not a
/// silent default.
fn number(args: &[String], name: &str, var: &str) -> anyhow::Result<Option<f64>> {
    let Some(raw) = flag(args, name).or_else(|| env(var)) else {
        return Ok(None);
    };
    match raw.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
        _ => anyhow::bail!("{name} / {var}: `{raw}` is not a non-negative number"),
    }
}
