//! The operations listener (plain HTTP; bind it to loopback or a management network):
//!
//! - `GET /metrics` — Prometheus text format of the registry passed in;
//! - `GET /healthz` — 200 while the process runs;
//! - `GET /readyz` — 200 when the gateway listener is accepting and trust anchors are loaded,
//!   else 503 with the reason (200 when no gateway is configured);
//! - `GET /.well-known/portcullis/jwks.json` — the assertion keys.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::assertion::JWKS_PATH;
use crate::body::{full, ResponseBody};
use crate::Gateway;

/// A bound admin listener; [`Admin::run`] serves it.
pub struct Admin {
    listener: std::net::TcpListener,
    registry: prometheus::Registry,
    gateway: Option<Gateway>,
}

impl Admin {
    /// Binds `addr` (port 0 picks a free port; see [`Admin::local_addr`]).
    pub fn bind(
        addr: SocketAddr,
        registry: prometheus::Registry,
        gateway: Option<Gateway>,
    ) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("admin.listen: cannot bind {addr}"))?;
        listener
            .set_nonblocking(true)
            .context("admin listener: set_nonblocking")?;
        Ok(Self {
            listener,
            registry,
            gateway,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown`; must run inside a Tokio runtime.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .context("admin listener: register with the runtime")?;
        let tracker = TaskTracker::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10));
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let registry = self.registry.clone();
            let gateway = self.gateway.clone();
            let builder = builder.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let service = service_fn(move |req| {
                    let response = route(&req, &registry, gateway.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
        Ok(())
    }
}

/// Binds and serves in one call.
pub async fn serve(
    addr: SocketAddr,
    registry: prometheus::Registry,
    gateway: Option<Gateway>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Admin::bind(addr, registry, gateway)?.run(shutdown).await
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(
    req: &Request<Incoming>,
    registry: &prometheus::Registry,
    gateway: Option<&Gateway>,
) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match gateway.map(Gateway::readiness) {
            None | Some(Ok(())) => text(StatusCode::OK, "ready\n"),
            Some(Err(why)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            if let Some(g) = gateway {
                g.refresh_gauges();
            }
            let mut r = text(StatusCode::OK, crate::metrics::render(registry));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        JWKS_PATH => match gateway {
            Some(g) => crate::proxy::jwks_http_response(req.method(), g.jwks()),
            None => text(StatusCode::NOT_FOUND, "no gateway configured\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
