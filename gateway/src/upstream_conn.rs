//! Upstream HTTP/1.1 connections owned by the client connection that uses them.
//!
//! A pooled client (hyper-util's legacy `Client`) runs every upstream connection as a task of
//! its own: each request is handed over a channel to that task, and the response back over
//! another, with a pool checkout and check-in around it. Here the client connection keeps its
//! idle upstream connections itself ([`IdleUpstreams`]) and drives the one it uses from its
//! own task: the request future polls the connection until the response head is in, and the
//! response body ([`UpstreamBody`]) polls it while the body streams, then gives it back. No
//! lock is contended, no other task is woken on the way.
//!
//! The cost is one upstream connection per client connection that has had a request (more for
//! HTTP/2 clients with concurrent streams), held while that client connection lives — the
//! same as nginx's `keepalive` to an upstream, without a global cap.
//!
//! `Upgrade` requests get a connection of their own, run as its own task (the tunnel outlives
//! the request), as before.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::body::{BoxError, RequestBody};
use crate::upstream::{Target, UpstreamError, UpstreamIo};

/// Idle upstream connections a client connection keeps (HTTP/1.1 needs one; HTTP/2 clients
/// with concurrent streams, or clients that use several routes, more).
const MAX_IDLE: usize = 8;

type Connection = http1::Connection<TokioIo<UpstreamIo>, RequestBody>;

/// One upstream HTTP/1.1 connection, driven by whoever holds it.
pub(crate) struct UpstreamConn {
    target: Arc<Target>,
    sender: http1::SendRequest<RequestBody>,
    conn: Connection,
    /// The connection future has completed (closed, or failed): never poll it again.
    ended: bool,
    /// Why it failed, if it did (e.g. the upstream's TLS alert refusing our certificate,
    /// which TLS 1.3 delivers after the handshake).
    error: Option<hyper::Error>,
}

// The request is the large variant and the one that must come back whole: no box.
#[allow(clippy::large_enum_variant)]
enum SendError {
    /// The connection could not take the request (it closed while idle): the request comes
    /// back untouched, to go on a fresh connection.
    Unsent(Request<RequestBody>),
    Failed(hyper::Error),
}

impl UpstreamConn {
    async fn open(target: &Arc<Target>) -> Result<Self, UpstreamError> {
        let io = target.open().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        Ok(Self {
            target: target.clone(),
            sender,
            conn,
            ended: false,
            error: None,
        })
    }

    /// Lets the connection read and write; false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended {
            if let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx) {
                self.ended = true;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                    self.error = Some(e);
                }
            }
        }
        !self.ended
    }

    /// Sends `req` and drives the connection until the response head is in.
    async fn send(&mut self, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let ready = poll_fn(|cx| {
            let alive = self.drive(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending if alive => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await;
        if !ready {
            return Err(SendError::Unsent(req));
        }
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
        .map_err(|mut e| match e.take_message() {
            Some(req) => SendError::Unsent(req),
            None => SendError::Failed(e.into_error()),
        })
    }
}

/// The idle upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct IdleUpstreams {
    // Only ever locked by the client connection's own requests: uncontended for HTTP/1.1.
    // Boxed: a connection is large (hyper's buffers and state), and it moves between this
    // list, the request and the response body on every request.
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

/// Sends `req` to `target` on one of `idle`'s connections, or a new one; the connection goes
/// back to `idle` when the response body is done. `upgrade`: the request asks to switch
/// protocols, so the connection must be able to hand its I/O over (its own task).
pub(crate) async fn send(
    idle: &Arc<IdleUpstreams>,
    target: &Arc<Target>,
    mut req: Request<RequestBody>,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    if upgrade {
        let io = target.open().await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Http)?;
        return Ok(response.map(|body| UpstreamBody::new(body, None)));
    }
    if let Some(mut conn) = idle.take(target) {
        match conn.send(req).await {
            Ok(response) => return Ok(wrap(response, conn, idle)),
            Err(SendError::Failed(e)) => return Err(UpstreamError::Http(e)),
            // Closed while idle (the upstream's keep-alive timeout): a new connection.
            Err(SendError::Unsent(back)) => req = back,
        }
    }
    let mut conn = Box::new(UpstreamConn::open(target).await?);
    match conn.send(req).await {
        Ok(response) => Ok(wrap(response, conn, idle)),
        Err(SendError::Failed(e)) => Err(UpstreamError::Http(e)),
        Err(SendError::Unsent(_)) => Err(match conn.error.take() {
            Some(e) => UpstreamError::Http(e),
            None => UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the upstream closed a new connection before the request",
            )),
        }),
    }
}

fn wrap(
    response: Response<Incoming>,
    conn: Box<UpstreamConn>,
    idle: &Arc<IdleUpstreams>,
) -> Response<UpstreamBody> {
    let home = Some((conn, idle.clone()));
    response.map(|body| UpstreamBody::new(body, home))
}

/// An upstream response body that drives its connection while it streams and returns the
/// connection to its client connection's idle list once complete. Dropped before the end (the
/// client went away), it closes the upstream connection: it is mid-response.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    home: Option<(Box<UpstreamConn>, Arc<IdleUpstreams>)>,
}

impl UpstreamBody {
    fn new(inner: Incoming, home: Option<(Box<UpstreamConn>, Arc<IdleUpstreams>)>) -> Self {
        Self { inner, home }
    }

    /// The response is complete: let the connection settle (it may close, e.g. after
    /// `Connection: close`) and give it back if it is still open.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let Some((mut conn, idle)) = self.home.take() {
            if conn.drive(cx) {
                idle.put(conn);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodies the server never polls (empty, HEAD, 204/304) end here: the connection
        // already saw the end of the message.
        if let Some((conn, idle)) = self.home.take() {
            if self.inner.is_end_stream() && !conn.ended {
                idle.put(conn);
            }
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
        let mut driven = false;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // hyper's server stops polling once the body says it is at its end.
                    if this.inner.is_end_stream() {
                        this.finish(cx);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.home = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => {
                    this.finish(cx);
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            // Nothing buffered: let the connection read, then look once more.
            match this.home.as_mut() {
                Some((conn, _)) if !driven => {
                    conn.drive(cx);
                    driven = true;
                }
                _ => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
