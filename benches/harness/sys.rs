//! Linux process and machine facts from /proc, and process signalling.
//!
//! CPU accounting matters on a small shared box: requests/s alone cannot tell "the proxy is
//! slower" from "the load client or a neighbour's compile took the CPU". Each phase therefore
//! also records the CPU time of the proxy (master + workers for nginx), of this process (load
//! client + upstream), and of everything else on the machine.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream architecture
/// (it is part of the kernel ABI, independent of CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// The fields after the `(comm)` of /proc/PID/stat; comm may contain spaces and parentheses,
/// hence splitting after the last ')'.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of one process, in ticks. After ')' index 0 is field 3 (state), so utime
/// (field 14) is index 11 and stime (field 15) index 12; ppid (field 4) is index 1.
fn process_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Direct children of `pid` (nginx workers of the master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| ppid(*p) == Some(pid))
        .collect()
}

/// CPU ticks of a process and its direct children (live ones).
pub fn tree_ticks(pid: u32) -> u64 {
    process_ticks(pid).unwrap_or(0)
        + children(pid)
            .into_iter()
            .filter_map(process_ticks)
            .sum::<u64>()
}

pub fn self_ticks() -> u64 {
    process_ticks(std::process::id()).unwrap_or(0)
}

/// Busy ticks of the whole machine (all CPUs: everything but idle and iowait) and, within
/// them, steal: time the hypervisor gave this VM's virtual CPUs to someone else, which no
/// process here can see but which slows every one of them.
pub fn machine_ticks() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is already inside user).
    let total: u64 = v.iter().take(8).sum();
    (total.saturating_sub(at(3) + at(4)), at(7))
}

/// CPU used during an interval, in "cores" (1.0 = one core fully busy).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub proxy: f64,
    /// This process: load client + upstream.
    pub bench: f64,
    /// Everything else on the machine (other builds, the kernel's softirq for loopback is
    /// partly attributed here too).
    pub other: f64,
    /// Proxy CPU seconds spent, absolute.
    pub proxy_secs: f64,
    /// Hypervisor steal, in cores (counted in `other` too).
    pub steal: f64,
}

pub struct CpuSampler {
    proxy_pid: u32,
    at: Instant,
    proxy: u64,
    bench: u64,
    machine: u64,
    steal: u64,
}

impl CpuSampler {
    pub fn start(proxy_pid: u32) -> Self {
        let (machine, steal) = machine_ticks();
        Self {
            proxy_pid,
            at: Instant::now(),
            proxy: tree_ticks(proxy_pid),
            bench: self_ticks(),
            machine,
            steal,
        }
    }

    pub fn finish(self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let proxy = tree_ticks(self.proxy_pid).saturating_sub(self.proxy) as f64 / USER_HZ;
        let bench = self_ticks().saturating_sub(self.bench) as f64 / USER_HZ;
        let (machine, steal) = machine_ticks();
        let machine = machine.saturating_sub(self.machine) as f64 / USER_HZ;
        let steal = steal.saturating_sub(self.steal) as f64 / USER_HZ;
        CpuUse {
            proxy: proxy / secs,
            bench: bench / secs,
            other: ((machine - proxy - bench) / secs).max(0.0),
            proxy_secs: proxy,
            steal: steal / secs,
        }
    }
}

/// The machine, for the report.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            memory,
            loadavg_before: loadavg(),
            loadavg_after: String::new(),
        }
    }
}

pub fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trim(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one this harness spawned
    // (or a child of it) and still owns.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns once the child is reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A loopback port that was free a moment ago. The small race with another process is
/// acceptable for a benchmark; losing it shows as a bind error in the proxy's log.
pub fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    l.local_addr().context("local_addr")
}

/// A CPU set for sched_setaffinity(2).
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes inside `set`; it ignores CPUs beyond the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins the calling thread (and so every thread it creates afterwards) to `cpus`; returns the
/// previous set, to restore with [`restore_affinity`], or `None` if the kernel refused.
pub fn pin_current_thread(cpus: &[usize]) -> Option<libc::cpu_set_t> {
    // SAFETY: as in cpu_set.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: pid 0 is the calling thread; both pointers are to live, correctly sized sets.
    let ok = unsafe {
        libc::sched_getaffinity(0, size, &mut old) == 0
            && libc::sched_setaffinity(0, size, &cpu_set(cpus)) == 0
    };
    ok.then_some(old)
}

pub fn restore_affinity(old: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `old` came from sched_getaffinity.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old);
    }
}

/// Makes a command start pinned to `cpus` (set in the child between fork and exec, so that
/// every thread and process it ever creates inherits the set).
pub fn pin_command(cmd: &mut std::process::Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(cpus);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sched_setaffinity, a plain system call (async-signal-safe), on a set built beforehand.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last 20 lines of each of `names` in `dir`, for the error message of a proxy that died.
pub fn log_tail(dir: &std::path::Path, names: &[&str]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for name in names {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// Lines in a log file (0 if it does not exist): a clean benchmark run logs none.
pub fn line_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}
