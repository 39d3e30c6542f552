//! One request: route, status + policy decision (every request, not only at the handshake),
//! identity headers, forwarding with streaming bodies both ways, WebSocket / `Upgrade`
//! tunnels, and the audit line.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use portcullis_policy::{Decision, RequestFacts, StatusSnapshot, VerifyError};

use crate::assertion::JWKS_PATH;
use crate::audit::{now_rfc3339, AuditRecord};
use crate::body::{full, Guarded, RequestBody, ResponseBody};
use crate::h1::client::{Outbound, Upgraded};
use crate::h1::head::{Framing, RequestHead};
use crate::identity_headers::{self, RecordHeaders};
use crate::listener::ConnState;
use crate::memo::DecisionMemo;
use crate::outbound::{self, has_token, strip_hop_by_hop};
use crate::response::{self, denied, generated, ProxyError, X_REQUEST_ID};
use crate::routes::Route;
use crate::upstream::UpstreamError;
use crate::{h1, Shared, State};

/// hyper's service entry point.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = conn.begin_request();
    let response = process(&shared, &conn, req).await;
    // The connection counts as busy until the response body is done (long downloads and
    // long polls are not "idle").
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        http_body_util::combinators::UnsyncBoxBody::new(Guarded::new(body, in_flight)),
    ))
}

/// What the audit line and metrics of one request need.
struct Ctx<'a> {
    shared: &'a Shared,
    state: &'a State,
    conn: &'a ConnState,
    request_id: HeaderValue,
    started: Instant,
    method: &'a str,
    path: &'a str,
}

