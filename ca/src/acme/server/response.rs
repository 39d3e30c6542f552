//! Response plumbing: problem documents as HTTP responses, JSON bodies, and the headers every
//! ACME response carries.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER};
use http::StatusCode;
use serde_json::Value;

use super::AcmeServer;
use crate::acme::problem::{Problem, ProblemType};
use crate::store::StoreError;

pub(super) const REPLAY_NONCE: HeaderName = HeaderName::from_static("replay-nonce");

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, self.to_json()).into_response();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        // The detail stays generic: database errors are for the log, not for clients.
        tracing::error!(error = %e, "ACME storage failure");
        Problem::new(ProblemType::ServerInternal, "storage failure")
    }
}

/// A 404 in ACME's dialect: a problem document, so clients can show it.
pub(super) fn no_such(what: &str) -> Problem {
    let mut p = Problem::malformed(format!("no such {what}"));
    p.status = 404;
    p
}

pub(super) async fn not_found() -> Problem {
    no_such("resource")
}

/// Builder for successful ACME responses.
pub(super) struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Body,
    content_type: &'static str,
}

impl Reply {
    pub fn json(status: StatusCode, v: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::from(v.to_string()),
            content_type: "application/json",
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::empty(),
            content_type: "",
        }
    }

    pub fn pem_chain(pem: String) -> Self {
        Self {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Body::from(pem),
            // RFC 8555 §9.1.
            content_type: "application/pem-certificate-chain",
        }
    }

    pub fn location(mut self, url: String) -> Self {
        self.headers.push((LOCATION, url));
        self
    }

    /// `Link: <url>;rel="…"`; several may be given (RFC 8288).
    pub fn link(mut self, url: &str, rel: &str) -> Self {
        self.headers.push((LINK, format!("<{url}>;rel=\"{rel}\"")));
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.headers.push((RETRY_AFTER, secs.max(1).to_string()));
        self
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if !self.content_type.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        }
        for (name, value) in self.headers {
            // Our own URLs and numbers; a value that is not a valid header is a bug to log,
            // not a reason to fail the response.
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    h.append(name, v);
                }
                Err(_) => tracing::error!(header = %name, "invalid header value dropped"),
            }
        }
        resp
    }
}

/// Adds `Replay-Nonce` (RFC 8555 §6.5: every response, so a client never needs an extra
/// newNonce round trip, and a `badNonce` error carries the nonce to retry with) and
/// `Link: <directory>;rel="index"` (§7.1) to every response.
pub(super) async fn acme_headers(
    State(s): State<Arc<AcmeServer>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    match s.nonces.issue(s.now()) {
        Ok(n) => {
            if let Ok(v) = HeaderValue::from_str(&n) {
                resp.headers_mut().insert(REPLAY_NONCE, v);
            }
        }
        Err(e) => tracing::error!(error = %e, "no nonce for response"),
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", s.urls.directory())) {
        resp.headers_mut().append(LINK, v);
    }
    resp
}
