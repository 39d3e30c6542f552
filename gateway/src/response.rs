//! Responses the gateway generates itself (denials, errors). Each carries `X-Request-Id` and an
//! RFC 9209 `Proxy-Status` naming the error type, so a client or an operator can tell a gateway
//! refusal from an upstream answer. Bodies are short; the full reason is in the audit log only.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{full, ResponseBody};

pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// RFC 9209 §2.
pub(crate) const PROXY_STATUS: http::HeaderName = http::HeaderName::from_static("proxy-status");

/// RFC 9209 §2.3 error types used by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// §2.3.13 — refused by policy or configuration (denials, limits, unknown host).
    HttpRequestDenied,
    /// §2.3.12 — the request itself is malformed (no Host, bad path).
    HttpRequestError,
    /// §2.3.2 / §2.3.7 / §2.3.8.
    DnsError,
    ConnectionRefused,
    ConnectionTimeout,
    /// §2.3.4 — the upstream could not be reached for another reason.
    DestinationUnavailable,
    /// §2.3.15 / §2.3.21 / §2.3.28.
    TlsProtocolError,
    TlsCertificateError,
    HttpResponseTimeout,
    /// §2.3.24 — the upstream answered with something that is not acceptable HTTP.
    HttpProtocolError,
    /// §2.3.26
    ProxyInternalError,
}

impl ProxyError {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::HttpRequestDenied => "http_request_denied",
            ProxyError::HttpRequestError => "http_request_error",
            ProxyError::DnsError => "dns_error",
            ProxyError::ConnectionRefused => "connection_refused",
            ProxyError::ConnectionTimeout => "connection_timeout",
            ProxyError::DestinationUnavailable => "destination_unavailable",
            ProxyError::TlsProtocolError => "tls_protocol_error",
            ProxyError::TlsCertificateError => "tls_certificate_error",
            ProxyError::HttpResponseTimeout => "http_response_timeout",
            ProxyError::HttpProtocolError => "http_protocol_error",
            ProxyError::ProxyInternalError => "proxy_internal_error",
        }
    }
}

/// A gateway-generated response: `<status>`, text body `<first line>\nrequest id: <id>\n`,
/// `Proxy-Status: portcullis; error=<type>; details="<code>"`.
pub(crate) fn generated(
    status: StatusCode,
    error: ProxyError,
    code: &str,
    first_line: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = format!("{first_line}\nrequest id: {request_id}\n");
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    // `details` is an sf-string (RFC 8941 §3.3.3): the reason codes are snake_case ASCII.
    let code: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "portcullis; error={}; details=\"{code}\"",
        error.as_str()
    )) {
        h.insert(PROXY_STATUS, v);
    }
    resp
}

/// 403 (or 496 when no certificate was presented), `denied: <code>`.
pub(crate) fn denied(status: StatusCode, code: &str, request_id: &str) -> Response<ResponseBody> {
    generated(
        status,
        ProxyError::HttpRequestDenied,
        code,
        &format!("denied: {code}"),
        request_id,
    )
}

/// nginx's 495 "SSL Certificate Error" and 496 "SSL Certificate Required".
pub(crate) fn cert_error_status() -> StatusCode {
    StatusCode::from_u16(495).unwrap_or(StatusCode::FORBIDDEN)
}

pub(crate) fn cert_required_status() -> StatusCode {
    StatusCode::from_u16(496).unwrap_or(StatusCode::FORBIDDEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_shape() {
        let r = denied(StatusCode::FORBIDDEN, "device_quarantined", "abc123");
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-request-id"], "abc123");
        assert_eq!(
            r.headers()["proxy-status"],
            "portcullis; error=http_request_denied; details=\"device_quarantined\""
        );
        assert_eq!(cert_required_status().as_u16(), 496);
        assert_eq!(cert_error_status().as_u16(), 495);
    }
}
