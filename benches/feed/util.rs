//! Small measuring tools of the status feed benchmark: a log-linear latency histogram, the
//! process's memory from /proc/self/status, percentiles of a sample.

use std::time::Duration;

/// Latencies in ns, 16 sub-buckets per power of two (≤ 6.25 % relative error); quantiles are
/// reported as the bucket's upper bound (never flattering).
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; 64 * 16],
            n: 0,
            max: 0,
        }
    }
}

impl Hist {
    fn index(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as u64; // ≥ 4
        let sub = (v >> (msb - 4)) & 15;
        ((msb - 3) * 16 + sub) as usize
    }

    fn upper(i: usize) -> u64 {
        if i < 16 {
            return i as u64;
        }
        let msb = (i / 16) as u64 + 3;
        let sub = (i % 16) as u64;
        ((16 + sub + 1) << (msb - 4)) - 1
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.n += 1;
        self.max = self.max.max(ns);
    }

    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// A field of /proc/self/status in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn rss_mb() -> f64 {
    status_kb("VmRSS") as f64 / 1024.0
}

pub fn hwm_mb() -> f64 {
    status_kb("VmHWM") as f64 / 1024.0
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`, Linux ≥ 4.0). Returns
/// whether the kernel took it (the peak then reads within a few MB of the RSS).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok() && hwm_mb() <= rss_mb() + 4.0
}

/// Nearest-rank percentile of a sorted sample.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "p50 / p90 / p99 / max" of a sample in ms.
pub fn summary_ms(sample: &[f64]) -> [f64; 4] {
    let mut v = sample.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    [pct(&v, 0.50), pct(&v, 0.90), pct(&v, 0.99), pct(&v, 1.0)]
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID): what a piece of work cost,
/// whatever the neighbours took from the wall clock.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
