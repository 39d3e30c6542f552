//! `GET /feed/v2/status[?stream=S&generation=G]`: the feed as Server-Sent Events (WHATWG HTML
//! §9.2, `text/event-stream`). Only node certificates of this CA get it (see [`super::node`]);
//! anyone else gets a bare 403 and our log says why. With `stream` and `generation` of a
//! previous connection the subscriber resumes; otherwise it starts with a snapshot.
//!
//! A node certificate must also be one this CA recorded and has not revoked
//! (`portcullis ca node-revoke`): a revocation ends the node's open subscription within a
//! heartbeat of reaching the feed's revoked set (≈ 1.5 s), and refuses its reconnection.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;

use super::hub::FeedHub;
use super::node;
use crate::clock::Clock;
use crate::store::SqliteStore;
use crate::tls::PeerCertificates;

#[derive(Clone)]
pub struct FeedState {
    pub hub: Arc<FeedHub>,
    /// This CA's root certificate (DER): node certificates chain to it.
    pub root: Arc<[u8]>,
    pub trust_domain: Arc<str>,
    pub clock: Arc<dyn Clock>,
    /// Where node certificates are recorded and revoked.
    pub store: Arc<SqliteStore>,
}

#[derive(Debug, Deserialize)]
pub struct Since {
    stream: Option<String>,
    generation: Option<u64>,
}

pub fn router(state: FeedState) -> axum::Router {
    axum::Router::new()
        .route(
            portcullis_policy::feed::FEED_PATH,
            axum::routing::get(subscribe),
        )
        .with_state(state)
}

async fn subscribe(
    State(state): State<FeedState>,
    peer: Option<Extension<PeerCertificates>>,
    Query(since): Query<Since>,
) -> Response<Body> {
    let chain = peer.as_ref().map(|Extension(p)| &p.0[..]);
    let node = match node::authenticate(chain, &state.root, &state.trust_domain, state.clock.now())
        .and_then(|node| node::check_recorded(&state.store, node))
    {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!(reason = %e, "status feed subscription refused");
            return plain(StatusCode::FORBIDDEN, "forbidden\n");
        }
    };
    let position = match (&since.stream, since.generation) {
        (Some(s), Some(g)) => Some((s.as_str(), g)),
        _ => None,
    };
    let mut events = state.hub.events(position);
    tracing::info!(node = %node.name, resume = position.is_some(), "status feed subscriber connected");
    // Heartbeats wake this every HEARTBEAT, so the stream ends within one of the expiry (the
    // node reconnects with its renewed certificate) or of the revocation reaching the feed.
    let clock = state.clock.clone();
    let hub = state.hub.clone();
    let stream = futures_util::stream::poll_fn(move |cx| {
        if clock.now() >= node.not_after {
            tracing::info!(node = %node.name, "node certificate expired; ending its feed");
            return std::task::Poll::Ready(None);
        }
        if hub.current().is_serial_revoked(&node.serial) {
            tracing::warn!(node = %node.name, serial = %node.serial, "node certificate revoked; ending its feed");
            return std::task::Poll::Ready(None);
        }
        events
            .poll_recv(cx)
            .map(|e| e.map(|e| Ok::<_, Infallible>(Bytes::from(e.to_sse()))))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r
}
