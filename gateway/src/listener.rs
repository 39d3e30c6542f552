//! The accept loop and the life of one client connection: TLS handshake (with a deadline),
//! the device identity parsed once, registration for cutting, HTTP/1.1 + HTTP/2 serving, idle
//! timeout, cut on status change, graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::Limits;
use portcullis_policy::{DeviceIdentity, VerifyError};
use rustls::HandshakeKind;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::identity_headers::CertHeaders;
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
        // Slowloris: the whole request head must arrive within this time. hyper arms it as
        // soon as it waits for a head, so it also bounds an idle keep-alive connection.
        .header_read_timeout(limits.header_read_timeout)
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
/// ("no request in flight for this long").
pub(crate) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    last_change_ms: AtomicU64,
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
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Release);
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

    let cut = CancellationToken::new();
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
        cut: cut.clone(),
        shutdown: shutdown.clone(),
        activity: Activity::new(),
        _registration: registration,
        _open: OpenGuard::new(&shared.metrics.connections_open),
    });

    let service = {
        let shared = shared.clone();
        let conn = conn.clone();
        service_fn(move |req| crate::proxy::handle(shared.clone(), conn.clone(), req))
    };
    let serving = state
        .http
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .into_owned();
    tokio::pin!(serving);

    let idle_timeout = state.limits.idle_timeout;
    drop(state);
    let idle_check = tokio::time::sleep(idle_timeout);
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
                tracing::info!(%peer, "connection cut: device no longer trusted");
                break;
            }
            _ = hard_stop.cancelled() => break,
            _ = shutdown.cancelled(), if !draining => {
                serving.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = &mut idle_check => {
                match conn.activity.idle_for() {
                    Some(_) if closing_idle => break,
                    Some(idle) if idle >= idle_timeout => {
                        tracing::debug!(%peer, "closing idle connection");
                        if !draining {
                            serving.as_mut().graceful_shutdown();
                            draining = true;
                        }
                        closing_idle = true;
                        // Give the client a moment to see the close, then drop.
                        idle_check.as_mut().reset(Instant::now() + Duration::from_secs(5));
                    }
                    Some(idle) => idle_check.as_mut().reset(Instant::now() + (idle_timeout - idle)),
                    None => idle_check.as_mut().reset(Instant::now() + idle_timeout),
                }
            }
        }
    }
}
