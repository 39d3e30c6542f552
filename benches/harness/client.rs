//! The load client: tokio + tokio-rustls, presenting the device certificate on every
//! handshake; keep-alive requests are bare HTTP/1.1 ([`super::wire`]), one-shot requests go
//! through hyper's low-level HTTP/1.1 client connection.
//!
//! Two modes, the two numbers the issue asks for:
//! - keep-alive: `connections` long-lived connections, each issuing sequential GETs;
//! - new connection: `connections` loops, each request on a fresh TCP connection and a full
//!   mTLS handshake (resumption disabled in the `ClientConfig`, so no ticket or session id is
//!   ever offered), closed after the response (`Connection: close`, as a one-shot curl would).
//!
//! Why our own client rather than `oha`/`wrk`: it must present a client certificate, disable
//! resumption for certain, count non-200s as errors and give the same code path to both
//! proxies. It is deliberately minimal so that it costs as little CPU as possible on a small box.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::wire;

/// How requests map onto connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    NewConnection,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::NewConnection => "new connection (full mTLS handshake)",
        }
    }
}

/// The client's TLS identity and trust, shared by every connection of a run.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// Host header value; both proxies route `*` so any name works, this one matches the SNI.
    host: &'static str,
}

impl ClientTls {
    /// `roots_pem`: CA(s) the server certificate chains to; `chain_pem`/`key_pem`: the device
    /// certificate (leaf first, then any intermediates) and its key.
    pub fn new(roots_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem) {
            roots
                .add(cert.context("client roots: bad PEM")?)
                .context("client roots: certificate rejected")?;
        }
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("device certificate: bad PEM")?;
        if chain.is_empty() {
            return Err(anyhow!("device certificate: no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).context("device key: bad PEM")?;
        // The provider is named explicitly so that a second crypto backend appearing in the
        // dependency graph cannot make `ClientConfig::builder()` panic at run time.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("device certificate and key do not match")?;
        // No session resumption in either mode: the new-connection figure must be a full
        // handshake every time, and keep-alive connections never reconnect on purpose.
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_sni = true;
        Ok(Self {
            config: Arc::new(config),
            server_name: ServerName::try_from("localhost")
                .map_err(|e| anyhow!("server name: {e}"))?,
            host: "localhost",
        })
    }
}

/// One timed run against one proxy.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    pub target: SocketAddr,
    pub mode: Mode,
    pub connections: usize,
    /// Total time, warm-up included.
    pub duration: Duration,
    /// Requests completed before this point are not measured (JIT-free, but caches, pools and
    /// the kernel's socket buffers settle).
    pub warmup: Duration,
    /// Upper bound for one connect + handshake + request, so that a stuck server ends a phase.
    pub request_timeout: Duration,
}

/// What a phase measured.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// 200 responses that started inside the measurement window.
    pub measured: u64,
    /// 200 responses over the whole phase (warm-up included).
    pub ok_total: u64,
    /// Everything that was not a 200, by kind ("status 403", "tls: …", "timeout", …).
    pub errors: BTreeMap<String, u64>,
    /// Connections opened (TCP + TLS handshake completed).
    pub handshakes: u64,
    /// Latencies of measured requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Length of the measurement window.
    pub window: Duration,
    /// Negotiated protocol and cipher suite of the first handshake, for the record.
    pub tls: Option<String>,
}

impl PhaseResult {
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.measured as f64 / secs
        } else {
            0.0
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `p` in 0..=1; `None` when nothing was measured.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let n = self.latencies_us.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        Some(Duration::from_micros(u64::from(
            self.latencies_us[rank - 1],
        )))
    }
}

#[derive(Default)]
struct WorkerStats {
    measured: u64,
    ok_total: u64,
    errors: BTreeMap<String, u64>,
    handshakes: u64,
    latencies_us: Vec<u32>,
    tls: Option<String>,
}

impl WorkerStats {
    fn ok(&mut self, started: Instant, measure_from: Instant) {
        self.ok_total += 1;
        if started >= measure_from {
            self.measured += 1;
            let us = started.elapsed().as_micros();
            self.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    fn handshake(&mut self, stream: &TlsStream<TcpStream>) {
        self.handshakes += 1;
        if self.tls.is_none() {
            let (_, conn) = stream.get_ref();
            let version = conn
                .protocol_version()
                .map_or("?".into(), |v| format!("{v:?}"));
            let suite = conn
                .negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite()));
            let group = conn
                .negotiated_key_exchange_group()
                .map_or("?".into(), |g| format!("{:?}", g.name()));
            self.tls = Some(format!("{version} {suite} {group}"));
        }
    }
}

