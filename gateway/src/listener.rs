//! The accept loop and the life of one client connection: TLS handshake (with a deadline),
//! the device identity parsed once, registration for cutting, HTTP/1.1 + HTTP/2 serving, idle
//! timeout, cut on status change, graceful drain on shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::Limits;
use portcullis_policy::{DeviceIdentity, VerifyError};
use rustls::HandshakeKind;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::h1::client::IdleUpstreams;
use crate::identity_headers::CertHeaders;
use crate::memo::Memo;
use crate::registry::Registration;
use crate::tls::{handshake_failure_reason, HANDSHAKE_PEER};
use crate::Shared;

/// How long in-flight requests get to finish after shutdown starts.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP server settings of a listener (rebuilt on reload).
pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own header read timeout starts as soon as it waits for a head, so it would
        // also close an idle keep-alive connection after `header_read_timeout`. The connection
        // loop below enforces both limits instead: `header_read_timeout` from the first byte
        // of a request head, `idle_timeout` while no request is in flight.
        .header_read_timeout(None)
        // hyper refuses a head larger than its read buffer (431); its minimum is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(100));
    builder
}

/// Requests in flight on a connection and when that count last changed, for the idle timeout
/// ("no request in flight for this long"); and whether a request head has started to arrive,
/// for the header read timeout (slowloris).
pub(crate) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    last_change_ms: AtomicU64,
    /// Milliseconds since `origin` (+1, 0 = none) at which bytes of a request head that has
    /// not been handed to the service yet began to arrive. HTTP/1 only.
    head_started_ms: AtomicU64,
    watch_heads: bool,
}

/// Held while a request (including its response body) is in flight.
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0.activity;
        a.touch();
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new(watch_heads: bool) -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            watch_heads,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_change_ms.store(self.now_ms(), Ordering::Release);
    }

    /// The client sent bytes. With no request in flight they are the start of the next
    /// request head.
    fn on_read(&self) {
        if self.watch_heads
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// How long a request head has been arriving without being complete; `None` when none is.
    fn head_pending_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started_ms.load(Ordering::Relaxed) {
            0 => None,
            started => Some(Duration::from_millis(
                self.now_ms().saturating_sub(started - 1),
            )),
        }
    }

    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_change_ms.load(Ordering::Acquire));
        Some(self.origin.elapsed().saturating_sub(last))
    }
}

/// The client side of a connection, telling [`Activity`] when bytes arrive.
struct Watched<T> {
    inner: T,
    conn: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.activity.on_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Everything a request needs to know about its connection. Built once per connection.
pub(crate) struct ConnState {
    pub peer: SocketAddr,
    /// SNI the client sent, lowercase.
    pub sni: Option<String>,
    /// The verified device certificate's identity; `None` when no certificate was presented
    /// (optional client auth).
    pub identity: Option<DeviceIdentity>,
    pub fingerprint_hex: Option<String>,
    /// Header values derived from the certificate, built once here.
    pub cert_headers: Option<CertHeaders>,
    /// `X-Forwarded-For`: the client address, formatted once.
    pub forwarded_for: HeaderValue,
    /// What this connection's requests can reuse from the previous one.
    pub memo: Mutex<Memo>,
    /// This connection's idle upstream connections.
    pub upstreams: Arc<IdleUpstreams>,
    /// Cancelled by the registry when the device stops being trusted.
    pub cut: CancellationToken,
    /// Shutdown has started (tunnels end; requests drain).
    pub shutdown: CancellationToken,
    activity: Activity,
    _registration: Option<Registration>,
    _open: OpenGuard,
}

impl ConnState {
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        // The head is complete: the next bytes start the next one.
        self.activity.head_started_ms.store(0, Ordering::Relaxed);
        self.activity.touch();
        InFlight(self.clone())
    }
}

/// Counts the connection in `portcullis_connections_open` while alive.
struct OpenGuard(prometheus::IntGauge);

