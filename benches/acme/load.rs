//! The measured loop: `orders` certificates, `concurrency` at a time, each the whole flow of
//! [`super::flow::issue`] on its own Tokio task, with one account, against one server.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instant_acme::Account;

use super::flow;
use super::responder::Responder;

/// The longest one order may take before it counts as an error.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub orders: usize,
    pub ok: usize,
    pub errors: Vec<String>,
    pub wall: Duration,
    /// Per successful order, start of newOrder to the downloaded chain.
    pub latencies: Vec<Duration>,
    pub polls: u64,
    /// CPU seconds (user + system) of the server process during the run.
    pub server_cpu: f64,
    /// CPU seconds of this process (the client and the challenge responder).
    pub client_cpu: f64,
    /// Key authorizations the responder served during the run (the server's http-01 fetches).
    pub http01_fetches: u64,
}

impl LoadResult {
    pub fn orders_per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64()
    }

    /// The `p`-th percentile (0..=100) of the latencies, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((p / 100.0) * (l.len() - 1) as f64).round() as usize;
        l[i].as_secs_f64() * 1000.0
    }

    pub fn server_cpu_ms_per_order(&self) -> f64 {
        self.server_cpu * 1000.0 / self.ok.max(1) as f64
    }
}

/// `names[i % names.len()]` is the name of order `i`.
pub async fn run(
    account: &Account,
    responder: &Arc<Responder>,
    names: &[String],
    orders: usize,
    concurrency: usize,
    poll: Duration,
    server_pid: Option<u32>,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(LoadResult {
        orders,
        ..LoadResult::default()
    }));
    let names: Arc<Vec<String>> = Arc::new(names.to_vec());
    let cpu_server_0 = server_pid.and_then(cpu_seconds);
    let cpu_client_0 = cpu_seconds(std::process::id());
    let fetches_0 = responder.counts().0;
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (account, responder, names, next, results) = (
                account.clone(),
                responder.clone(),
                names.clone(),
                next.clone(),
                results.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= orders {
                        break;
                    }
                    let name = vec![names[i % names.len()].clone()];
                    let t0 = Instant::now();
                    // A server that stops answering becomes errors, not a bench that hangs.
                    let outcome = tokio::time::timeout(
                        ORDER_TIMEOUT,
                        flow::issue(&account, &responder, &name, poll),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("no certificate after {ORDER_TIMEOUT:?}"))
                    });
                    let took = t0.elapsed();
                    let mut r = results.lock().unwrap();
                    match outcome {
                        Ok(issued) if issued.chain_pem.contains("BEGIN CERTIFICATE") => {
                            r.ok += 1;
                            r.polls += u64::from(issued.polls);
                            r.latencies.push(took);
                        }
                        Ok(_) => r.errors.push("no certificate in the download".into()),
                        Err(e) => r.errors.push(format!("{e:#}")),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let wall = start.elapsed();
    let mut r = results.lock().unwrap().clone();
    r.wall = wall;
    r.http01_fetches = responder.counts().0 - fetches_0;
    if let (Some(a), Some(b)) = (cpu_server_0, server_pid.and_then(cpu_seconds)) {
        r.server_cpu = b - a;
    }
    if let (Some(a), Some(b)) = (cpu_client_0, cpu_seconds(std::process::id())) {
        r.client_cpu = b - a;
    }
    r
}

/// utime + stime of `pid` in seconds, from `/proc/<pid>/stat` (Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) are the 12th and 13th after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
