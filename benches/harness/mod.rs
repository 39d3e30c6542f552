//! Load harness: Portcullis against nginx, one after the other, in one run, with the same
//! certificates, the same upstream and the same load client.
//!
//! Used by `benches/gateway_vs_nginx.rs` (the real figures, release binary) and by
//! `tests/bench_smoke.rs` (about a second per scenario against the debug binary, so that CI
//! proves the benchmark still works; it asserts no figure).
//!
//! One run:
//! 1. a dev PKI (`portcullis::devpki`) in a temp dir: root + issuing CA, a server certificate
//!    for localhost/127.0.0.1, one active device certificate and an inventory listing it;
//! 2. one upstream (`upstream.rs`), shared;
//! 3. per round and variant (audit/access log off, then to a file): Portcullis and nginx one
//!    after the other (alternating which goes first), each with `workers` worker
//!    threads/processes, optionally pinned, each measured in every mode of `client.rs`;
//! 4. a `Report` (`report.rs`) with requests/s (best and every round), latency percentiles,
//!    errors, and the CPU used by the proxy, the harness and everything else.

#![allow(dead_code)] // Two crates include this module and each uses a different subset.

pub mod client;
pub mod gateway;
pub mod nginx;
pub mod pki;
pub mod report;
pub mod sys;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use client::{ClientTls, Mode, PhaseResult, PhaseSpec};
use sys::{CpuSampler, CpuUse, Machine};
use upstream::{SeenSnapshot, Upstream};

pub use report::Report;

#[derive(Debug, Clone)]
pub struct Options {
    /// The `portcullis` binary to run.
    pub portcullis_bin: PathBuf,
    pub nginx_bin: PathBuf,
    /// Portcullis `worker_threads` and nginx `worker_processes`.
    pub workers: usize,
    /// Concurrent connections (keep-alive) or concurrent connect loops (new connection).
    pub connections: usize,
    /// Per scenario and proxy, warm-up included.
    pub duration: Duration,
    pub warmup: Duration,
    /// Tokio worker threads of the load client.
    pub client_threads: usize,
    /// Every scenario is run this many times per proxy, alternating which proxy goes first;
    /// the report shows the best round and every round's figure.
    pub rounds: usize,
    pub modes: Vec<Mode>,
    /// Also run keep-alive with Portcullis' audit sink and nginx's access log to a file.
    pub logging_variant: bool,
    /// Portcullis' route `identity_headers`. Default: plain + assertion, the realistic
    /// configuration; other sets are for finding out what the identity work costs.
    pub identity_headers: Vec<String>,
    /// Pin the proxy to CPUs 1..=workers and the load client + upstream to CPU 0, so that
    /// the proxy has dedicated cores and the scheduler's placement of three busy parties on a
    /// small box does not vary from round to round. Ignored when there are not enough CPUs.
    pub pin: bool,
    /// Keep the temp dir (configs, logs, certificates) and say where it is.
    pub keep_dir: bool,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Options {
    /// Defaults for a 2-core box: one proxy worker leaves the other core to the load client
    /// and the upstream, which both proxies share alike.
    pub fn new(portcullis_bin: PathBuf, nginx_bin: PathBuf) -> Self {
        Self {
            portcullis_bin,
            nginx_bin,
            workers: 1,
            connections: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            client_threads: 1,
            rounds: 1,
            pin: false,
            identity_headers: vec!["plain".into(), "assertion".into()],
            modes: vec![Mode::KeepAlive, Mode::NewConnection],
            logging_variant: true,
            keep_dir: false,
            progress: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Portcullis,
    Nginx,
}

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Portcullis => "portcullis",
            Proxy::Nginx => "nginx",
        }
    }
}

/// One proxy, one scenario.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub phase: PhaseResult,
    pub cpu: CpuUse,
    /// What the upstream received during the phase.
    pub upstream: SeenSnapshot,
    /// Lines the proxy logged (warn or worse) by the end of the phase, cumulative per process.
    pub proxy_log_lines: usize,
}