impl OpenGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts until `shutdown`, then drains: in-flight requests get [`DRAIN_TIMEOUT`], after
/// which whatever is left is dropped.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hard_stop = CancellationToken::new();
    shared.listening.store(true, Ordering::Release);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    shared.tasks.spawn(connection(
                        shared.clone(),
                        tcp,
                        peer,
                        shutdown.clone(),
                        hard_stop.clone(),
                    ));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    shared.listening.store(false, Ordering::Release);
    drop(listener);
    shared.tasks.close();
    tracing::info!(open = shared.tasks.len(), "gateway draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = shared.tasks.len(),
            "drain deadline passed; closing the remaining connections"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tasks.wait()).await;
    }
    Ok(())
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let state = shared.state.load_full();
    let acceptor = TlsAcceptor::from(state.tls.clone());
    let handshake = tokio::time::timeout(
        state.limits.handshake_timeout,
        HANDSHAKE_PEER.scope(peer.ip(), acceptor.accept(tcp)),
    );
    let tls = tokio::select! {
        _ = hard_stop.cancelled() => return,
        _ = shutdown.cancelled() => return,
        result = handshake => match result {
            Err(_) => {
                shared.metrics.handshake_failed("timeout");
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
            Ok(Err(e)) => {
                if let Some(reason) = handshake_failure_reason(&e) {
                    shared.metrics.handshake_failed(reason);
                    if reason == "no_certificate" {
                        state.audit.handshake_refused(Some(peer.ip()), None, None, reason, "no client certificate presented");
                    }
                    tracing::debug!(%peer, reason, error = %e, "TLS handshake failed");
                } else {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                }
                return;
            }
            Ok(Ok(tls)) => tls,
        }
    };

    let (_, session) = tls.get_ref();
    let sni = session.server_name().map(str::to_ascii_lowercase);
    let is_h2 = session.alpn_protocol() == Some(b"h2");
    let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
    let (identity, cert_headers) = match session.peer_certificates() {
        Some(chain @ [leaf, intermediates @ ..]) => {
            let trust = shared.trust.load();
            // A resumed session was not re-verified by rustls: check it against the anchors
            // and time in force now. A full handshake was just verified; only parse.
            let parsed = if resumed {
                trust.verify(leaf, intermediates)
            } else {
                DeviceIdentity::from_der(leaf.as_ref(), &trust.trust_domain)
                    .map_err(|e| VerifyError::Malformed(e.to_string()))
            };
            match parsed {
                Ok(identity) => {
                    let headers = CertHeaders::build(&identity, chain);
                    (Some(identity), Some(headers))
                }
                Err(e) => {
                    shared.metrics.handshake_failed(e.code());
                    tracing::warn!(%peer, reason = e.code(), detail = %e, resumed, "client certificate refused");
                    return;
                }
            }
        }
        _ => (None, None),
    };

    // A child of the hard stop, so that the connection loop (woken twice per keep-alive
    // request) polls one token for both: every poll of a token's `cancelled()` takes the
    // lock of its waiter list (≈ 300 instructions each in the keep-alive profile).
    let cut = hard_stop.child_token();
    let fingerprint_hex = identity.as_ref().map(DeviceIdentity::fingerprint_hex);
    let registration = match (&identity, &fingerprint_hex) {
        (Some(id), Some(fp)) => id.device_id.as_deref().map(|device| {
            let chain: Arc<[CertificateDer<'static>]> = session
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect();
            shared
                .registry
                .register(device, &id.serial, fp, peer.ip(), chain, cut.clone())
        }),
        _ => None,
    };
    let conn = Arc::new(ConnState {
        peer,
        sni,
        identity,
        fingerprint_hex,
        cert_headers,
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        memo: Mutex::new(Memo::default()),
        upstreams: Arc::new(IdleUpstreams::default()),
        cut: cut.clone(),
        shutdown: shutdown.clone(),
        // HTTP/2 sends frames (PING, SETTINGS, WINDOW_UPDATE) between requests; its streams
        // are bounded by hyper's HTTP/2 settings instead.
        activity: Activity::new(!is_h2),
        _registration: registration,
        _open: OpenGuard::new(&shared.metrics.connections_open),
    });

    let service = {
        let shared = shared.clone();
        let conn = conn.clone();
        service_fn(move |req| crate::proxy::handle(shared.clone(), conn.clone(), req))
    };
    let io = Watched {
        inner: tls,
        conn: conn.clone(),
    };
    let serving = state
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(serving);

    let idle_timeout = state.limits.idle_timeout;
    let header_read_timeout = state.limits.header_read_timeout;
    // A head that started to arrive is noticed at the next check: checking four times per
    // `header_read_timeout` closes a slow head within 1.25 × the limit.
    let head_check = (header_read_timeout / 4).max(Duration::from_millis(10));
    drop(state);
    let idle_check = tokio::time::sleep(head_check.min(idle_timeout));
    tokio::pin!(idle_check);
    let mut draining = false;
    let mut closing_idle = false;
    loop {
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = cut.cancelled() => {
                // Dropping the hyper connection closes the socket: every keep-alive request,
                // HTTP/2 stream and pending response on it ends now.
                if !hard_stop.is_cancelled() {
                    tracing::info!(%peer, "connection cut: device no longer trusted");
                }
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                serving.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = &mut idle_check => {
                if conn
                    .activity
                    .head_pending_for()
                    .is_some_and(|pending| pending >= header_read_timeout)
                {
                    tracing::debug!(%peer, "request head not complete in time; closing");
                    break;
                }
                let next = match conn.activity.idle_for() {
                    Some(_) if closing_idle => break,
                    Some(idle) if idle >= idle_timeout => {
                        tracing::debug!(%peer, "closing idle connection");
                        if !draining {
                            serving.as_mut().graceful_shutdown();
                            draining = true;
                        }
                        closing_idle = true;
                        // Give the client a moment to see the close, then drop.
                        Duration::from_secs(5)
                    }
                    Some(idle) => idle_timeout - idle,
                    None => idle_timeout,
                };
                idle_check.as_mut().reset(Instant::now() + next.min(head_check));
            }
        }
    }
}
