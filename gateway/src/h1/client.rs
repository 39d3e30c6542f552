//! Upstream HTTP/1.1 connections owned by the client connection that uses them.
//!
//! The client connection keeps its idle upstream connections itself ([`IdleUpstreams`]) and
//! drives the one in use from its own task: [`send`] writes the request head and streams the
//! request body while it watches for the response head, and the response body
//! ([`UpstreamBody`]) reads the connection while the downstream codec polls it, then gives the
//! connection back. There is no channel, no second task and no lock contention on the way
//! (the lock around the idle list is only ever taken by this connection's own requests).
//!
//! The cost is one upstream connection per client connection that has had a request (more for
//! HTTP/2 clients with concurrent streams), held while that client connection lives — the
//! same as nginx's `keepalive` to an upstream, without a global cap.
//!
//! A connection is reused only when the response was read to its end, the request body was
//! sent whole, the response allows it (`Connection`, version, not close-delimited) and nothing
//! followed the response. After `101 Switching Protocols` the raw stream is handed over for
//! the tunnel ([`UpstreamBody::take_upgraded`]).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::{self, ChunkedDecoder, Step};
use super::head::{self, Framing, ResponseHead};
use super::ProtocolError;
use crate::body::BoxError;
use crate::upstream::{Target, UpstreamError, UpstreamIo};

/// Idle upstream connections a client connection keeps (HTTP/1.1 needs one; HTTP/2 clients
/// with concurrent streams, or clients that use several routes, more).
const MAX_IDLE: usize = 8;
/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;
/// Request body bytes gathered ahead of the upstream before the client's body is no longer
/// polled (backpressure).
const WRITE_BATCH: usize = 64 * 1024;

/// One upstream HTTP/1.1 connection, driven by whoever holds it.
pub(crate) struct UpstreamConn {
    target: Arc<Target>,
    io: UpstreamIo,
    /// Bytes read from the upstream and not consumed yet. Response body data is handed out
    /// as shared slices of it.
    read_buf: BytesMut,
}

impl UpstreamConn {
    async fn open(target: &Arc<Target>) -> Result<Self, UpstreamError> {
        Ok(Self {
            target: target.clone(),
            io: target.open().await?,
            read_buf: BytesMut::new(),
        })
    }

    /// Reads what the upstream has sent; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_RESERVE / 4 {
            self.read_buf.reserve(READ_RESERVE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything since the last response (unsolicited bytes mean it is out of step).
    /// Does not wait. No system call when nothing arrived: tokio knows the socket has not
    /// become readable since the last read came up short.
    fn poll_idle_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.read_buf.is_empty() && self.poll_fill(cx).is_pending()
    }

    /// Writes the request, streams its body, and reads until a final response head is in.
    /// Interim responses (100 Continue, 103) are consumed: the downstream codec produced
    /// its own `100 Continue` already.
    fn poll_exchange<B: RequestBodyLike>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Sending,
        body: &mut B,
        head_request: bool,
    ) -> Poll<Result<ResponseHead, UpstreamError>> {
        loop {
            let mut progress = false;
            // Gather what the client's body has ready, so that a small body leaves with the
            // head in one write.
            while !s.body_done && s.body.len() < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        progress = true;
                        // Trailers from the client are not forwarded (as before).
                        if let Ok(data) = frame.into_data() {
                            s.push(&data)?;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(UpstreamError::RequestBody(e)))
                    }
                    Poll::Ready(None) => {
                        progress = true;
                        s.end()?;
                    }
                    Poll::Pending => break,
                }
            }
            while s.has_output() {
                let bufs = [IoSlice::new(&s.head), IoSlice::new(&s.body)];
                match Pin::new(&mut self.io).poll_write_vectored(cx, &bufs) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UpstreamError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        s.advance(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Io(e))),
                    Poll::Pending => break,
                }
            }
            if !s.has_output() && s.unflushed {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => s.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Io(e))),
                    Poll::Pending => {}
                }
            }
            // The response may come before the body has all gone (an early 413, say).
            if let Poll::Ready(result) = self.poll_head(cx, s, head_request) {
                let mut head = result?;
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                if !s.sent_all() {
                    // The rest of the body will not be sent: the connection is out of step.
                    head.keep_alive = false;
                }
                return Poll::Ready(Ok(head));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Sending,
        head_request: bool,
    ) -> Poll<Result<ResponseHead, UpstreamError>> {
        loop {
            if !self.read_buf.is_empty() {
                if let Some(head) = head::parse_response(&mut self.read_buf, head_request)
                    .map_err(UpstreamError::Protocol)?
                {
                    return Poll::Ready(Ok(head));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(UpstreamError::Protocol(
                        ProtocolError::ClosedBeforeHead,
                    )))
                }
                Ok(_) => s.answered = true,
                Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
            }
        }
    }
}

