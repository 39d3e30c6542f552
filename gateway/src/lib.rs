//! Portcullis gateway: the mTLS reverse proxy that lets only genuine, inventoried, currently
//! trusted devices reach internal web apps.
//!
//! Public surface:
//!
//! ```no_run
//! # async fn example(
//! #     config: portcullis_config::Config,
//! #     new_config: portcullis_config::Config,
//! #     status: std::sync::Arc<portcullis_policy::StatusStore>,
//! # ) -> anyhow::Result<()> {
//! use portcullis_gateway::{admin::Admin, prometheus::Registry, CancellationToken, Gateway};
//!
//! let registry = Registry::new();
//! let gateway = Gateway::new(&config, status, &registry)?; // reads files, binds
//! println!("listening on {}", gateway.local_addr());
//! let shutdown = CancellationToken::new();
//! let admin = Admin::bind("127.0.0.1:0".parse()?, registry, Some(gateway.clone()))?;
//! tokio::spawn(admin.run(shutdown.clone()));
//! gateway.reload(&new_config)?; // all-or-nothing; on error the old state serves
//! gateway.run(shutdown).await?; // serves until `shutdown`, then drains
//! # Ok(())
//! # }
//! ```
//!
//! What happens per connection and per request:
//!
//! 1. TLS handshake (rustls, TLS 1.2/1.3, ALPN h2 + http/1.1): the device certificate verifier
//!    checks the chain against the *current* trust anchors (`tls.rs`). Refusals are logged with
//!    the reason code and counted in `portcullis_handshake_failures_total{reason}`.
//! 2. The `DeviceIdentity` is parsed once per connection, with the identity header values
//!    derived from the certificate; a resumed TLS session is re-verified (`listener.rs`).
//! 3. Every request: JWKS (public) → host + path → route (`routes.rs`) → certificate still
//!    within its validity → status snapshot lookup and route rules (`policy`, decisions cached
//!    per certificate, route and snapshot generation when the rules do not read the request) →
//!    inbound identity headers stripped, the route's identity headers injected
//!    (`identity_headers.rs`, `assertion.rs`) → forwarded with streaming bodies (`proxy.rs`).
//!    One audit line per decision (`audit.rs`).
//! 4. A status change cuts every open connection and tunnel of a device that lost trust
//!    (`registry.rs`).
//!
//! [`Gateway::new`] and [`Gateway::reload`] must be called inside a Tokio runtime.

pub mod admin;
mod assertion;
mod audit;
mod body;
mod h1;
mod identity_headers;
mod listener;
mod memo;
mod metrics;
mod outbound;
mod proxy;
mod registry;
mod response;
mod routes;
mod tls;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use portcullis_config::{ClientAuth, Config, GatewayConfig, Limits};
use portcullis_policy::StatusStore;
use tokio_util::task::TaskTracker;

pub use assertion::JWKS_PATH;
/// The allocator the `portcullis` binary installs as its global allocator: the proxy
/// allocates and frees on every request, and glibc's malloc showed in the profile.
pub use mimalloc;
/// Re-exported so that callers use the same version as the gateway.
pub use prometheus;
pub use tokio_util::sync::CancellationToken;

use crate::assertion::AssertionSigner;
use crate::audit::{AuditRecord, AuditSink};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routes::RouteTable;
use crate::tls::{TlsShared, TrustState};
use crate::upstream::UpstreamTls;

/// Everything a reload replaces, swapped whole: a request keeps the `Arc<State>` it started
/// with, so it finishes on the config it began under.
pub(crate) struct State {
    /// Distinguishes route tables (per-connection decision memos key on it).
    pub epoch: u64,
    pub routes: RouteTable,
    pub limits: Limits,
    pub assertion: Arc<AssertionSigner>,
    pub audit: Arc<AuditSink>,
    pub tls: Arc<rustls::ServerConfig>,
    pub http: auto::Builder<TokioExecutor>,
    pub listen: SocketAddr,
}