impl Measurement {
    /// Proxy CPU time per successful request, in microseconds: the cost figure that does not
    /// depend on whether the client or a neighbour was the bottleneck.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        (self.phase.ok_total > 0).then(|| self.cpu.proxy_secs * 1e6 / self.phase.ok_total as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub mode: Mode,
    /// Audit sink / access log to a file instead of off.
    pub logging: bool,
}

impl Scenario {
    pub fn label(&self) -> String {
        if self.logging {
            format!("{}, audit/access log to file", self.mode.label())
        } else {
            self.mode.label().to_owned()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    /// The best round by requests/s (with one round, that round).
    pub portcullis: Measurement,
    pub nginx: Measurement,
    /// (requests/s, CPU of everything else on the machine) of every round, in run order, to
    /// show the spread and whether a neighbour caused it.
    pub portcullis_rounds: Vec<(f64, f64)>,
    pub nginx_rounds: Vec<(f64, f64)>,
}

/// The measurement with the most requests/s, whole, so that its latencies and CPU figures
/// belong to the same run as its throughput. Best-of rather than median because interference
/// on a shared box (neighbours' builds, hypervisor steal) only ever lowers a proxy's figure:
/// the best round is the one closest to what the proxy can do. Every round stays in the report
/// with the CPU others used meanwhile.
fn best(ms: Vec<Measurement>) -> Option<Measurement> {
    ms.into_iter().max_by(|a, b| {
        a.phase
            .requests_per_sec()
            .total_cmp(&b.phase.requests_per_sec())
    })
}

/// The modes a variant measures: the logging variant keep-alive only, because that is where
/// a per-request cost such as an audit line shows; a handshake dwarfs it.
fn variant_modes(opts: &Options, logging: bool) -> Vec<Mode> {
    opts.modes
        .iter()
        .copied()
        .filter(|m| !logging || *m == Mode::KeepAlive)
        .collect()
}

/// Restores the calling thread's CPU affinity on drop.
struct RestoreAffinity(libc::cpu_set_t);

impl Drop for RestoreAffinity {
    fn drop(&mut self) {
        sys::restore_affinity(&self.0);
    }
}

/// Starts one proxy with its own directory, listen port and (for the logging variant) log file.
#[allow(clippy::too_many_arguments)]
fn start_proxy(
    proxy: Proxy,
    logging: bool,
    round: usize,
    dir: &std::path::Path,
    opts: &Options,
    pki: &pki::BenchPki,
    upstream: &Upstream,
    cpus: Option<&[usize]>,
) -> anyhow::Result<(Box<dyn ProxyProcess>, SocketAddr)> {
    let tag = if logging { "log" } else { "nolog" };
    let dir = dir.join(format!("{}-{tag}-{round}", proxy.name()));
    let listen = sys::free_port()?;
    let process: Box<dyn ProxyProcess> = match proxy {
        Proxy::Portcullis => {
            let audit_file = dir.join("audit.jsonl");
            Box::new(gateway::Gateway::start(&gateway::GatewaySpec {
                bin: &opts.portcullis_bin,
                dir: &dir,
                listen,
                admin: sys::free_port()?,
                workers: opts.workers,
                upstream: upstream.addr,
                server_chain: &pki.server_chain,
                server_key: &pki.server_key,
                // The root only, as a deployment would configure it: with the issuing CA as
                // an anchor too, webpki could stop one signature earlier than nginx, which
                // always builds the chain up to the self-signed root.
                trust_roots: &pki.root_cert,
                inventory: &pki.inventory,
                audit_file: logging.then_some(audit_file.as_path()),
                cpus,
                identity_headers: &opts.identity_headers,
            })?)
        }
        Proxy::Nginx => {
            let access_log = dir.join("access.log");
            Box::new(nginx::Nginx::start(&nginx::NginxSpec {
                bin: &opts.nginx_bin,
                dir: &dir,
                listen,
                workers: opts.workers,
                upstream: upstream.addr,
                server_chain: &pki.server_chain,
                server_key: &pki.server_key,
                client_ca: &pki.ca_bundle,
                access_log: logging.then_some(access_log.as_path()),
                cpus,
            })?)
        }
    };
    Ok((process, listen))
}

/// Runs everything; `Err` only when a proxy cannot be started or never becomes ready (the
/// error carries its log). Errors during load are counted in the report, not returned.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let mut machine = Machine::probe();
    let started = report::now_utc();
    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let kept_dir = opts.keep_dir.then(|| dir.path().to_path_buf());
    let progress = |msg: &str| {
        if opts.progress {
            eprintln!("[bench] {msg}");
        }
    };

    // Pin this thread before the upstream and client threads exist, so that they inherit it;
    // the caller's thread gets its old affinity back when `run` returns.
    let proxy_cpus: Option<Vec<usize>> =
        (opts.pin && machine.nproc > opts.workers).then(|| (1..=opts.workers).collect());
    let _restore = match &proxy_cpus {
        Some(_) => sys::pin_current_thread(&[0]).map(RestoreAffinity),
        None => {
            if opts.pin {
                progress("not pinning: fewer CPUs than workers + 1");
            }
            None
        }
    };
    let proxy_cpus = proxy_cpus.filter(|_| _restore.is_some());

    let pki = pki::BenchPki::generate(dir.path()).context("dev PKI")?;
    let tls = ClientTls::new(&pki.root_pem, &pki.device_chain_pem, &pki.device_key_pem)?;
    let upstream = Upstream::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("load client: tokio runtime")?;
    progress(&format!(
        "upstream on {}, {} worker(s), {} connection(s), {:?} per scenario ({:?} warm-up), {} client thread(s)",
        upstream.addr,
        opts.workers,
        opts.connections,
        opts.duration,
        opts.warmup,
        opts.client_threads
    ));

    let mut variants = vec![false];
    if opts.logging_variant {
        variants.push(true);
    }
    // (scenario, portcullis rounds, nginx rounds), in report order.
    let mut collected: Vec<(Scenario, Vec<Measurement>, Vec<Measurement>)> = Vec::new();
    for &logging in &variants {
        for mode in variant_modes(opts, logging) {
            collected.push((Scenario { mode, logging }, Vec::new(), Vec::new()));
        }
    }
    let rounds = opts.rounds.max(1);
    for round in 0..rounds {
        // Alternate who goes first, so that a neighbour's build starting or ending mid-run
        // does not always land on the same proxy.
        let order = if round % 2 == 0 {
            [Proxy::Portcullis, Proxy::Nginx]
        } else {
            [Proxy::Nginx, Proxy::Portcullis]
        };
        for &logging in &variants {
            let modes = variant_modes(opts, logging);
            if modes.is_empty() {
                continue;
            }
            for proxy in order {
                if rounds > 1 {
                    progress(&format!("round {}/{rounds}", round + 1));
                }
                let (mut process, listen) = start_proxy(
                    proxy,
                    logging,
                    round,
                    dir.path(),
                    opts,
                    &pki,
                    &upstream,
                    proxy_cpus.as_deref(),
                )?;
                let results = run_proxy(
                    process.as_mut(),
                    proxy,
                    listen,
                    &modes,
                    logging,
                    &rt,
                    &tls,
                    opts,
                    &upstream,
                )?;
                for (mode, m) in modes.iter().zip(results) {
                    if let Some(entry) = collected
                        .iter_mut()
                        .find(|(s, _, _)| s.mode == *mode && s.logging == logging)
                    {
                        match proxy {
                            Proxy::Portcullis => entry.1.push(m),
                            Proxy::Nginx => entry.2.push(m),
                        }
                    }
                }
            }
        }
    }
    let rows = collected
        .into_iter()
        .filter_map(|(scenario, p, n)| {
            Some(Row {
                portcullis_rounds: p
                    .iter()
                    .map(|m| (m.phase.requests_per_sec(), m.cpu.other))
                    .collect(),
                nginx_rounds: n
                    .iter()
                    .map(|m| (m.phase.requests_per_sec(), m.cpu.other))
                    .collect(),
                portcullis: best(p)?,
                nginx: best(n)?,
                scenario,
            })
        })
        .collect();
    drop(upstream);
    machine.loadavg_after = sys::loadavg();

    if let Some(path) = &kept_dir {
        // Leak the directory on purpose: the caller asked to look at it.
        let _ = dir.keep();
        progress(&format!("kept {}", path.display()));
    }
    Ok(Report {
        machine,
        started,
        options: opts.clone(),
        nginx_version: nginx::version(&opts.nginx_bin),
        pinned: proxy_cpus,
        rows,
        kept_dir,
    })
}

/// What the harness needs from a running proxy process.
pub trait ProxyProcess {
    fn pid(&self) -> u32;
    /// `Some(why)` once the process has exited, with the tail of its log.
    fn exited(&mut self) -> Option<String>;
    /// The tail of its logs, for error messages.
    fn logs(&self) -> String;
    /// Lines logged at warn or worse so far.
    fn log_lines(&self) -> usize;
    fn stop(&mut self);
}

/// Waits until the proxy serves, measures every mode, stops it.
#[allow(clippy::too_many_arguments)]
fn run_proxy(
    proc_: &mut dyn ProxyProcess,
    proxy: Proxy,
    target: SocketAddr,
    modes: &[Mode],
    logging: bool,
    rt: &tokio::runtime::Runtime,
    tls: &ClientTls,
    opts: &Options,
    upstream: &Upstream,
) -> anyhow::Result<Vec<Measurement>> {
    wait_ready(rt, tls, target, proc_, proxy.name())?;
    let mut out = Vec::new();
    for &mode in modes {
        if opts.progress {
            eprintln!(
                "[bench] {}: {}",
                proxy.name(),
                Scenario { mode, logging }.label()
            );
        }
        out.push(measure(rt, tls, opts, target, mode, proc_, upstream));
    }
    if let Some(why) = proc_.exited() {
        return Err(anyhow!("{} died during the run: {why}", proxy.name()));
    }
    proc_.stop();
    Ok(out)
}

/// One proxy, one mode: CPU sampled around the client phase.
fn measure(
    rt: &tokio::runtime::Runtime,
    tls: &ClientTls,
    opts: &Options,
    target: SocketAddr,
    mode: Mode,
    proc_: &dyn ProxyProcess,
    upstream: &Upstream,
) -> Measurement {
    let spec = PhaseSpec {
        target,
        mode,
        connections: opts.connections,
        duration: opts.duration,
        warmup: opts.warmup.min(opts.duration / 2),
        request_timeout: Duration::from_secs(5),
    };
    let seen = upstream.seen();
    let cpu = CpuSampler::start(proc_.pid());
    let phase = rt.block_on(client::run_phase(tls, &spec));
    let cpu = cpu.finish();
    Measurement {
        phase,
        cpu,
        upstream: upstream.seen().since(seen),
        proxy_log_lines: proc_.log_lines(),
    }
}

/// Probes until a request comes back 200, the process exits, or 60 s pass (a debug build on
/// a busy box is slow to start). A proxy that answers but refuses (e.g. a 403 because the
/// inventory did not load) fails with its status and body.
fn wait_ready(
    rt: &tokio::runtime::Runtime,
    tls: &ClientTls,
    target: SocketAddr,
    proc_: &mut dyn ProxyProcess,
    name: &str,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no attempt");
    while Instant::now() < until {
        if let Some(why) = proc_.exited() {
            return Err(anyhow!("{name} did not start: {why}"));
        }
        let attempt = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client::probe(tls, target)).await
        });
        match attempt {
            Ok(Ok((200, _))) => return Ok(()),
            Ok(Ok((status, body))) => {
                last = format!("status {status}: {}", String::from_utf8_lossy(&body).trim())
            }
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "probe timed out".into(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "{name} on {target} not ready after 60 s; last probe: {last}\n{name} log:\n{}",
        proc_.logs()
    ))
}
