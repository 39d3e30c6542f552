//! The built-in demo upstream: a plain-HTTP app on loopback that shows what reached it.
//!
//! `portcullis up` puts it behind the gateway so that a newcomer sees the identity headers an
//! application receives; the end-to-end tests use it to assert which headers got through (and
//! which spoofed ones did not).
//!
//! - any request: `200`, a JSON echo of method, path, query, HTTP version, every header *as
//!   received, in order, repeats kept* (`headers`: `["name: value", …]`, names lowercase), and
//!   the number of request body bytes (the body is read as it streams, never kept);
//! - `GET /stream?n=N&delay_ms=D`: `N` chunks (`chunk i\n`), one every `D` ms (defaults 5 and
//!   200), for streaming tests: a proxy that buffers shows up as a late first byte;
//! - a request with `Upgrade: websocket` (RFC 6455 §4.2): `101` and then every text or binary
//!   message is echoed back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use portcullis_gateway::CancellationToken;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// A bound, not yet running, demo upstream.
pub struct DemoUpstream {
    listener: TcpListener,
}

impl DemoUpstream {
    /// Binds `addr` (port 0 picks a free port; see [`DemoUpstream::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo upstream: cannot listen on {addr}"))?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled. Open connections end with the runtime.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: keep serving rather than dying; back off a bit.
                        tracing::warn!(error = %e, "demo upstream: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "demo upstream: connection ended");
                }
            });
        }
    }

    /// Binds and runs in a background task; for tests and `portcullis up`.
    pub async fn spawn(
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> anyhow::Result<SocketAddr> {
        let upstream = Self::bind(addr).await?;
        let local = upstream.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = upstream.run(shutdown).await {
                tracing::error!("demo upstream: {e:#}");
            }
        });
        Ok(local)
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if is_websocket_upgrade(&req) {
        return Ok(websocket(req));
    }
    if req.uri().path() == "/stream" {
        return Ok(stream(req.uri().query().unwrap_or("")));
    }
    Ok(echo(req).await)
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes: u64 = 0;
    let mut body_error = None;
    // Count the body as it streams; a test that uploads a large body must not make us hold it.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    // `name: value` strings rather than an object: repeats and order are what a spoofing
    // test needs to see, and one string per line reads well in a terminal.
    let headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(name, value)| format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "body_error": body_error,
    });
    let mut text = serde_json::to_string_pretty(&echo).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn query_param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn stream(query: &str) -> Response<Body> {
    // Bounded so that a typo cannot make the demo app stream for hours.
    let n = query_param(query, "n").unwrap_or(5).min(10_000);
    let delay = Duration::from_millis(query_param(query, "delay_ms").unwrap_or(200).min(60_000));
    let chunks = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

fn websocket(req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        let mut r = Response::new(Full::new(Bytes::from("missing Sec-WebSocket-Key\n")).boxed());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "demo upstream: upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(_) => break,
                // Pings are answered by tungstenite itself; pongs need nothing.
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, http::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}
