//! HTTP/1.1 message heads on the upstream hop: the request head written straight into the
//! send buffer, and the response head parsed with `httparse` into what the downstream codec
//! needs, with its body framing decided by RFC 9112 §6.3.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::ProtocolError;

/// The most header fields a response head may carry (hyper's limit too).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 100;
/// The largest response head (hyper's default read buffer limit). Upstreams are configured
/// by the operator, so this guards against a broken one rather than an attacker.
pub(crate) const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a request without one; a response to HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response without either: the body ends when the upstream closes.
    Close,
}

/// An HTTP/1.1 request head being written. Names and values come from `http` types, which
/// cannot hold CR, LF or NUL, so nothing written here can split the head.
pub(crate) struct RequestHead {
    buf: Vec<u8>,
}

impl RequestHead {
    /// Starts `<method> <target> HTTP/1.1`. `target` is an origin-form path and query taken
    /// from a parsed `http::Uri` (no whitespace or control bytes).
    pub fn new(method: &Method, target: &str) -> Self {
        let mut buf = Vec::with_capacity(1024);
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        Self { buf }
    }

    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.raw(name.as_str().as_bytes(), value.as_bytes());
    }

    /// A field whose name and value the caller has validated (a joined `Cookie`).
    pub fn raw(&mut self, name: &[u8], value: &[u8]) {
        // One capacity check for the line, then plain copies.
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the field that declares `framing`.
    pub fn finish(mut self, framing: Framing) -> Vec<u8> {
        match framing {
            Framing::Length(n) => {
                self.buf.extend_from_slice(b"content-length: ");
                push_decimal(n, &mut self.buf);
                self.buf.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => self
                .buf
                .extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Empty | Framing::Close => {}
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Every field as received (the proxy strips hop-by-hop fields itself).
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response's body has been read.
    pub keep_alive: bool,
}

/// Positions of one field inside the head, recorded while `httparse` borrows the buffer so
/// that the values can then be shared slices of the frozen head instead of copies.
#[derive(Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the response head at the front of `buf`. `Ok(None)`: incomplete, read more. On
/// success the head's bytes are split off `buf` (the body's first bytes stay). `head_request`:
/// the request was `HEAD`, so the response has no body whatever it declares.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, ProtocolError> {
    let (len, code, minor, fields) = {
        // Uninitialised: only the fields present are written (hyper does the same).
        let mut headers =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(ProtocolError::HeadTooLarge(MAX_RESPONSE_HEAD))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ProtocolError::Head(e)),
        };
        if len > MAX_RESPONSE_HEAD {
            return Err(ProtocolError::HeadTooLarge(MAX_RESPONSE_HEAD));
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len())
        };
        // Sized to what is there: a fixed array for the maximum cost more to clear than
        // this allocation does.
        let fields: Vec<Field> = response
            .headers
            .iter()
            .map(|h| Field {
                name: offset(h.name.as_bytes()),
                value: offset(h.value),
            })
            .collect();
        (
            len,
            response.code.unwrap_or(0),
            response.version.unwrap_or(1),
            fields,
        )
    };
    let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Status(code))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut rules = FramingFields::default();
    for field in &fields {
        let name_bytes = &head[field.name.0..field.name.1];
        let value_bytes = &head[field.value.0..field.value.1];
        let name = HeaderName::from_bytes(name_bytes).map_err(|_| ProtocolError::Field)?;
        rules.observe(&name, value_bytes)?;
        let value = HeaderValue::from_maybe_shared(head.slice(field.value.0..field.value.1))
            .map_err(|_| ProtocolError::Field)?;
        headers.append(name, value);
    }
    let framing = rules.framing(status, version, head_request)?;
    let keep_alive = framing != Framing::Close
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !rules.close
        && (version == Version::HTTP_11 || rules.keep_alive);
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// What the framing and connection fields of a response say, gathered field by field.
#[derive(Default)]
struct FramingFields {
    transfer_encoding: bool,
    /// Every `Transfer-Encoding` coding so far was one `chunked`.
    chunked_only: bool,
    codings: usize,
    length: Option<u64>,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), ProtocolError> {
        if name == http::header::TRANSFER_ENCODING {
            if !self.transfer_encoding {
                self.chunked_only = true;
            }
            self.transfer_encoding = true;
            for coding in list_elements(value) {
                self.codings += 1;
                if self.codings > 1 || !coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked_only = false;
                }
            }
        } else if name == http::header::CONTENT_LENGTH {
            // RFC 9110 §8.6: a list of identical values may be taken as that value; anything
            // else is invalid.
            let mut any = false;
            for element in list_elements(value) {
                any = true;
                let n = parse_length(element).ok_or(ProtocolError::ContentLength)?;
                match self.length {
                    Some(previous) if previous != n => return Err(ProtocolError::ContentLength),
                    _ => self.length = Some(n),
                }
            }
            if !any {
                return Err(ProtocolError::ContentLength);
            }
        } else if name == http::header::CONNECTION {
            for token in list_elements(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.3, for a response.
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        head_request: bool,
    ) -> Result<Framing, ProtocolError> {
        // (1): no body, whatever the fields say.
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(ProtocolError::TransferEncodingInHttp10);
            }
            if self.length.is_some() {
                return Err(ProtocolError::TransferEncodingAndLength);
            }
            if !self.chunked_only || self.codings != 1 {
                return Err(ProtocolError::TransferEncoding);
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        })
    }
}

