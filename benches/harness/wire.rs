//! Bare HTTP/1.1 for the keep-alive load client and the upstream: one fixed request, one fixed
//! response, heads parsed with `httparse`, nothing else.
//!
//! Why not hyper here: on this 2-vCPU box the load client and the upstream share one core,
//! and with hyper on both (a client connection task plus its `SendRequest` channel, a server
//! codec) that core saturated at ≈ 49 k requests/s — below what a proxy 1.3× faster than
//! nginx would have to serve, so the harness, not the proxies, set the keep-alive ceiling.
//! Both proxies get the same client and upstream; only the proxies' own costs differ.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The one request the keep-alive client sends.
pub const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: localhost\r\n\r\n";

/// The one response the upstream sends (a 2-byte body, as before with hyper).
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// Heads larger than this are refused (the proxies' answers are well under 1 KiB).
const MAX_HEAD: usize = 16 * 1024;

/// A response the client read to its end.
pub struct Exchanged {
    pub status: u16,
    /// The server said `Connection: close`: open a new connection for the next request.
    pub close: bool,
}

fn header_is(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

fn content_length(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Reads more into `buf`; `Err` on EOF or I/O error.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<(), String> {
    if buf.len() > MAX_HEAD {
        return Err("head too large".into());
    }
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {}", e.kind())),
    }
}

/// Sends [`REQUEST`] and reads the response to its end (Content-Length framing only: both
/// proxies forward the upstream's Content-Length).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Exchanged, String> {
    stream
        .write_all(REQUEST)
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let (status, close, head, body) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let mut length = None;
                let mut close = false;
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = content_length(h.value);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(
                            "a chunked response (the bench client reads Content-Length only)"
                                .into(),
                        );
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = header_is(h.value, "close");
                    }
                }
                let length = length.ok_or("a response without Content-Length")?;
                break (response.code.unwrap_or(0), close, head, length);
            }
            Ok(httparse::Status::Partial) => fill(stream, buf).await?,
            Err(e) => return Err(format!("bad response head: {e}")),
        }
    };
    while buf.len() < head + body {
        fill(stream, buf).await?;
    }
    buf.advance(head + body);
    Ok(Exchanged { status, close })
}

/// What one request carried, for [`super::upstream::Seen`].
pub struct Received {
    pub portcullis_identity: bool,
    pub nginx_verified: bool,
}

/// Serves one upstream connection: every request is answered with [`RESPONSE`]; `seen` is
/// called per request. Ends at EOF, on garbage or after `Connection: close`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut seen: impl FnMut(Received),
) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let (head, body, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let mut received = Received {
                        portcullis_identity: false,
                        nginx_verified: false,
                    };
                    let (mut assertion, mut device) = (false, false);
                    let mut body = 0;
                    let mut close = false;
                    for h in request.headers.iter() {
                        let name = h.name;
                        if name.eq_ignore_ascii_case("x-portcullis-assertion") {
                            assertion = !h.value.is_empty();
                        } else if name.eq_ignore_ascii_case("x-portcullis-device-id") {
                            device = !h.value.is_empty();
                        } else if name.eq_ignore_ascii_case("x-client-verify") {
                            received.nginx_verified = h.value == b"SUCCESS";
                        } else if name.eq_ignore_ascii_case("content-length") {
                            match content_length(h.value) {
                                Some(n) => body = n,
                                None => return,
                            }
                        } else if name.eq_ignore_ascii_case("transfer-encoding") {
                            return; // GETs only; a chunked body is not expected here
                        } else if name.eq_ignore_ascii_case("connection") {
                            close = header_is(h.value, "close");
                        }
                    }
                    received.portcullis_identity = assertion && device;
                    seen(received);
                    break (head, body, close);
                }
                Ok(httparse::Status::Partial) => {
                    if fill(&mut stream, &mut buf).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        while buf.len() < head + body {
            if fill(&mut stream, &mut buf).await.is_err() {
                return;
            }
        }
        buf.advance(head + body);
        let response = if close { RESPONSE_CLOSE } else { RESPONSE };
        if stream.write_all(response).await.is_err() || close {
            return;
        }
    }
}