/// The client's request body as [`send`] streams it (the gateway's `body::RequestBody`; plain
/// bodies in tests).
pub(crate) trait RequestBodyLike: Body<Data = Bytes, Error = BoxError> + Unpin {}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> RequestBodyLike for B {}

/// What [`send`] sends: the complete request head (with its framing field) and how the body
/// that goes with it is delimited.
pub(crate) struct Outbound {
    pub head: Vec<u8>,
    pub framing: Framing,
    /// The method is `HEAD`: the response has no body.
    pub head_request: bool,
    /// The request may be sent again on a fresh connection if a reused one turns out to be
    /// dead before answering: an idempotent method (RFC 9110 §9.2.2) without a body.
    pub replayable: bool,
}

/// One request on its way out.
struct Sending {
    head: Bytes,
    /// Body bytes, framed, not written yet.
    body: BytesMut,
    framing: Framing,
    /// Body bytes taken from the client so far.
    taken: u64,
    body_done: bool,
    unflushed: bool,
    /// Bytes of the response have arrived.
    answered: bool,
}

impl Sending {
    fn new(head: Bytes, framing: Framing) -> Self {
        Self {
            head,
            body: BytesMut::new(),
            framing,
            taken: 0,
            body_done: matches!(framing, Framing::Empty | Framing::Length(0)),
            unflushed: false,
            answered: false,
        }
    }

    fn has_output(&self) -> bool {
        !self.head.is_empty() || !self.body.is_empty()
    }

    fn sent_all(&self) -> bool {
        self.body_done && !self.has_output()
    }

    fn advance(&mut self, mut n: usize) {
        self.unflushed = true;
        let from_head = n.min(self.head.len());
        self.head.advance(from_head);
        n -= from_head;
        self.body.advance(n.min(self.body.len()));
    }

