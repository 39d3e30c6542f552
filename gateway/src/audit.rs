//! The audit trail: one JSON line per access decision (and per connection cut), with the full
//! reason. Clients only ever see the reason *code*; the detail lives here.
//!
//! Lines are formatted on the request task into a shared buffer; a writer thread that owns the
//! sink takes the whole buffer and writes it with one system call, so a slow disk does not stall
//! the runtime's workers. Under load the writer is not woken per line (that cost a context
//! switch per request): when it wrote less than [`BATCH_WINDOW`] ago, it lets lines gather for
//! that long (or until [`BATCH_BYTES`] are waiting) before writing them out, and request lines
//! do not wake it meanwhile. When lines are rare it sleeps until the next one and writes it at
//! once; the rare events (a connection cut, a refused handshake) wake it in any case, so their
//! lines reach the file without delay. A request only blocks once [`MAX_PENDING`] bytes are
//! waiting — audit lines are never dropped.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// How long lines gather before the writer writes them (the most a line waits under load).
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Waiting bytes that wake the writer before the window ends.
const BATCH_BYTES: usize = 256 * 1024;
/// Waiting bytes past which requests block until the writer catches up.
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// One audit line. `event` is `request`, `handshake` (a refused TLS client) or `connection_cut`.
#[derive(Debug, Serialize)]
pub(crate) struct AuditRecord<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub event: &'static str,
    pub request_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    /// SHA-256 of the leaf certificate DER, hex.
    pub fingerprint: Option<&'a str>,
    pub route: Option<&'a str>,
    pub method: Option<&'a str>,
    /// The path only: the query string may carry secrets and is not logged.
    pub path: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The machine-readable reason code.
    pub reason: &'a str,
    pub detail: &'a str,
    pub upstream_status: Option<u16>,
    pub latency_ms: Option<f64>,
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where audit lines go: `stdout`, `stderr`, `off`, or a file path (append, created 0600).
pub(crate) struct AuditSink {
    spec: String,
    queue: Option<Arc<Queue>>,
}

/// Lines waiting for the writer thread.
struct Queue {
    pending: Mutex<Pending>,
    /// The writer waits here for lines (or the end).
    wake: Condvar,
    /// Requests wait here when [`MAX_PENDING`] is reached.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer sleeps until the next line: the line that finds it so wakes it.
    writer_asleep: bool,
    /// The sink was dropped: write what is left and stop.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for AuditSink {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.lock().closed = true;
            queue.wake.notify_one();
        }
    }
}

impl AuditSink {
    pub fn open(spec: &str) -> anyhow::Result<Self> {
        let writer: Box<dyn Write + Send> = match spec {
            "off" => {
                return Ok(Self {
                    spec: spec.to_string(),
                    queue: None,
                })
            }
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let file = options
                    .open(path)
                    .with_context(|| format!("audit sink: cannot open {path} for appending"))?;
                Box::new(file)
            }
        };
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let for_writer = queue.clone();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_lines(&for_writer, writer))
            .context("audit sink: cannot start the writer thread")?;
        Ok(Self {
            spec: spec.to_string(),
            queue: Some(queue),
        })
    }

    /// False for `off`: callers skip building the record.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// The `audit.sink` value this sink was opened from (a reload with the same value reuses it).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// A client refused during the TLS handshake: no request exists yet, so only what the
    /// handshake revealed is recorded.
    pub fn handshake_refused(
        &self,
        source_ip: Option<IpAddr>,
        fingerprint: Option<&str>,
        device_id: Option<&str>,
        reason: &str,
        detail: &str,
    ) {
        self.write(&AuditRecord {
            time: now_rfc3339(),
            event: "handshake",
            request_id: None,
            device_id,
            fingerprint,
            route: None,
            method: None,
            path: None,
            source_ip,
            decision: "deny",
            reason,
            detail,
            upstream_status: None,
            latency_ms: None,
        });
    }

    pub fn write(&self, record: &AuditRecord<'_>) {
        let Some(queue) = &self.queue else { return };
        let mut pending = queue.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closed {
            pending = queue
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Serialised straight into the shared buffer: no per-line allocation.
        let start = pending.bytes.len();
        match serde_json::to_writer(&mut pending.bytes, record) {
            Ok(()) => pending.bytes.push(b'\n'),
            Err(e) => {
                pending.bytes.truncate(start);
                tracing::error!(error = %e, "cannot serialise an audit record");
                return;
            }
        }
        // Request lines come by the thousand under load; anything else is rare and is written
        // at once.
        let urgent = record.event != "request";
        if urgent || pending.writer_asleep || pending.bytes.len() >= BATCH_BYTES {
            pending.writer_asleep = false;
            queue.wake.notify_one();
        }
    }
}

/// The writer thread: sleeps until a line arrives; when it wrote less than [`BATCH_WINDOW`]
/// ago (lines are coming fast), lets them gather for up to that long first; writes and
/// flushes everything waiting at once. Ends when the sink is dropped, after draining.
fn write_lines(queue: &Queue, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let closed = {
            let mut pending = queue.lock();
            while pending.bytes.is_empty() && !pending.closed {
                pending.writer_asleep = true;
                pending = queue
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.writer_asleep = false;
            let busy = last_write.is_some_and(|at| at.elapsed() < BATCH_WINDOW);
            if busy && !pending.closed && pending.bytes.len() < BATCH_BYTES {
                // Woken early by a full buffer, a rare event or the end.
                pending = queue
                    .wake
                    .wait_timeout(pending, BATCH_WINDOW)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Swap rather than copy: the request side keeps writing into the buffer the
            // writer emptied last time, so neither side allocates in the steady state.
            std::mem::swap(&mut batch, &mut pending.bytes);
            pending.closed
        };
        queue.room.notify_all();
        if !batch.is_empty() {
            if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
            batch.clear();
            last_write = Some(Instant::now());
        }
        if closed && queue.lock().bytes.is_empty() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_appends_json_lines_0600() {
        let dir = std::env::temp_dir().join(format!("pc-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("audit.log");
        let path_str = path.to_string_lossy().into_owned();
        {
            let sink = AuditSink::open(&path_str).expect("open");
            for i in 0..3u16 {
                sink.write(&AuditRecord {
                    time: now_rfc3339(),
                    event: "request",
                    request_id: Some("r1"),
                    device_id: Some("SN-1"),
                    fingerprint: None,
                    route: Some("app"),
                    method: Some("GET"),
                    path: Some("/"),
                    source_ip: Some(IpAddr::from([127, 0, 0, 1])),
                    decision: "allow",
                    reason: "allowed",
                    detail: "",
                    upstream_status: Some(200 + i),
                    latency_ms: Some(1.5),
                });
            }
        }
        // The writer thread drains after the sink is dropped.
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["upstream_status"], 202);
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[0]["device_id"], "SN-1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
