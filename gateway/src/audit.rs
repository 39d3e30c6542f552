//! The audit trail: one JSON line per access decision (and per connection cut), with the full
//! reason. Clients only ever see the reason *code*; the detail lives here.
//!
//! Lines are formatted on the request task and handed over a bounded channel to a writer thread
//! that owns the sink, so a slow disk does not stall the runtime's workers (the channel only
//! blocks a request once 16 384 lines are waiting — audit lines are never dropped).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::Context;
use serde::Serialize;

const QUEUE: usize = 16 * 1024;

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
    tx: Option<SyncSender<String>>,
}

impl AuditSink {
    pub fn open(spec: &str) -> anyhow::Result<Self> {
        let writer: Box<dyn Write + Send> = match spec {
            "off" => {
                return Ok(Self {
                    spec: spec.to_string(),
                    tx: None,
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
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_lines(rx, writer))
            .context("audit sink: cannot start the writer thread")?;
        Ok(Self {
            spec: spec.to_string(),
            tx: Some(tx),
        })
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
        let Some(tx) = &self.tx else { return };
        match serde_json::to_string(record) {
            Ok(mut line) => {
                line.push('\n');
                if tx.send(line).is_err() {
                    tracing::error!("audit writer has stopped; audit line lost");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise an audit record"),
        }
    }
}

/// The writer thread: writes every line, flushing whenever the queue runs empty. Ends when the
/// sink (the last sender) is dropped, after draining.
fn write_lines(rx: Receiver<String>, writer: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            if result.is_ok() {
                result = out.write_all(more.as_bytes());
            }
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
    let _ = out.flush();
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