    /// Frames `data` by the declared framing. More than the declared length is refused: it
    /// would be read by the upstream as the start of another request.
    fn push(&mut self, data: &[u8]) -> Result<(), UpstreamError> {
        self.taken += data.len() as u64;
        match self.framing {
            Framing::Length(n) if self.taken <= n => self.body.put_slice(data),
            Framing::Chunked => chunked::encode_chunk(data, &mut self.body),
            _ if data.is_empty() => {}
            _ => return Err(UpstreamError::Protocol(ProtocolError::RequestBodyLength)),
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), UpstreamError> {
        self.body_done = true;
        match self.framing {
            Framing::Length(n) if self.taken != n => {
                Err(UpstreamError::Protocol(ProtocolError::RequestBodyLength))
            }
            Framing::Chunked => {
                self.body.put_slice(chunked::LAST_CHUNK);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The idle upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct IdleUpstreams {
    // Only ever locked by the client connection's own requests: uncontended for HTTP/1.1.
    // Boxed: a connection moves between this list, the request and the response body.
    #[allow(clippy::vec_box)]
    conns: Mutex<Vec<Box<UpstreamConn>>>,
}

impl IdleUpstreams {
    fn take(&self, target: &Arc<Target>) -> Option<Box<UpstreamConn>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let i = conns.iter().rposition(|c| Arc::ptr_eq(&c.target, target))?;
        Some(conns.swap_remove(i))
    }

    fn put(&self, conn: Box<UpstreamConn>) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() >= MAX_IDLE {
            // The oldest goes: after a reload it is one to a target no route uses any more.
            conns.remove(0);
        }
        conns.push(conn);
    }
}

/// Sends the request to `target` on one of `idle`'s connections, or a new one, and returns
/// once the response head is in. The connection goes back to `idle` when the response body
/// has been read (if it may be reused).
pub(crate) async fn send<B: RequestBodyLike>(
    idle: &Arc<IdleUpstreams>,
    target: &Arc<Target>,
    out: Outbound,
    mut body: B,
) -> Result<(ResponseHead, UpstreamBody), UpstreamError> {
    let head = Bytes::from(out.head);
    if let Some(mut conn) = idle.take(target) {
        if poll_fn(|cx| Poll::Ready(conn.poll_idle_usable(cx))).await {
            let mut s = Sending::new(head.clone(), out.framing);
            let exchanged =
                poll_fn(|cx| conn.poll_exchange(cx, &mut s, &mut body, out.head_request)).await;
            match exchanged {
                Ok(response) => return Ok(respond(response, conn, &s, idle)),
                // The upstream closed the idle connection just as the request went out (its
                // keep-alive timeout): nothing was answered and nothing of the client's was
                // consumed, so the request goes once more on a fresh connection.
                Err(e) if out.replayable && !s.answered => {
                    tracing::debug!(error = %e, "reused upstream connection failed; retrying on a new one");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut conn = Box::new(UpstreamConn::open(target).await?);
    let mut s = Sending::new(head, out.framing);
    let response =
        poll_fn(|cx| conn.poll_exchange(cx, &mut s, &mut body, out.head_request)).await?;
    Ok(respond(response, conn, &s, idle))
}

fn respond(
    head: ResponseHead,
    conn: Box<UpstreamConn>,
    sent: &Sending,
    idle: &Arc<IdleUpstreams>,
) -> (ResponseHead, UpstreamBody) {
    let state = if head.status == StatusCode::SWITCHING_PROTOCOLS {
        BodyState::Switched
    } else {
        match head.framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
            Framing::Close => BodyState::Close,
        }
    };
    let reuse = head.keep_alive && sent.sent_all();
    let body = UpstreamBody {
        conn: Some(conn),
        home: reuse.then(|| idle.clone()),
        state,
    };
    (head, body)
}

enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes.
    Close,
    /// The body has been read (or there is none).
    Done,
    /// `101 Switching Protocols`: no body; the stream belongs to the tunnel.
    Switched,
}

/// An upstream response body that reads its connection while it streams and returns the
/// connection to its client connection's idle list once complete. Dropped before the end
/// (the client went away), it closes the upstream connection: it is mid-response.
pub(crate) struct UpstreamBody {
    conn: Option<Box<UpstreamConn>>,
    /// Where the connection goes once the body is read; `None` when it may not be reused.
    home: Option<Arc<IdleUpstreams>>,
    state: BodyState,
}

impl UpstreamBody {
    /// After `101 Switching Protocols`: the upstream's raw stream, with whatever the upstream
    /// already sent after the head.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        if !matches!(self.state, BodyState::Switched) {
            return None;
        }
        let conn = *self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            pending: conn.read_buf.freeze(),
        })
    }

    /// The body has been read: the connection goes home if it may be reused and nothing
    /// followed the response (bytes there would mean the upstream is out of step).
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if conn.read_buf.is_empty() {
                home.put(conn);
            }
        }
    }

    fn fail(&mut self, error: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        self.home = None;
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodies the downstream codec never polls (none, HEAD, 204/304, length 0) end here.
        if matches!(self.state, BodyState::Done) {
            self.finish();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.state {
                BodyState::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyState::Switched => return Poll::Ready(None),
                _ => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyState::Length(remaining) => {
                    if conn.read_buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                return this
                                    .fail(UpstreamError::Protocol(ProtocolError::ClosedInBody))
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(UpstreamError::Io(e)),
                        }
                    }
                    // Bounded by `read_buf.len()`: the cast cannot truncate.
                    let n = (*remaining).min(conn.read_buf.len() as u64) as usize;
                    *remaining -= n as u64;
                    let data = conn.read_buf.split_to(n).freeze();
                    if *remaining == 0 {
                        // The downstream codec stops polling once the body says it is at its
                        // end: the connection goes home now.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut conn.read_buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return this.fail(UpstreamError::Protocol(ProtocolError::ClosedInBody))
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(UpstreamError::Io(e)),
                    },
                    Err(e) => return this.fail(UpstreamError::Protocol(e.into())),
                },
                BodyState::Close => {
                    if conn.read_buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                // The end of the body, and of the connection.
                                this.state = BodyState::Done;
                                this.conn = None;
                                this.home = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(UpstreamError::Io(e)),
                        }
                    }
                    let data = conn.read_buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Done | BodyState::Switched => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.state,
            BodyState::Done | BodyState::Switched | BodyState::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done | BodyState::Switched => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Close => SizeHint::default(),
        }
    }
}

