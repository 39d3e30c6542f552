//! Upstream HTTP clients: pooled keep-alive connections, `http://` and `https://` (rustls with
//! the ring provider), a per-route CA bundle and an optional client certificate.
//!
//! Upstreams are spoken to in HTTP/1.1 only (ALPN `http/1.1`): it is what every app server
//! speaks, it keeps `Upgrade` (WebSocket) a plain hop, and an HTTP/2 client request is rewritten
//! to HTTP/1.1 on the way (see `proxy.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;

use crate::body::RequestBody;
use crate::tls::provider;

pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE: Duration = Duration::from_secs(90);

fn connector(tls: ClientConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

fn client(tls: ClientConfig) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(connector(tls))
}

fn tls_builder() -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")
}

/// The client for `https://` upstreams without their own CA: the system roots.
pub(crate) fn default_client() -> anyhow::Result<UpstreamClient> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs_load();
    let (added, _ignored) = roots.add_parsable_certificates(native);
    if added == 0 {
        tracing::debug!("no system CA certificates found; https upstreams need `upstream_ca`");
    }
    let tls = tls_builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(client(tls))
}

/// The system's CA certificates (unreadable ones are skipped and logged at debug).
fn rustls_native_certs_load() -> Vec<CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        tracing::debug!(error = %e, "while loading system CA certificates");
    }
    result.certs
}

/// A client for a route with its own upstream CA and/or client certificate.
pub(crate) fn route_client(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<UpstreamClient> {
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
    Ok(client(tls))
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