/// Runs one phase on the current tokio runtime.
pub async fn run_phase(tls: &ClientTls, spec: &PhaseSpec) -> PhaseResult {
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections.max(1) {
        let tls = tls.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            match spec.mode {
                Mode::KeepAlive => keepalive_worker(&tls, &spec, measure_from, deadline).await,
                Mode::NewConnection => {
                    new_connection_worker(&tls, &spec, measure_from, deadline).await
                }
            }
        }));
    }
    let mut result = PhaseResult {
        window: deadline.saturating_duration_since(measure_from),
        ..PhaseResult::default()
    };
    for task in tasks {
        match task.await {
            Ok(w) => {
                result.measured += w.measured;
                result.ok_total += w.ok_total;
                result.handshakes += w.handshakes;
                result.latencies_us.extend(w.latencies_us);
                for (k, v) in w.errors {
                    *result.errors.entry(k).or_insert(0) += v;
                }
                if result.tls.is_none() {
                    result.tls = w.tls;
                }
            }
            Err(e) => {
                *result
                    .errors
                    .entry(format!("client task: {e}"))
                    .or_insert(0) += 1
            }
        }
    }
    result.latencies_us.sort_unstable();
    result
}

async fn keepalive_worker(
    tls: &ClientTls,
    spec: &PhaseSpec,
    measure_from: Instant,
    deadline: Instant,
) -> WorkerStats {
    let mut st = WorkerStats::default();
    while Instant::now() < deadline {
        let mut stream =
            match tokio::time::timeout(spec.request_timeout, connect(tls, spec.target, &mut st))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    st.error(e);
                    // A refused connection would otherwise spin; errors are counted either way.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    st.error("timeout: connect + handshake".into());
                    continue;
                }
            };
        let mut buf = bytes::BytesMut::with_capacity(4096);
        while Instant::now() < deadline {
            let started = Instant::now();
            match tokio::time::timeout(spec.request_timeout, wire::exchange(&mut stream, &mut buf))
                .await
            {
                Ok(Ok(r)) => {
                    if r.status == 200 {
                        st.ok(started, measure_from);
                    } else {
                        st.error(format!("status {}", r.status));
                    }
                    // The server may end a keep-alive connection after a response (a
                    // per-connection request limit, as nginx's `keepalive_requests`): that is a
                    // reconnect, counted in `handshakes`, not an error.
                    if r.close {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    st.error(e);
                    break;
                }
                Err(_) => {
                    st.error("timeout: request".into());
                    break;
                }
            }
        }
    }
    st
}

async fn new_connection_worker(
    tls: &ClientTls,
    spec: &PhaseSpec,
    measure_from: Instant,
    deadline: Instant,
) -> WorkerStats {
    let mut st = WorkerStats::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let attempt = async {
            let (mut sender, conn) = open(tls, spec.target, &mut st).await?;
            let conn_task = tokio::spawn(conn);
            let status = get(&mut sender, tls.host, true).await?;
            drop(sender);
            Ok::<_, String>((status, conn_task))
        };
        match tokio::time::timeout(spec.request_timeout, attempt).await {
            Ok(Ok((status, conn_task))) => {
                if status == 200 {
                    st.ok(started, measure_from);
                } else {
                    st.error(format!("status {status}"));
                }
                // Let the connection close cleanly (close_notify + FIN) so that neither server
                // logs an abort per request; not part of the latency, part of the throughput.
                // A server that keeps the connection open after `Connection: close` breaks
                // HTTP/1.1 (RFC 9112 §9.6): that is an error, with generous time for a loaded box.
                if tokio::time::timeout(Duration::from_secs(5), conn_task)
                    .await
                    .is_err()
                {
                    st.error("connection still open 5 s after `Connection: close`".into());
                }
            }
            Ok(Err(e)) => {
                st.error(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => st.error("timeout: connect + handshake + request".into()),
        }
    }
    st
}

type Conn = hyper::client::conn::http1::Connection<TokioIo<TlsStream<TcpStream>>, Empty<Bytes>>;

/// TCP connect, mTLS handshake, HTTP/1.1 handshake.
async fn open(
    tls: &ClientTls,
    target: SocketAddr,
    st: &mut WorkerStats,
) -> Result<(SendRequest<Empty<Bytes>>, Conn), String> {
    let stream = connect(tls, target, st).await?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))
}

/// TCP connect and mTLS handshake.
async fn connect(
    tls: &ClientTls,
    target: SocketAddr,
    st: &mut WorkerStats,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    // Small requests and responses: Nagle would add delayed-ACK stalls to every exchange.
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    st.handshake(&stream);
    Ok(stream)
}

/// One GET, body read to the end; returns the status.
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    close: bool,
) -> Result<u16, String> {
    let mut req = Request::get("/bench").header(HOST, host);
    if close {
        req = req.header(CONNECTION, "close");
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// One request on a fresh connection: used to wait until a proxy is ready, and to show why
/// it is not. Returns the status and body.
pub async fn probe(tls: &ClientTls, target: SocketAddr) -> anyhow::Result<(u16, Bytes)> {
    let mut st = WorkerStats::default();
    let (mut sender, conn) = open(tls, target, &mut st).await.map_err(|e| anyhow!(e))?;
    let conn_task = tokio::spawn(conn);
    let req = Request::get("/bench")
        .header(HOST, tls.host)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn_task).await;
    Ok((status, body))
}