/// The upstream's stream after `101 Switching Protocols`, starting with the bytes that came
/// after the response head.
pub(crate) struct Upgraded {
    io: UpstreamIo,
    pending: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::RequestHead;
    use http::Method;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    fn empty() -> TestBody {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    fn full(data: &'static [u8]) -> TestBody {
        Full::new(Bytes::from_static(data))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn target(addr: SocketAddr) -> Arc<Target> {
        let authority = http::uri::Authority::try_from(addr.to_string()).expect("authority");
        let tls = crate::upstream::default_tls().expect("tls");
        Arc::new(Target::new(&http::uri::Scheme::HTTP, &authority, &tls).expect("target"))
    }

    fn outbound(method: Method, framing: Framing) -> Outbound {
        let mut head = RequestHead::new(&method, "/x");
        head.raw(b"host", b"upstream");
        Outbound {
            head: head.finish(framing),
            framing,
            head_request: method == Method::HEAD,
            replayable: framing == Framing::Empty && method.is_idempotent(),
        }
    }

    /// A loopback upstream: each connection is counted and served by `serve` on a task.
    async fn upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp));
            }
        });
        (addr, accepted)
    }

    /// A scripted upstream: on each connection, for each canned answer, waits for the end
    /// of a request head (requests without bodies), then writes the answer; closes after the
    /// last one. Counts connections.
    async fn scripted(answers: Vec<&'static [u8]>) -> (SocketAddr, Arc<AtomicUsize>) {
        upstream(move |mut tcp| {
            let answers = answers.clone();
            async move {
                let mut seen = Vec::new();
                for answer in answers {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buf = [0u8; 4096];
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// A hyper HTTP/1.1 upstream that echoes the request body and its framing fields.
    async fn echo_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        use hyper::service::service_fn;
        upstream(|tcp| async move {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let framing = if req.headers().contains_key("transfer-encoding") {
                    "chunked"
                } else {
                    "length"
                };
                let body = req.into_body().collect().await?.to_bytes();
                let mut resp = http::Response::new(Full::new(body));
                resp.headers_mut()
                    .insert("x-framing", http::HeaderValue::from_static(framing));
                Ok::<_, hyper::Error>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        })
        .await
    }

    async fn body_of(body: UpstreamBody) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    /// A GET without a body through [`send`].
    async fn try_get(
        idle: &Arc<IdleUpstreams>,
        target: &Arc<Target>,
    ) -> Result<(ResponseHead, UpstreamBody), UpstreamError> {
        send(idle, target, outbound(Method::GET, Framing::Empty), empty()).await
    }

    async fn get(idle: &Arc<IdleUpstreams>, target: &Arc<Target>) -> (ResponseHead, UpstreamBody) {
        try_get(idle, target).await.expect("exchange")
    }

    #[tokio::test]
    async fn bodies_both_ways_and_the_connection_is_reused() {
        let (addr, accepted) = echo_upstream().await;
        let target = target(addr);
        let idle = Arc::new(IdleUpstreams::default());
        for _ in 0..3 {
            let (head, body) = send(
                &idle,
                &target,
                outbound(Method::POST, Framing::Length(5)),
                full(b"hello"),
            )
            .await
            .expect("exchange");
            assert_eq!(head.status, 200);
            assert_eq!(head.headers["x-framing"], "length");
            assert_eq!(body_of(body).await.expect("body"), "hello");
        }
        // A streamed body of unknown length goes chunked.
        let frames = futures_util::stream::iter(
            [&b"ab"[..], b"", b"cde"]
                .map(|d| Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from_static(d)))),
        );
        let streamed = StreamBody::new(frames).boxed_unsync();
        let (head, body) = send(
            &idle,
            &target,
            outbound(Method::PUT, Framing::Chunked),
            streamed,
        )
        .await
        .expect("exchange");
        assert_eq!(head.headers["x-framing"], "chunked");
        assert_eq!(body_of(body).await.expect("body"), "abcde");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one upstream connection"
        );
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_is_refused() {
        let (addr, _) = echo_upstream().await;
        let idle = Arc::new(IdleUpstreams::default());
        let result = send(
            &idle,
            &target(addr),
            outbound(Method::POST, Framing::Length(3)),
            full(b"hello"),
        )
        .await;
        assert!(matches!(
            result,
            Err(UpstreamError::Protocol(ProtocolError::RequestBodyLength))
        ));
    }

    #[tokio::test]
    async fn interim_chunked_and_close_delimited_responses() {
        let (addr, accepted) = scripted(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        ])
        .await;
        let target = target(addr);
        let idle = Arc::new(IdleUpstreams::default());
        let (head, body) = get(&idle, &target).await;
        assert_eq!(head.status, 200, "the 100 is consumed");
        assert_eq!(body_of(body).await.expect("body"), "ok");
        let (_, body) = get(&idle, &target).await;
        assert_eq!(body_of(body).await.expect("body"), "abcde");
        let (head, body) = get(&idle, &target).await;
        assert!(!head.keep_alive);
        assert_eq!(body_of(body).await.expect("body"), "until close");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(
            idle.take(&target).is_none(),
            "a close-delimited connection is not kept"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_for_an_idempotent_request() {
        // Each connection answers once, then closes.
        let (addr, accepted) =
            scripted(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"]).await;
        let target = target(addr);
        let idle = Arc::new(IdleUpstreams::default());
        for _ in 0..3 {
            let (_, body) = get(&idle, &target).await;
            assert_eq!(body_of(body).await.expect("body"), "a");
            // Let the close arrive (the race itself is covered by the retry).
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn smuggling_shaped_responses_are_errors() {
        let (addr, _) = scripted(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ])
        .await;
        let idle = Arc::new(IdleUpstreams::default());
        let result = try_get(&idle, &target(addr)).await;
        assert!(matches!(
            result,
            Err(UpstreamError::Protocol(
                ProtocolError::TransferEncodingAndLength
            ))
        ));
        let (addr, _) = scripted(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let (_, body) = get(&idle, &target(addr)).await;
        assert!(body_of(body).await.is_err(), "bad chunk size");
        let (addr, _) = scripted(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let (_, body) = get(&idle, &target(addr)).await;
        assert!(body_of(body).await.is_err(), "closed inside the body");
    }

    #[tokio::test]
    async fn switching_protocols_hands_over_the_stream_with_what_followed_the_head() {
        let (addr, _) = scripted(vec![
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframe-1",
        ])
        .await;
        let idle = Arc::new(IdleUpstreams::default());
        let (head, mut body) = get(&idle, &target(addr)).await;
        assert_eq!(head.status, 101);
        let mut upgraded = body.take_upgraded().expect("upgraded stream");
        let mut buf = [0u8; 7];
        upgraded.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"frame-1");
    }
}
