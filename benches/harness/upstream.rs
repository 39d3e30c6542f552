//! The one upstream both proxies forward to: a bare HTTP/1.1 server ([`super::wire`]) on
//! 127.0.0.1 answering every request with a 2-byte body, on one dedicated thread so that its
//! cost is the same, and small, for both proxies.
//!
//! It also counts the identity each proxy passed on, so that a run proves the proxies did the
//! comparable work they were configured for (Portcullis: `X-Portcullis-Assertion`; nginx:
//! `X-Client-Verify: SUCCESS`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

/// What the upstream saw, monotonic counters.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    /// Requests carrying a (non-empty) `X-Portcullis-Assertion` and `X-Portcullis-Device-Id`.
    pub portcullis_identity: AtomicU64,
    /// Requests carrying `X-Client-Verify: SUCCESS`.
    pub nginx_verified: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenSnapshot {
    pub requests: u64,
    pub portcullis_identity: u64,
    pub nginx_verified: u64,
}

impl SeenSnapshot {
    pub fn since(self, earlier: SeenSnapshot) -> SeenSnapshot {
        SeenSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            portcullis_identity: self
                .portcullis_identity
                .saturating_sub(earlier.portcullis_identity),
            nginx_verified: self.nginx_verified.saturating_sub(earlier.nginx_verified),
        }
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> anyhow::Result<Self> {
        // Bound here, before the thread starts, so that the address is known synchronously and
        // a bind failure is an error of `start`.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("upstream: cannot bind")?;
        listener
            .set_nonblocking(true)
            .context("upstream: set_nonblocking")?;
        let addr = listener.local_addr().context("upstream: local_addr")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("upstream: tokio runtime")?;
        let seen = Arc::new(Seen::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen_in = seen.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || runtime.block_on(serve(listener, seen_in, stopped)))
            .context("upstream: cannot spawn its thread")?;
        Ok(Self {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn seen(&self) -> SeenSnapshot {
        SeenSnapshot {
            requests: self.seen.requests.load(Ordering::Relaxed),
            portcullis_identity: self.seen.portcullis_identity.load(Ordering::Relaxed),
            nginx_verified: self.seen.nginx_verified.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    seen: Arc<Seen>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench upstream: cannot register the listener: {e}");
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let seen = seen.clone();
                connections.spawn(super::wire::serve(stream, move |r| {
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    if r.portcullis_identity {
                        seen.portcullis_identity.fetch_add(1, Ordering::Relaxed);
                    }
                    if r.nginx_verified {
                        seen.nginx_verified.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            // Reap finished connection tasks so the set does not grow over a run.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}