impl Ctx<'_> {
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        route: Option<&Route>,
        decision: &'static str,
        reason: &str,
        detail: &str,
        status: StatusCode,
        upstream_status: Option<u16>,
    ) {
        let elapsed = self.started.elapsed();
        match route {
            Some(route) => {
                route.metrics.count(status);
                route.metrics.duration.observe(elapsed.as_secs_f64());
            }
            None => {
                let m = &self.shared.metrics;
                m.requests.with_label_values(&["-", status.as_str()]).inc();
                m.request_duration
                    .with_label_values(&["-"])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if !self.state.audit.enabled() {
            return;
        }
        let identity = self.conn.identity.as_ref();
        self.state.audit.write(&AuditRecord {
            time: now_rfc3339(),
            event: "request",
            request_id: Some(self.request_id()),
            device_id: identity.and_then(|i| i.device_id.as_deref()),
            fingerprint: self.conn.fingerprint_hex.as_deref(),
            route: route.map(|r| &*r.name),
            method: Some(self.method),
            path: Some(self.path),
            source_ip: Some(self.conn.peer.ip()),
            decision,
            reason,
            detail,
            upstream_status,
            latency_ms: Some(elapsed.as_secs_f64() * 1000.0),
        });
    }

    /// An allowed request that failed on the way (upstream down, timeout, …): audited as
    /// `allow` with the failure as reason, answered by the gateway.
    fn fail(
        &self,
        route: &Route,
        status: StatusCode,
        error: ProxyError,
        code: &str,
        first_line: &str,
        detail: &str,
    ) -> Response<ResponseBody> {
        self.finish(Some(route), "allow", code, detail, status, None);
        generated(status, error, code, first_line, self.request_id())
    }

    /// A gateway-generated refusal that is not a policy decision (bad request, no route, …).
    fn refuse(
        &self,
        route: Option<&Route>,
        status: StatusCode,
        error: ProxyError,
        code: &str,
        first_line: &str,
        detail: &str,
    ) -> Response<ResponseBody> {
        self.finish(route, "deny", code, detail, status, None);
        generated(status, error, code, first_line, self.request_id())
    }
}

/// The access decision for this request, and its `portcullis_decisions_total` counted.
/// Rules that do not read the request give the same decision for every request of a
/// connection until the route table or the status snapshot changes: that one is kept on the
/// connection (`memo.rs`).
fn decide(
    shared: &Shared,
    state: &State,
    conn: &ConnState,
    route: &Route,
    snapshot: &StatusSnapshot,
    facts: &RequestFacts<'_>,
) -> Decision {
    let memoizable = conn.identity.is_some() && !route.policy.is_request_dependent();
    if memoizable {
        let memo = conn.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = memo.decision.as_ref() {
            if m.matches(state.epoch, route.index, snapshot.generation) {
                m.counter.inc();
                return m.decision.clone();
            }
        }
    }
    // The route table's shared cache serves the first request of a connection.
    let decision = state.routes.cache.decide(
        route.index,
        &route.policy,
        snapshot,
        conn.identity.as_ref(),
        facts,
    );
    let counter = shared.metrics.decisions.with_label_values(&[
        if decision.allow { "allow" } else { "deny" },
        decision.reason.code,
    ]);
    counter.inc();
    if memoizable {
        conn.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .decision = Some(DecisionMemo {
            table: state.epoch,
            route: route.index,
            generation: snapshot.generation,
            decision: decision.clone(),
            counter,
        });
    }
    decision
}

/// The inventory header values of this connection's device under `snapshot`.
fn record_headers(conn: &ConnState, snapshot: &StatusSnapshot) -> RecordHeaders {
    let mut memo = conn.memo.lock().unwrap_or_else(PoisonError::into_inner);
    match &memo.record {
        Some((generation, headers)) if *generation == snapshot.generation => headers.clone(),
        _ => {
            let record = conn
                .identity
                .as_ref()
                .and_then(|i| i.device_id.as_deref())
                .and_then(|id| snapshot.device(id));
            let headers = RecordHeaders::build(record);
            memo.record = Some((snapshot.generation, headers.clone()));
            headers
        }
    }
}

async fn process(
    shared: &Shared,
    conn: &Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let state = shared.state.load_full();

    // Public key material: served before routing, no client certificate needed.
    if parts.uri.path() == JWKS_PATH {
        return jwks_response(&parts.method, state.assertion.jwks());
    }

    let path = parts.uri.path();
    let ctx = Ctx {
        shared,
        state: &state,
        conn,
        request_id: shared.request_ids.next(),
        started,
        method: parts.method.as_str(),
        path,
    };

    if parts.method == Method::CONNECT {
        return ctx.refuse(
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HttpRequestDenied,
            "connect_not_allowed",
            "CONNECT is not served here",
            "",
        );
    }
    let Some((host, host_value)) = request_host(&parts) else {
        return ctx.refuse(
            None,
            StatusCode::BAD_REQUEST,
            ProxyError::HttpRequestError,
            "no_host",
            "bad request: no host",
            "request carries no Host / :authority",
        );
    };
    if let Err(why) = check_path(path) {
        return ctx.refuse(
            None,
            StatusCode::BAD_REQUEST,
            ProxyError::HttpRequestError,
            "bad_path",
            "bad request: path",
            why,
        );
    }
    let Some(route) = state.routes.find(&host, path) else {
        return ctx.refuse(
            None,
            StatusCode::NOT_FOUND,
            ProxyError::HttpRequestDenied,
            "no_route",
            "no route for this host and path",
            &format!("host {host}"),
        );
    };
    // RFC 9110 §15.5.20: a request for a host this connection was not set up for.
    if let Some(sni) = conn.sni.as_deref() {
        if sni != host && state.routes.find(sni, path).map(|r| r.index) != Some(route.index) {
            return ctx.refuse(
                Some(route),
                StatusCode::MISDIRECTED_REQUEST,
                ProxyError::HttpRequestDenied,
                "misdirected_request",
                "misdirected request",
                &format!("SNI {sni} and host {host} select different routes"),
            );
        }
    }

    // A certificate valid at the handshake may expire on a long-lived connection.
    if let Some(identity) = conn.identity.as_ref() {
        let skew = shared.trust.load().options.clock_skew;
        if SystemTime::now() > identity.not_after + skew {
            let code = VerifyError::Expired.code();
            shared
                .metrics
                .decisions
                .with_label_values(&["deny", code])
                .inc();
            ctx.finish(
                Some(route),
                "deny",
                code,
                "certificate expired during the connection",
                response::cert_error_status(),
                None,
            );
            return denied(response::cert_error_status(), code, ctx.request_id());
        }
    }

    let snapshot = shared.status.current();
    let facts = RequestFacts {
        source_ip: conn.peer.ip(),
        method: parts.method.as_str(),
        path,
    };
    let decision = decide(shared, &state, conn, route, &snapshot, &facts);
    let code = decision.reason.code;
    if !decision.allow {
        let status = if conn.identity.is_none() && code == "no_certificate" {
            response::cert_required_status()
        } else {
            StatusCode::FORBIDDEN
        };
        ctx.finish(
            Some(route),
            "deny",
            code,
            &decision.reason.detail,
            status,
            None,
        );
        return denied(status, code, ctx.request_id());
    }

    // Allowed: forward.
    let limit = state.limits.max_body_bytes;
    if limit > 0 && content_length(&parts.headers).is_some_and(|n| n > limit) {
        return ctx.refuse(
            Some(route),
            StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HttpRequestDenied,
            "body_too_large",
            "request body too large",
            &format!("Content-Length over {limit}"),
        );
    }

    let upgrade = upgrade_protocol(&parts);
    let client_upgrade = match upgrade {
        Some(_) => parts.extensions.remove::<OnUpgrade>(),
        None => None,
    };
    let target = match route.upstream.uri_for(parts.uri.path_and_query()) {
        Ok(uri) => uri,
        Err(e) => {
            return ctx.refuse(
                Some(route),
                StatusCode::BAD_REQUEST,
                ProxyError::HttpRequestError,
                "bad_path",
                "bad request: path",
                &e.to_string(),
            )
        }
    };
    // The upstream request head, written once: the client's end-to-end fields, then the
    // gateway's (forwarding, identity, upgrade, Host, request id), then the framing.
    // Upstreams speak HTTP/1.1: an HTTP/2 request is rewritten here (its pseudo-headers are
    // the method and target, `:authority` becomes the Host written below).
    let mut head = RequestHead::new(
        &parts.method,
        target.path_and_query().map_or("/", |pq| pq.as_str()),
    );
    outbound::copy_end_to_end(&mut head, &parts.headers, parts.version == Version::HTTP_2);
    identity_headers::set_forwarded(&mut head, &conn.forwarded_for, Some(&host_value));
    if let (Some(identity), Some(cert)) = (conn.identity.as_ref(), conn.cert_headers.as_ref()) {
        let assertion = if route.headers.assertion {
            let record = identity
                .device_id
                .as_deref()
                .and_then(|id| snapshot.device(id));
            let signed = state.assertion.token_for_connection(
                &mut conn
                    .memo
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .assertion,
                identity,
                record,
                &host,
                snapshot.generation,
                SystemTime::now(),
            );
            match signed {
                Ok(token) => token,
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign the identity assertion");
                    return ctx.fail(
                        route,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ProxyError::ProxyInternalError,
                        "assertion_failed",
                        "internal error",
                        &format!("{e:#}"),
                    );
                }
            }
        } else {
            None
        };
        let record = if route.headers.plain {
            record_headers(conn, &snapshot)
        } else {
            RecordHeaders::default()
        };
        identity_headers::inject(&mut head, route.headers, cert, &record, assertion);
    }
    if let Some(proto) = &upgrade {
        head.header(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
        head.header(&header::UPGRADE, proto);
    }
    head.header(
        &header::HOST,
        if route.preserve_host {
            &host_value
        } else {
            &route.upstream.host_header
        },
    );
    head.header(&X_REQUEST_ID, &ctx.request_id);
    let framing = request_framing(&body, &parts.headers);
    let outbound = Outbound {
        head: head.finish(framing),
        framing,
        head_request: parts.method == Method::HEAD,
        replayable: framing == Framing::Empty && parts.method.is_idempotent(),
    };
    let (body, exceeded) = RequestBody::new(body, limit);

    // Boxed: the future holds the request's state and is large; moved into the timeout and
    // the request's own future by value it cost more in copies than the allocation does.
    let sending = Box::pin(h1::client::send(
        &conn.upstreams,
        &route.upstream.target,
        outbound,
        body,
    ));
    let sent = tokio::time::timeout(state.limits.upstream_timeout, sending).await;
    let (upstream_head, mut upstream_body) = match sent {
        Err(_) => {
            return ctx.fail(
                route,
                StatusCode::GATEWAY_TIMEOUT,
                ProxyError::HttpResponseTimeout,
                "upstream_timeout",
                "upstream timed out",
                &format!(
                    "no response head within {:?}",
                    state.limits.upstream_timeout
                ),
            )
        }
        Ok(Err(e)) => {
            if exceeded.load(Ordering::Acquire) {
                return ctx.refuse(
                    Some(route),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ProxyError::HttpRequestDenied,
                    "body_too_large",
                    "request body too large",
                    &format!("body over {limit} bytes"),
                );
            }
            let (error, code) = classify_upstream_error(&e);
            let detail = error_chain(&e);
            tracing::warn!(route = %route.name, error = %detail, "upstream request failed");
            return ctx.fail(
                route,
                StatusCode::BAD_GATEWAY,
                error,
                code,
                "bad gateway",
                &detail,
            );
        }
        Ok(Ok(resp)) => resp,
    };

    let status = upstream_head.status;
    let is_switch = status == StatusCode::SWITCHING_PROTOCOLS;
    if is_switch {
        let (Some(client_upgrade), Some(upstream_io)) =
            (client_upgrade, upstream_body.take_upgraded())
        else {
            return ctx.fail(
                route,
                StatusCode::BAD_GATEWAY,
                ProxyError::HttpProtocolError,
                "unexpected_upgrade",
                "bad gateway",
                "upstream switched protocols without an Upgrade request",
            );
        };
        spawn_tunnel(shared, conn, client_upgrade, upstream_io);
    }
    let mut resp_headers = upstream_head.headers;
    let upgrade_reply = if is_switch {
        resp_headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(&mut resp_headers, true);
    if let Some(proto) = upgrade_reply {
        resp_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp_headers.insert(header::UPGRADE, proto);
    }
    resp_headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    ctx.finish(
        Some(route),
        "allow",
        code,
        &decision.reason.detail,
        status,
        Some(status.as_u16()),
    );
    let mut response = Response::new(upstream_body.boxed_unsync());
    *response.status_mut() = status;
    // An HTTP/1.0 upstream's answer goes out as HTTP/1.0 to an HTTP/1.1 client, as before.
    *response.version_mut() = upstream_head.version;
    *response.headers_mut() = resp_headers;
    response
}

/// How the request body goes upstream: as it came when its length is known (an HTTP/1.1
/// `Content-Length`, or an HTTP/2 one), chunked otherwise; a declared `Content-Length: 0`
/// is passed on.
fn request_framing(body: &Incoming, headers: &HeaderMap) -> Framing {
    if body.is_end_stream() {
        return if headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Length(0)
        } else {
            Framing::Empty
        };
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections until
/// either side closes, the device is cut, or shutdown starts.
fn spawn_tunnel(shared: &Shared, conn: &Arc<ConnState>, client: OnUpgrade, upstream: Upgraded) {
    // The tunnel keeps the connection state (and so its registry entry) alive: a status change
    // cuts it through the child token.
    let conn = conn.clone();
    let cut = conn.cut.child_token();
    shared.tasks.spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(client_error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = upstream;
        tokio::select! {
            _ = cut.cancelled() => {
                tracing::info!(peer = %conn.peer, "tunnel cut: device no longer trusted");
            }
            _ = conn.shutdown.cancelled() => {}
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(e) = result {
                    tracing::debug!(peer = %conn.peer, error = %e, "tunnel ended with an error");
                }
            }
        }
    });
}

fn jwks_response(method: &Method, jwks: bytes::Bytes) -> Response<ResponseBody> {
    let mut resp = if method == Method::GET || method == Method::HEAD {
        let mut r = Response::new(if method == Method::HEAD {
            full(bytes::Bytes::new())
        } else {
            full(jwks)
        });
        // RFC 7517 §8.5.
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        r
    } else {
        let mut r = Response::new(full("method not allowed\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    };
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub(crate) fn jwks_http_response(method: &Method, jwks: bytes::Bytes) -> Response<ResponseBody> {
    jwks_response(method, jwks)
}

/// The host the client asked for: lowercase, without port or trailing dot; and the value as
/// sent (for `X-Forwarded-Host` and `preserve_host`). The URI authority wins (HTTP/2
/// `:authority`, absolute-form; RFC 9112 §3.2.2 says to ignore `Host` then).
pub(crate) fn request_host(parts: &Parts) -> Option<(String, HeaderValue)> {
    if parts.uri.authority().is_none() {
        if let Some(found) = parts.headers.get(header::HOST).and_then(plain_host) {
            return Some(found);
        }
    }
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => {
            let value = parts.headers.get(header::HOST)?;
            value.to_str().ok()?.parse::<http::uri::Authority>().ok()?
        }
    };
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let value = HeaderValue::from_str(authority.as_str()).ok()?;
    Some((host, value))
}

/// The common `Host` — a lowercase name or IPv4 address, optionally `:port` — without
/// parsing it as a URI authority or copying the value; `None` for anything else (the full
/// parse decides).
fn plain_host(value: &HeaderValue) -> Option<(String, HeaderValue)> {
    let bytes = value.as_bytes();
    let (host, port) = match bytes.iter().position(|b| *b == b':') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &b""[..]),
    };
    let host_ok = !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && host.last() != Some(&b'.');
    let port_ok = port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
    if !host_ok || !port_ok || (port.is_empty() && bytes.len() != host.len()) {
        return None;
    }
    let host = std::str::from_utf8(host).ok()?.to_owned();
    Some((host, value.clone()))
}

/// Refuses paths that an upstream could resolve to something the route and rules never saw:
/// dot-segments (RFC 3986 §5.2.4), also percent-encoded; encoded `/` and `\`; backslashes;
/// empty segments (`//`, which some servers merge). The gateway refuses rather than normalises.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("path must start with /");
    }
    if path.contains('\\') {
        return Err("backslash in path");
    }
    if path.contains("//") {
        return Err("empty path segment");
    }
    let is_dot_segment = |segment: &str| segment == "." || segment == "..";
    if !path.contains('%') {
        // The common case: no allocation.
        return match path.split('/').any(is_dot_segment) {
            true => Err("dot-segment in path"),
            false => Ok(()),
        };
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err("encoded slash or backslash in path");
    }
    if lower
        .split('/')
        .any(|segment| is_dot_segment(&segment.replace("%2e", ".")))
    {
        return Err("dot-segment in path");
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The protocol of an HTTP/1.1 `Upgrade` request (RFC 9110 §7.8), if this is one.
fn upgrade_protocol(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
        return None;
    }
    parts.headers.get(header::UPGRADE).cloned()
}

/// Every error in `e`'s chain, looking inside `io::Error`s that wrap another error (their
/// `source()` skips the wrapped error itself; tokio-rustls and hyper-util nest them).
fn each_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
    visit: &mut dyn FnMut(&'a (dyn std::error::Error + 'static)),
) {
    let mut current = Some(e);
    while let Some(err) = current {
        visit(err);
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            each_cause(inner, visit);
        }
        current = err.source();
    }
}

