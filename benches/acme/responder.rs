//! The client side of http-01 (RFC 8555 §8.3): a loopback HTTP/1.1 server answering
//! `GET /.well-known/acme-challenge/<token>` with the key authorization, from an in-memory
//! token map (instant-acme) or from files in a directory (dehydrated's `WELLKNOWN`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Default)]
struct Shared {
    tokens: Mutex<HashMap<String, String>>,
    dir: Option<PathBuf>,
    /// Requests answered 200 / 404.
    served: AtomicU64,
    missed: AtomicU64,
}

/// Runs on the Tokio runtime it is started on; stops when dropped.
pub struct Responder {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Binds `addr` (port 0: any) and serves tokens put in with [`Responder::insert`], then
    /// files of `dir` named by the token.
    pub async fn start(addr: SocketAddr, dir: Option<PathBuf>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            dir,
            ..Shared::default()
        });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.shared
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove(&self, token: &str) {
        self.shared.tokens.lock().unwrap().remove(token);
    }

    /// (answered with a key authorization, answered 404).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.served.load(Ordering::Relaxed),
            self.shared.missed.load(Ordering::Relaxed),
        )
    }
}

fn answer(state: &Shared, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let found = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        // A token is base64url (RFC 8555 §8.1): nothing that could leave the directory.
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .and_then(|token| {
            let known = state.tokens.lock().unwrap().get(token).cloned();
            known.or_else(|| {
                let dir = state.dir.as_ref()?;
                std::fs::read_to_string(dir.join(token)).ok()
            })
        });
    match found {
        Some(body) => {
            state.served.fetch_add(1, Ordering::Relaxed);
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(body.trim_end().to_owned())))
                .unwrap()
        }
        None => {
            state.missed.fetch_add(1, Ordering::Relaxed);
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    }
}

/// A [`Responder`] with its own runtime thread, for tests that are not async.
pub struct BackgroundResponder {
    pub responder: Responder,
    _rt: tokio::runtime::Runtime,
}

impl BackgroundResponder {
    pub fn start(addr: SocketAddr, dir: Option<PathBuf>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let responder = rt.block_on(Responder::start(addr, dir))?;
        Ok(Self { responder, _rt: rt })
    }
}
