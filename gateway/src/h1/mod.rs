//! The gateway's own HTTP/1.1 client for the hop to the upstream.
//!
//! hyper's client connection costs a channel and a oneshot between `SendRequest` and its
//! connection per request, a `HeaderMap` built for every outbound request and parsed back into
//! bytes, and a generic dispatcher. A reverse proxy needs much less: write the head it has
//! already decided on, stream the body by its framing, parse the response head, and stream the
//! response body by *its* framing, on a connection that the client connection owns and drives
//! from its own task (as nginx's upstream module does).
//!
//! - [`head`]: the request head writer and the response head parser with the framing rules of
//!   RFC 9112 §6.3 (and nginx's refusals where the RFC allows a choice).
//! - [`chunked`]: the chunked transfer coding, decoding (RFC 9112 §7.1) and encoding.
//! - [`client`]: the upstream connection, one request/response exchange on it, the response
//!   body, reuse, and the hand-over of the raw stream after `101 Switching Protocols`.

pub(crate) mod chunked;
pub(crate) mod client;
pub(crate) mod head;

/// Why an upstream's HTTP/1.1 message was not acceptable. Each variant names the rule.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("response status {0} is not a valid HTTP status code")]
    Status(u16),
    #[error("invalid header field name or value in the response")]
    Field,
    /// RFC 9112 §6.3 (3): a message with both is a smuggling attempt or a broken server;
    /// nginx refuses it too.
    #[error("response has both Transfer-Encoding and Content-Length")]
    TransferEncodingAndLength,
    /// Only `chunked` alone is forwarded: the gateway strips `Transfer-Encoding` (hop-by-hop),
    /// so any other coding would reach the client undeclared.
    #[error("response Transfer-Encoding is not `chunked`")]
    TransferEncoding,
    /// RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is not to be trusted.
    #[error("HTTP/1.0 response with Transfer-Encoding")]
    TransferEncodingInHttp10,
    /// RFC 9110 §8.6: several Content-Length values must agree.
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunked(#[from] chunked::ChunkError),
    #[error("the upstream closed the connection before the response head")]
    ClosedBeforeHead,
    #[error("the upstream closed the connection before the end of the response body")]
    ClosedInBody,
    #[error("the request body did not match its declared length")]
    RequestBodyLength,
}
