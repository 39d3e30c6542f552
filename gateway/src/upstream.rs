//! Upstream targets: where a route forwards to and how to reach it — `http://`, or `https://`
//! with rustls (ring provider), the system roots or a per-route CA bundle, and an optional
//! client certificate.
//!
//! Upstreams are spoken to in HTTP/1.1 only (ALPN `http/1.1`): it is what every app server
//! speaks, it keeps `Upgrade` (WebSocket) a plain hop, and an HTTP/2 client request is rewritten
//! to HTTP/1.1 on the way (see `proxy.rs`). The connections themselves belong to the client
//! connection that uses them and are spoken to by the gateway's own HTTP/1.1 client (`h1/`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http::uri::{Authority, Scheme};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::provider;

/// The TLS settings of `https://` upstreams: roots, client certificate, ALPN `http/1.1`.
pub(crate) type UpstreamTls = Arc<ClientConfig>;

/// TCP connect and TLS handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_builder() -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")
}

fn finish(mut tls: ClientConfig) -> UpstreamTls {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// The settings for `https://` upstreams without their own CA: the system roots.
pub(crate) fn default_tls() -> anyhow::Result<UpstreamTls> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs_load();
    let (added, _ignored) = roots.add_parsable_certificates(native);
    if added == 0 {
        tracing::debug!("no system CA certificates found; https upstreams need `upstream_ca`");
    }
    Ok(finish(
        tls_builder()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The system's CA certificates (unreadable ones are skipped and logged at debug).
fn rustls_native_certs_load() -> Vec<CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        tracing::debug!(error = %e, "while loading system CA certificates");
    }
    result.certs
}

/// The settings for a route with its own upstream CA and/or client certificate.
pub(crate) fn route_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<UpstreamTls> {
    let roots = match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("upstream_ca: cannot read {}", path.display()))?;
            let mut roots = RootCertStore::empty();
            for der in rustls_pemfile::certs(&mut pem.as_slice()) {
                let der = der.with_context(|| format!("upstream_ca: {}", path.display()))?;
                roots
                    .add(der)
                    .map_err(|e| anyhow!("upstream_ca: {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(anyhow!("upstream_ca: no CERTIFICATE in {}", path.display()));
            }
            roots
        }
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs_load());
            roots
        }
    };
    let builder = tls_builder()?.with_root_certificates(Arc::new(roots));
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certified = crate::tls::load_certified_key(cert, key)
                .context("upstream_cert / upstream_key")?;
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(certified)))
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(anyhow!("upstream_cert and upstream_key go together")),
    };
    Ok(finish(tls))
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why an upstream request failed, by phase (the phase decides the Proxy-Status error type).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("dns error: cannot resolve the upstream host")]
    Dns(#[source] io::Error),
    #[error("cannot connect to the upstream")]
    Connect(#[source] io::Error),
    #[error("upstream TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("upstream connection failed")]
    Io(#[source] io::Error),
    #[error("invalid HTTP/1.1 exchange with the upstream")]
    Protocol(#[source] crate::h1::ProtocolError),
    #[error("the request body failed")]
    RequestBody(#[source] crate::body::BoxError),
}

/// One upstream endpoint: a route's `to` with the TLS settings it is reached with. Shared by
/// the upstream connections opened to it; a reload builds new targets, so connections opened
/// under the old config are never reused for the new one.
pub(crate) struct Target {
    /// As in the URL (brackets around an IPv6 literal), for DNS.
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    pub fn new(scheme: &Scheme, authority: &Authority, tls: &UpstreamTls) -> anyhow::Result<Self> {
        let https = *scheme == Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = bare.parse::<IpAddr>().ok();
        let tls = if https {
            let name = ServerName::try_from(bare.to_string())
                .map_err(|_| anyhow!("`{host}` is not a TLS server name"))?;
            Some((TlsConnector::from(tls.clone()), name))
        } else {
            None
        };
        if host.is_empty() {
            bail!("no host");
        }
        Ok(Self {
            host: bare.to_string(),
            ip,
            port,
            tls,
        })
    }

    /// TCP (+ TLS) to the upstream, within [`CONNECT_TIMEOUT`].
    pub async fn open(&self) -> Result<UpstreamIo, UpstreamError> {
        let opening = async {
            let tcp = self.tcp().await?;
            match &self.tls {
                None => Ok(UpstreamIo::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|tls| UpstreamIo::Tls(Box::new(tls)))
                    .map_err(UpstreamError::Tls),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            ))),
        }
    }

    async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let addrs: Vec<SocketAddr> = match self.ip {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(UpstreamError::Dns)?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        if addrs.is_empty() {
            return Err(UpstreamError::Dns(last));
        }
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = e,
            }
        }
        Err(UpstreamError::Connect(last))
    }
}

/// A connection to an upstream, plain or TLS.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // The h1 client writes head and body with one `writev` when the stream supports it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