/// The non-empty elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed of
/// optional whitespace.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// `1*DIGIT` as a u64: no sign, no whitespace inside, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_request: bool) -> Result<Option<ResponseHead>, ProtocolError> {
        parse_response(&mut BytesMut::from(raw), head_request)
    }

    fn framing(raw: &str) -> Result<Framing, ProtocolError> {
        Ok(parse(raw.as_bytes(), false)?.expect("complete").framing)
    }

    #[test]
    fn request_head_is_written_as_declared() {
        let mut head = RequestHead::new(&Method::POST, "/a/b?c=d");
        head.header(
            &HeaderName::from_static("x-test"),
            &HeaderValue::from_static("1"),
        );
        head.raw(b"cookie", b"a=1; b=2");
        assert_eq!(
            &head.finish(Framing::Length(12345))[..],
            b"POST /a/b?c=d HTTP/1.1\r\nx-test: 1\r\ncookie: a=1; b=2\r\ncontent-length: 12345\r\n\r\n"
        );
        let head = RequestHead::new(&Method::GET, "/");
        assert_eq!(&head.finish(Framing::Empty)[..], b"GET / HTTP/1.1\r\n\r\n");
        let head = RequestHead::new(&Method::PUT, "/");
        assert!(head
            .finish(Framing::Chunked)
            .ends_with(b"transfer-encoding: chunked\r\n\r\n"));
        let head = RequestHead::new(&Method::PUT, "/");
        assert!(head
            .finish(Framing::Length(0))
            .ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\nSet-Cookie: s=1\r\n\r\nokNEXT"[..],
        );
        let head = parse_response(&mut buf, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.headers["set-cookie"], "s=1");
        assert_eq!(&buf[..], b"okNEXT");
    }

    #[test]
    fn incomplete_heads_ask_for_more_and_huge_ones_are_refused() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .expect("valid so far")
            .is_none());
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_RESPONSE_HEAD {
            huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse(&huge, false),
            Err(ProtocolError::HeadTooLarge(_) | ProtocolError::Head(_))
        ));
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").ok(),
            Some(Framing::Length(10))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n").ok(),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n").ok(),
            Some(Framing::Close)
        );
        for no_body in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(framing(no_body).ok(), Some(Framing::Empty), "{no_body}");
        }
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Empty, "response to HEAD");
        // Repeated identical lengths are one length (RFC 9110 §8.6).
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7, 7\r\n\r\n").ok(),
            Some(Framing::Length(7))
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let refused = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in refused {
            assert!(framing(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn malformed_heads_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            // obs-fold (RFC 9112 §5.2): refused, as hyper's client does by default.
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            b"garbage\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                parse(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(
            parse(b"HTTP/1.1 099 Low\r\n\r\n", false),
            Err(ProtocolError::Status(99) | ProtocolError::Head(_))
        ));
        // Bare LF line ends are accepted, as by httparse in hyper.
        let head = parse(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", false)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Length(0));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_RESPONSE_HEADERS + 1)
        );
        assert!(parse(many.as_bytes(), false).is_err(), "too many fields");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &str| {
            parse(raw.as_bytes(), false)
                .expect("valid")
                .expect("complete")
                .keep_alive
        };
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"), "close-delimited");
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 101 Switching Protocols\r\n\r\n"));
    }
}
