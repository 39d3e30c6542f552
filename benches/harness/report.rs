//! The report: the comparison table the issue asks for, then the details that say how far to
//! trust it (errors, CPU use of each party, the machine's other load).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::sys::Machine;
use super::{Measurement, Options, Row};

#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    /// RFC 3339, UTC.
    pub started: String,
    pub options: Options,
    pub nginx_version: String,
    pub rows: Vec<Row>,
    pub kept_dir: Option<PathBuf>,
    /// CPUs the proxies were pinned to (load client + upstream on CPU 0), if pinned.
    pub pinned: Option<Vec<usize>>,
}

pub fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2}", d.as_secs_f64() * 1e3),
        None => "–".into(),
    }
}

fn p50_p99(m: &Measurement) -> String {
    format!(
        "{} / {} ms",
        ms(m.phase.percentile(0.50)),
        ms(m.phase.percentile(0.99))
    )
}

fn median_of(rounds: &[(f64, f64)]) -> Option<f64> {
    let mut v: Vec<f64> = rounds.iter().map(|(rps, _)| *rps).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Row {
    /// Best-round Portcullis requests/s over best-round nginx requests/s; `None` if nginx
    /// served nothing.
    pub fn ratio(&self) -> Option<f64> {
        let n = self.nginx.phase.requests_per_sec();
        (n > 0.0).then(|| self.portcullis.phase.requests_per_sec() / n)
    }

    /// The same with each side's median round: a lucky round on one side (the hypervisor's
    /// placement is invisible from inside) moves the best-of ratio, rarely the median one.
    pub fn ratio_median(&self) -> Option<f64> {
        let p = median_of(&self.portcullis_rounds)?;
        let n = median_of(&self.nginx_rounds)?;
        (n > 0.0).then(|| p / n)
    }
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "### Portcullis vs nginx — {}", self.started);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Machine: {} CPU(s), {}, {} RAM, Linux {}; load average before {} / after {}.",
            m.nproc, m.cpu_model, m.memory, m.kernel, m.loadavg_before, m.loadavg_after
        );
        let _ = writeln!(
            s,
            "Setup: {} worker(s) each (Portcullis `worker_threads`, nginx `worker_processes`), \
             {} connection(s), {:.0} s per scenario incl. {:.0} s warm-up, load client {} thread(s), \
             {}; Portcullis binary `{}`, identity headers [{}].",
            o.workers,
            o.connections,
            o.duration.as_secs_f64(),
            o.warmup.min(o.duration / 2).as_secs_f64(),
            o.client_threads,
            self.nginx_version,
            o.portcullis_bin.display(),
            o.identity_headers.join(", ")
        );
        let _ = writeln!(
            s,
            "CPU placement: {}.",
            match &self.pinned {
                Some(cpus) =>
                    format!("proxy pinned to CPU(s) {cpus:?}, load client + upstream to CPU 0"),
                None => "not pinned (the scheduler places proxy, client and upstream)".into(),
            }
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| scenario | portcullis req/s | nginx req/s | portcullis/nginx | portcullis/nginx, median rounds | portcullis p50 / p99 | nginx p50 / p99 |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                r.scenario.label(),
                r.portcullis.phase.requests_per_sec(),
                r.nginx.phase.requests_per_sec(),
                r.ratio().map_or("–".into(), |x| format!("{x:.2}×")),
                r.ratio_median().map_or("–".into(), |x| format!("{x:.2}×")),
                p50_p99(&r.portcullis),
                p50_p99(&r.nginx),
            );
        }
        if o.rounds > 1 {
            let list = |v: &[(f64, f64)]| {
                v.iter()
                    .map(|(rps, other)| format!("{rps:.0} ({other:.2})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{} rounds, alternating which proxy goes first; the table shows each side's best \
                 round (interference only lowers a figure). Requests/s of every round, in run order, with the CPU (in cores) that other \
                 processes used meanwhile in parentheses:",
                o.rounds
            );
            let _ = writeln!(s);
            let _ = writeln!(s, "| scenario | portcullis | nginx |");
            let _ = writeln!(s, "|---|---|---|");
            for r in &self.rows {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    r.scenario.label(),
                    list(&r.portcullis_rounds),
                    list(&r.nginx_rounds)
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "CPU is in cores (1.00 = one core busy for the whole phase): *proxy* = the proxy's \
             processes, *client+upstream* = this harness, *other* = everything else on the machine \
             (neighbours' builds; also part of the kernel's loopback work), of which *steal* is time the \
             hypervisor gave to other VMs. Figures of the best round."
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| scenario | proxy | ok (measured) | errors | handshakes | proxy CPU | proxy CPU µs/req | client+upstream CPU | other CPU (steal) | identity at upstream | proxy log lines |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            for (name, meas) in [("portcullis", &r.portcullis), ("nginx", &r.nginx)] {
                let identity = if name == "portcullis" {
                    meas.upstream.portcullis_identity
                } else {
                    meas.upstream.nginx_verified
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} | {} | {:.2} | {} | {:.2} | {:.2} ({:.2}) | {}/{} | {} |",
                    r.scenario.label(),
                    name,
                    meas.phase.ok_total,
                    meas.phase.measured,
                    meas.phase.error_count(),
                    meas.phase.handshakes,
                    meas.cpu.proxy,
                    meas.cpu_us_per_request()
                        .map_or("–".into(), |x| format!("{x:.1}")),
                    meas.cpu.bench,
                    meas.cpu.other,
                    meas.cpu.steal,
                    identity,
                    meas.upstream.requests,
                    meas.proxy_log_lines,
                );
            }
        }
        let errors: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                [("portcullis", &r.portcullis), ("nginx", &r.nginx)]
                    .into_iter()
                    .flat_map(move |(name, meas)| {
                        meas.phase.errors.iter().map(move |(k, v)| {
                            format!("- {} / {}: {v} × {k}", r.scenario.label(), name)
                        })
                    })
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Errors:");
            for e in errors {
                let _ = writeln!(s, "{e}");
            }
        }
        if let Some(tls) = self
            .rows
            .iter()
            .find_map(|r| r.portcullis.phase.tls.clone())
        {
            let ngx = self
                .rows
                .iter()
                .find_map(|r| r.nginx.phase.tls.clone())
                .unwrap_or_default();
            let _ = writeln!(s);
            let _ = writeln!(s, "TLS negotiated: portcullis {tls}; nginx {ngx}.");
        }
        if let Some(dir) = &self.kept_dir {
            let _ = writeln!(s, "Configs and logs kept in `{}`.", dir.display());
        }
        s
    }
}