fn classify_upstream_error(e: &UpstreamError) -> (ProxyError, &'static str) {
    let mut tls = None;
    each_cause(e, &mut |cause| {
        if let Some(t) = cause.downcast_ref::<rustls::Error>() {
            tls.get_or_insert(match t {
                rustls::Error::InvalidCertificate(_) => {
                    (ProxyError::TlsCertificateError, "upstream_tls_certificate")
                }
                _ => (ProxyError::TlsProtocolError, "upstream_tls"),
            });
        }
    });
    if let Some(found) = tls {
        return found;
    }
    match e {
        UpstreamError::Dns(_) => (ProxyError::DnsError, "upstream_connect_failed"),
        UpstreamError::Connect(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                (ProxyError::ConnectionRefused, "upstream_connect_failed")
            }
            std::io::ErrorKind::TimedOut => {
                (ProxyError::ConnectionTimeout, "upstream_connect_failed")
            }
            _ => (
                ProxyError::DestinationUnavailable,
                "upstream_connect_failed",
            ),
        },
        UpstreamError::Tls(_) => (ProxyError::TlsProtocolError, "upstream_tls"),
        UpstreamError::Io(_) | UpstreamError::Protocol(_) | UpstreamError::RequestBody(_) => {
            (ProxyError::HttpProtocolError, "upstream_error")
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).expect("request").into_parts().0
    }

    #[test]
    fn host_from_authority_or_host_header() {
        let p = parts(Request::get("/x").header("host", "App.Example.com:8443"));
        let (host, value) = request_host(&p).expect("host");
        assert_eq!(host, "app.example.com");
        assert_eq!(value, "App.Example.com:8443");
        // Absolute-form / HTTP/2 :authority wins over Host.
        let p = parts(Request::get("https://a.example/x").header("host", "b.example"));
        assert_eq!(request_host(&p).expect("host").0, "a.example");
        let p = parts(Request::get("/x").header("host", "[::1]:443"));
        assert_eq!(request_host(&p).expect("host").0, "[::1]");
        let p = parts(Request::get("/x").header("host", "example.com."));
        assert_eq!(request_host(&p).expect("host").0, "example.com");
        let p = parts(Request::get("/x").header("host", "app.example.com:8443"));
        let (host, value) = request_host(&p).expect("host");
        assert_eq!(
            (host.as_str(), value.to_str().ok()),
            ("app.example.com", Some("app.example.com:8443"))
        );
        let p = parts(Request::get("/x").header("host", "10.0.0.1"));
        assert_eq!(request_host(&p).expect("host").0, "10.0.0.1");
        assert!(request_host(&parts(Request::get("/x"))).is_none());
        assert!(request_host(&parts(Request::get("/x").header("host", "a b"))).is_none());
    }

    #[test]
    fn paths_that_could_escape_a_route_are_refused() {
        for ok in ["/", "/a/b", "/a.b/c..d", "/file%2Ename", "/a/.well-known/x"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/a/../admin",
            "/a/..",
            "/./a",
            "/a/%2e%2e/admin",
            "/a/.%2E/admin",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "//admin",
            "*",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("accept", "*/*"),
            ("proxy-status", "upstream-thing"),
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
        }
        let mut req = h.clone();
        strip_hop_by_hop(&mut req, false);
        assert_eq!(
            req.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
        let mut resp = h;
        strip_hop_by_hop(&mut resp, true);
        let mut left: Vec<&str> = resp.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "proxy-status"]);
    }

    #[test]
    fn upgrade_detection() {
        let p = parts(
            Request::get("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "websocket"),
        );
        assert_eq!(
            upgrade_protocol(&p),
            Some(HeaderValue::from_static("websocket"))
        );
        let p = parts(Request::get("/ws").header("upgrade", "websocket"));
        assert_eq!(upgrade_protocol(&p), None);
    }
}