/// Request ids: a random per-process prefix and a counter (unique, cheap, sortable per process).
pub(crate) struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let random = uuid::Uuid::new_v4().as_u128();
        Self {
            prefix: (random >> 96) as u32,
            counter: AtomicU64::new(1),
        }
    }

    /// 24 lowercase hex digits, formatted without `fmt`.
    pub fn next(&self) -> http::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 24];
        for (i, digit) in id[..8].iter_mut().enumerate() {
            *digit = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, digit) in id[8..].iter_mut().enumerate() {
            *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        http::HeaderValue::from_bytes(&id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

pub(crate) struct Shared {
    pub state: ArcSwap<State>,
    /// Read by the certificate verifier on every handshake.
    pub trust: Arc<ArcSwap<TrustState>>,
    pub tls_shared: TlsShared,
    pub status: Arc<StatusStore>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// TLS settings for `https://` upstreams without their own CA (the system roots, loaded
    /// once).
    pub default_tls: UpstreamTls,
    pub listening: AtomicBool,
    pub request_ids: RequestIds,
    /// Connections and tunnels, for the drain on shutdown.
    pub tasks: TaskTracker,
}

/// The mTLS gateway. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    listener: Arc<Mutex<Option<std::net::TcpListener>>>,
    local_addr: SocketAddr,
}

fn gateway_section(cfg: &Config) -> anyhow::Result<&GatewayConfig> {
    cfg.gateway
        .as_ref()
        .ok_or_else(|| anyhow!("the config has no [gateway] section"))
}

#[allow(clippy::too_many_arguments)]
fn build_state(
    cfg: &Config,
    gw: &GatewayConfig,
    previous: Option<&State>,
    tls_shared: &TlsShared,
    trust: &Arc<ArcSwap<TrustState>>,
    new_trust: &TrustState,
    metrics: &Arc<Metrics>,
    default_tls: &UpstreamTls,
) -> anyhow::Result<State> {
    static EPOCH: AtomicU64 = AtomicU64::new(0);
    let routes = RouteTable::build(&gw.routes, default_tls, metrics)?;
    let assertion = match previous {
        Some(p) if p.assertion.same_config(&gw.assertion) => p.assertion.clone(),
        _ => Arc::new(AssertionSigner::new(&gw.assertion).context("gateway.assertion")?),
    };
    let audit = match previous {
        Some(p) if p.audit.spec() == cfg.audit.sink => p.audit.clone(),
        _ => Arc::new(AuditSink::open(&cfg.audit.sink)?),
    };
    let mandatory = gw.client_auth == ClientAuth::Required;
    let tls = tls_shared.server_config(trust, new_trust, mandatory, metrics, &audit)?;
    Ok(State {
        epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
        routes,
        limits: gw.limits.clone(),
        assertion,
        audit,
        tls,
        http: listener::http_builder(&gw.limits),
        listen: gw.listen,
    })
}

impl Gateway {
    /// Reads every file the `[gateway]` section names (trust roots, listener certificate and
    /// key, assertion keys, upstream CAs), compiles the routes, registers the metrics on
    /// `registry`, and binds `gateway.listen` (port 0: see [`Gateway::local_addr`]).
    pub fn new(
        cfg: &Config,
        status: Arc<StatusStore>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let gw = gateway_section(cfg)?;
        let metrics = Arc::new(Metrics::new(registry).context("registering gateway metrics")?);
        let trust = Arc::new(ArcSwap::from_pointee(TrustState::load(&cfg.trust)?));
        let current_trust = trust.load_full();
        if current_trust.anchors.is_empty() {
            tracing::warn!("no trust anchors loaded: every client certificate will be refused");
        }
        let key = tls::load_certified_key(&gw.cert, &gw.key)?;
        let tls_shared = TlsShared::new(key)?;
        let default_tls = upstream::default_tls()?;
        let state = build_state(
            cfg,
            gw,
            None,
            &tls_shared,
            &trust,
            &current_trust,
            &metrics,
            &default_tls,
        )?;
        let listener = std::net::TcpListener::bind(gw.listen)
            .with_context(|| format!("gateway.listen: cannot bind {}", gw.listen))?;
        listener
            .set_nonblocking(true)
            .context("gateway listener: set_nonblocking")?;
        let local_addr = listener.local_addr()?;
        metrics.observe_snapshot(&status.current());
        Ok(Self {
            shared: Arc::new(Shared {
                state: ArcSwap::from_pointee(state),
                trust,
                tls_shared,
                status,
                registry: Arc::new(Registry::default()),
                metrics,
                default_tls,
                listening: AtomicBool::new(false),
                request_ids: RequestIds::new(),
                tasks: TaskTracker::new(),
            }),
            listener: Arc::new(Mutex::new(Some(listener))),
            local_addr,
        })
    }

    /// Checks what [`Gateway::new`] would read, without binding or writing anything: trust
    /// roots, listener certificate and key (and that they match), every route (host pattern,
    /// rules, upstream URL, upstream CA and client certificate). For `portcullis config check`.
    /// Must be called inside a Tokio runtime.
    pub fn check(cfg: &Config) -> anyhow::Result<()> {
        let gw = gateway_section(cfg)?;
        let trust = TrustState::load(&cfg.trust)?;
        if trust.anchors.is_empty() {
            return Err(anyhow!("trust.roots: no trust anchors"));
        }
        tls::load_certified_key(&gw.cert, &gw.key)?;
        let metrics = Metrics::new(&prometheus::Registry::new())?;
        RouteTable::build(&gw.routes, &upstream::default_tls()?, &metrics)?;
        Ok(())
    }

    /// The address the gateway listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Rebuilds trust anchors, listener certificate, routes (rules, upstream clients), assertion
    /// signer and audit sink from `cfg`, and swaps them in only if every part succeeded. On
    /// error nothing changes. In-flight requests finish on the state they started with.
    /// `gateway.listen` cannot change without a restart (a change is logged and ignored).
    pub fn reload(&self, cfg: &Config) -> anyhow::Result<()> {
        let gw = gateway_section(cfg)?;
        let shared = &self.shared;
        let new_trust = TrustState::load(&cfg.trust)?;
        let key = tls::load_certified_key(&gw.cert, &gw.key)?;
        let old = shared.state.load_full();
        let state = build_state(
            cfg,
            gw,
            Some(&old),
            &shared.tls_shared,
            &shared.trust,
            &new_trust,
            &shared.metrics,
            &shared.default_tls,
        )?;
        if gw.listen != old.listen {
            tracing::warn!(
                configured = %gw.listen,
                serving = %old.listen,
                "gateway.listen changed; restart to move the listener"
            );
        }
        if new_trust.anchors.is_empty() {
            tracing::warn!("no trust anchors loaded: every client certificate will be refused");
        }
        let anchors_changed = new_trust.source_hash != shared.trust.load().source_hash;
        // Commit: anchors first (the next handshake verifies against them), then the
        // listener certificate, then everything per request.
        shared.trust.store(Arc::new(new_trust));
        shared.tls_shared.resolver.store(key);
        shared.state.store(Arc::new(state));
        tracing::info!(anchors_changed, "gateway configuration reloaded");
        if anchors_changed {
            // Live connections were verified against the old anchors: re-verify each
            // registered chain (one chain verification per connection, on reload only).
            let trust = shared.trust.load_full();
            let cuts = shared.registry.cut_where(|_, _, chain| match chain {
                [leaf, rest @ ..] => trust.verify(leaf, rest).err().map(|e| e.code()),
                [] => None,
            });
            for cut in &cuts {
                on_cut(shared, cut, "trust anchors changed");
            }
        }
        Ok(())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and drains in-flight requests
    /// (up to 30 s; WebSocket tunnels end at once). Also runs the status watcher that cuts the
    /// connections of devices that lose trust. Call once.
    pub fn run(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let shared = self.shared.clone();
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        async move {
            let listener = listener.ok_or_else(|| anyhow!("Gateway::run called twice"))?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("gateway listener: register with the runtime")?;
            tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
            let watch_stop = CancellationToken::new();
            let watcher = tokio::spawn(registry::watch_status(
                shared.registry.clone(),
                shared.status.clone(),
                watch_stop.clone(),
                {
                    let shared = shared.clone();
                    move |snapshot, cut| {
                        shared.metrics.observe_snapshot(snapshot);
                        let detail = match &snapshot.cause {
                            Some(cause) => {
                                format!("status generation {}: {cause}", snapshot.generation)
                            }
                            None => format!("status generation {}", snapshot.generation),
                        };
                        on_cut(&shared, cut, &detail);
                    }
                },
            ));
            let result = listener::serve(shared, listener, shutdown).await;
            watch_stop.cancel();
            let _ = watcher.await;
            result
        }
    }

    /// `Ok` when the listener accepts and trust anchors are loaded; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.shared.listening.load(Ordering::Acquire) {
            return Err("gateway listener is not accepting".into());
        }
        if self.shared.trust.load().anchors.is_empty() {
            return Err("no trust anchors loaded".into());
        }
        if let Some(why) = self
            .shared
            .status
            .liveness()
            .unready_reason(SystemTime::now())
        {
            return Err(why);
        }
        Ok(())
    }

    /// The JWKS document of the assertion keys.
    pub fn jwks(&self) -> bytes::Bytes {
        self.shared.state.load().assertion.jwks()
    }

    /// Rotates the assertion signing key: current → previous (still published), new current.
    pub fn rotate_assertion_key(&self) -> anyhow::Result<()> {
        self.shared.state.load().assertion.rotate()
    }

    /// Updates gauges that are computed rather than counted (snapshot age, generation).
    pub fn refresh_gauges(&self) {
        self.shared
            .metrics
            .observe_snapshot(&self.shared.status.current());
        self.shared
            .metrics
            .observe_liveness(self.shared.status.liveness(), SystemTime::now());
    }
}

fn on_cut(shared: &Shared, cut: &registry::Cut, detail: &str) {
    shared.metrics.connections_cut.inc();
    tracing::warn!(
        device_id = %cut.device_id,
        fingerprint = %cut.fingerprint,
        peer = %cut.peer,
        reason = cut.reason,
        detail,
        "connection cut"
    );
    shared.state.load().audit.write(&AuditRecord {
        time: audit::now_rfc3339(),
        event: "connection_cut",
        request_id: None,
        device_id: Some(&cut.device_id),
        fingerprint: Some(&cut.fingerprint),
        route: None,
        method: None,
        path: None,
        source_ip: Some(cut.peer),
        decision: "deny",
        reason: cut.reason,
        detail,
        upstream_status: None,
        latency_ms: None,
    });
}
