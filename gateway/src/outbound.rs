//! What of a client's request passes upstream, written straight into the upstream request
//! head rather than edited in a `HeaderMap` first: end-to-end fields pass; hop-by-hop fields
//! (RFC 9110 §7.6.1, and every field the client's `Connection` names), every inbound copy of
//! an identity field (`identity_headers.rs`), `Host`, `X-Request-Id` and the framing fields do
//! not — the gateway writes its own after them. The same code serves HTTP/1.1 and HTTP/2
//! clients: upstreams are spoken to in HTTP/1.1.

use http::header::{self, HeaderMap, HeaderName};

use crate::h1::head::RequestHead;
use crate::identity_headers;
use crate::response::X_REQUEST_ID;

/// Hop-by-hop fields (RFC 9110 §7.6.1): `Connection`, `Keep-Alive`, `Proxy-Connection`,
/// `TE`, `Transfer-Encoding`, `Upgrade`, `Trailer`, and in requests every `Proxy-*` field
/// (credentials meant for this hop). Fields named by `Connection` are checked separately.
pub(crate) fn is_hop_by_hop(name: &HeaderName, is_response: bool) -> bool {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::TRAILER
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || (name.as_str().starts_with("proxy-") && !(is_response && name == "proxy-status"))
}

/// Whether one of the values of `name` lists `token` (comma-separated tokens compared
/// without regard to case, RFC 9110 §5.6.1) — e.g. a field named by `Connection` (§7.6.1).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop fields and every field `Connection` names from `headers` (used for
/// responses, which go back through the downstream codec's `HeaderMap`). An upgrade puts its
/// own `Connection: upgrade` / `Upgrade` back afterwards.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, is_response: bool) {
    // One pass over the names first: most messages carry none of these, and removing an
    // absent name still costs a hash and a probe per name.
    if !headers.keys().any(|n| is_hop_by_hop(n, is_response)) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|n| is_hop_by_hop(n, is_response))
            .cloned(),
    );
    for name in doomed {
        headers.remove(name);
    }
}

/// Copies the client's end-to-end fields into `head`. `join_cookies`: the client spoke
/// HTTP/2, which may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
pub(crate) fn copy_end_to_end(head: &mut RequestHead, headers: &HeaderMap, join_cookies: bool) {
    let has_connection = headers.contains_key(header::CONNECTION);
    let mut cookie: Option<Vec<u8>> = None;
    for (name, value) in headers {
        if is_hop_by_hop(name, false)
            || identity_headers::is_identity_header(name.as_str())
            || *name == header::HOST
            || *name == X_REQUEST_ID
            || *name == header::CONTENT_LENGTH
            || (has_connection && has_token(headers, header::CONNECTION, name.as_str()))
        {
            continue;
        }
        if join_cookies && *name == header::COOKIE {
            match cookie.as_mut() {
                Some(joined) => {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(value.as_bytes());
                }
                None => cookie = Some(value.as_bytes().to_vec()),
            }
            continue;
        }
        head.header(name, value);
    }
    if let Some(joined) = cookie {
        // Valid: `HeaderValue`s joined by "; ".
        head.raw(b"cookie", &joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::Framing;
    use http::header::HeaderValue;
    use http::Method;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn written(headers: &HeaderMap, join: bool) -> String {
        let mut head = RequestHead::new(&Method::GET, "/");
        copy_end_to_end(&mut head, headers, join);
        String::from_utf8(head.finish(Framing::Empty).to_vec()).expect("ascii")
    }

    #[test]
    fn only_end_to_end_fields_pass() {
        // Names as hyper hands them over: lowercase, whatever case the client used.
        let h = map(&[
            ("host", "app.example"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("content-length", "5"),
            ("x-request-id", "spoofed"),
            ("x-portcullis-device-id", "evil"),
            ("x-portcullis-device-id", "evil2"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-client-cert", "Hash=00"),
            ("client-cert", ":AAAA:"),
            ("client-cert-chain", ":AAAA:"),
            ("forwarded", "for=10.0.0.3"),
            ("x-real-ip", "10.0.0.4"),
            ("accept", "*/*"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-portcullisfoo", "kept: not our prefix"),
        ]);
        assert_eq!(
            written(&h, false),
            "GET / HTTP/1.1\r\naccept: */*\r\ncookie: a=1\r\ncookie: b=2\r\n\
             x-portcullisfoo: kept: not our prefix\r\n\r\n"
        );
        assert_eq!(
            written(&h, true),
            "GET / HTTP/1.1\r\naccept: */*\r\nx-portcullisfoo: kept: not our prefix\r\n\
             cookie: a=1; b=2\r\n\r\n"
        );
    }
}
