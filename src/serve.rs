//! `portcullis serve`: runs every component the config file enables (the CA, the gateway, the
//! admin listener) and keeps them current.
//!
//! - CA (`[ca]`): opened (created on first start, crash recovery run), served over HTTPS on
//!   `ca.listen`. A gateway in the same process trusts the CA's bundle when `trust.roots` is
//!   empty, and follows the CA's status feed in memory (`portcullis_ca::feed::follow_local`):
//!   a quarantine reaches it without a file or a network.
//! - Status feed (`[status_feed]`, no `[ca]`): the gateway follows a remote CA's feed over
//!   mTLS (`status_feed.rs`), with the configured staleness mode. Changing it needs a restart.
//! - Logs go to stderr (JSON or pretty, from `[log]`), so that an audit sink on stdout stays a
//!   clean stream of JSON lines. `RUST_LOG`, when set, overrides `log.level`.
//! - Reload: on SIGHUP, and when the config file or a file it names for the listener (trust
//!   roots, gateway certificate and key) changes — polled every 500 ms by content, no
//!   dependency on inotify. A config that fails validation or that the gateway cannot apply is
//!   logged with the precise error and counted in `portcullis_config_reloads_total{result}`;
//!   the running config keeps serving.
//! - Inventory: when `[inventory] file` changes it is parsed again and published as a new
//!   status snapshot (open connections of devices that lost trust are cut); a bad file is
//!   logged and the last good snapshot stays.
//! - SIGTERM / SIGINT: graceful shutdown (in-flight requests drain).
//!
//! Changing `[log]`, `admin.listen`, `gateway.listen` or adding/removing `[gateway]` needs a
//! restart; a reload that does so says it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use portcullis_ca::clock::SystemClock;
use portcullis_ca::service::Ca;
use portcullis_config::{CaConfig, Config, LogConfig, LogFormat};
use portcullis_gateway::admin::Admin;
use portcullis_gateway::prometheus::{IntCounterVec, Opts, Registry};
use portcullis_gateway::{CancellationToken, Gateway};
use portcullis_policy::{
    parse_inventory, InventoryFormat, Liveness, StalenessPolicy, StatusSnapshot, StatusStore,
};

const POLL: Duration = Duration::from_millis(500);

/// Runs until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        on_signal.cancel();
    });
    run_with_shutdown(config_path, shutdown).await
}

/// Builds a multi-threaded runtime with `gateway.worker_threads` workers (0: one per core)
/// and runs [`run`] on it. For a `main` that is not async.
pub fn run_blocking(config_path: &Path) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let workers = config
        .gateway
        .as_ref()
        .map(|g| g.worker_threads)
        .filter(|n| *n > 0);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("portcullis");
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .build()
        .context("cannot start the Tokio runtime")?
        .block_on(run(config_path))
}

fn load(path: &Path) -> anyhow::Result<Config> {
    portcullis_config::load_file(path).map_err(|e| anyhow!("{e}"))
}

/// Fills in what a config leaves to a CA running in the same process: with no `trust.roots`,
/// the gateway trusts the CA's bundle. Applied to every load, so a reload keeps it.
fn complete(mut config: Config, ca: Option<&Ca>) -> Config {
    if let Some(ca) = ca {
        if config.trust.roots.is_empty() {
            config.trust.roots.push(ca.bundle_path().to_path_buf());
        }
    }
    config
}

/// Opens the CA of `[ca]` (creating it on first start) and binds its listener.
async fn open_ca(
    section: &CaConfig,
    trust_domain: &str,
) -> anyhow::Result<(Arc<Ca>, tokio::net::TcpListener)> {
    // Bind first: with port 0 and no base_url, the URLs the CA hands out must name the port
    // it actually got, not `:0`.
    let listener = tokio::net::TcpListener::bind(section.listen)
        .await
        .with_context(|| format!("ca.listen {}: cannot bind", section.listen))?;
    let mut section = section.clone();
    if section.base_url.is_none() {
        section.base_url = Some(format!("https://{}", listener.local_addr()?));
    }
    let settings = portcullis_ca::configure::settings(&section, trust_domain)?;
    let (ca, recovery) = Ca::open(settings, Arc::new(SystemClock))
        .await
        .context("opening the CA")?;
    if recovery != Default::default() {
        tracing::warn!(
            ?recovery,
            "the CA finished work a previous run left unfinished"
        );
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        directory = %ca.directory_url(),
        bundle = %ca.bundle_path().display(),
        "CA listening"
    );
    Ok((Arc::new(ca), listener))
}

/// Installs the global tracing subscriber once (later calls do nothing).
pub fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|e| {
            eprintln!(
                "log.level `{}` is not a filter ({e}); using `info`",
                log.level
            );
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs until `shutdown` is cancelled, then shuts down gracefully and returns. For tests and
/// `portcullis up`, which own their shutdown.
pub async fn run_with_shutdown(
    config_path: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let loaded = load(config_path)?;
    init_tracing(&loaded.log);

    let ca = match &loaded.ca {
        Some(section) => Some(open_ca(section, &loaded.trust.trust_domain).await?),
        None => None,
    };
    let ca_task = ca.as_ref().map(|(ca, _)| ca.clone());
    let mut ca_serve = ca.map(|(ca, listener)| {
        let stop = shutdown.clone();
        tokio::spawn(async move { ca.serve(listener, stop.cancelled_owned()).await })
    });
    let ca = ca_task;
    let mut config = complete(loaded, ca.as_deref());

    let registry = Registry::new();
    let reloads = IntCounterVec::new(
        Opts::new(
            "portcullis_config_reloads_total",
            "Config reloads, by result (ok, error)",
        ),
        &["result"],
    )?;
    registry.register(Box::new(reloads.clone()))?;
    for result in ["ok", "error"] {
        reloads.with_label_values(&[result]);
    }

    let mut inventory = Watched::new(config.inventory.file.clone());
    let mut initial = match (&config.inventory.file, &ca) {
        (Some(path), _) => read_inventory(path)?,
        (None, Some(ca)) => portcullis_ca::status::snapshot(&ca.store, SystemTime::now())
            .context("reading the CA's inventory")?,
        (None, None) => {
            tracing::warn!("no [inventory] file: every device is unknown and will be refused");
            StatusSnapshot::default()
        }
    };
    // Generations start at 1; later publishes only grow them.
    initial.generation = initial.generation.max(1);
    inventory.refresh();
    let status = Arc::new(match &config.status_feed {
        Some(feed) => StatusStore::with_liveness(
            initial,
            Liveness::tracked(StalenessPolicy {
                max_staleness: feed.max_staleness,
                mode: feed.mode,
            }),
        ),
        None => StatusStore::new(initial),
    });
    let follower = match (&ca, &config.status_feed) {
        (Some(ca), _) if config.inventory.file.is_none() => {
            Some(tokio::spawn(portcullis_ca::feed::follow_local(
                ca.feed.clone(),
                status.clone(),
                Arc::new(SystemClock),
                shutdown.clone().cancelled_owned(),
            )))
        }
        (None, Some(feed)) => {
            let client = crate::status_feed::FeedClient::new(feed)?;
            tracing::info!(url = %feed.url, mode = feed.mode.as_str(), "following the CA's status feed");
            Some(tokio::spawn(crate::status_feed::follow(
                client,
                status.clone(),
                shutdown.clone(),
            )))
        }
        _ => None,
    };

    let gateway = match &config.gateway {
        Some(_) => Some(Gateway::new(&config, status.clone(), &registry)?),
        None => None,
    };
    let admin = match config.admin.listen {
        Some(addr) => Some(Admin::bind(addr, registry.clone(), gateway.clone())?),
        None => None,
    };
    if let Some(a) = &admin {
        tracing::info!(addr = %a.local_addr()?, "admin listening");
    }
    let admin_task = admin.map(|a| tokio::spawn(a.run(shutdown.clone())));
    let mut gateway_task = gateway
        .as_ref()
        .map(|g| tokio::spawn(g.run(shutdown.clone())));

    let mut config_files = Watched::many(config_path, &config);
    config_files.refresh();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut failure = None;
    loop {
        let reload_now = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            ended = async {
                match ca_serve.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                ca_serve = None;
                // The CA only returns before shutdown when it failed.
                failure = Some(match ended {
                    Ok(Ok(())) => anyhow!("the CA stopped"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the CA failed"),
                    Err(e) => anyhow!("the CA task panicked: {e}"),
                });
                shutdown.cancel();
                break;
            }
            ended = async {
                match gateway_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                gateway_task = None;
                // The gateway only returns on its own when it failed.
                failure = Some(match ended {
                    Ok(Ok(())) => anyhow!("the gateway stopped"),
                    Ok(Err(e)) => e.context("the gateway failed"),
                    Err(e) => anyhow!("the gateway task panicked: {e}"),
                });
                shutdown.cancel();
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                config_files.refresh();
                true
            }
            _ = tick.tick() => {
                if inventory.refresh() {
                    if let Some(path) = &config.inventory.file {
                        republish(path, &status);
                    }
                }
                config_files.refresh()
            }
        };
        if !reload_now {
            continue;
        }
        match reload(config_path, &config, gateway.as_ref(), ca.as_deref()) {
            Ok(next) => {
                reloads.with_label_values(&["ok"]).inc();
                if next.inventory.file != config.inventory.file {
                    inventory = Watched::new(next.inventory.file.clone());
                    inventory.refresh();
                    if let Some(path) = &next.inventory.file {
                        republish(path, &status);
                    }
                }
                config_files = Watched::many(config_path, &next);
                config_files.refresh();
                config = next;
            }
            Err(e) => {
                reloads.with_label_values(&["error"]).inc();
                tracing::error!("config reload refused, the running config stays: {e:#}");
            }
        }
    }

    if let Some(task) = gateway_task {
        match task.await {
            Ok(Ok(())) => tracing::debug!("gateway stopped"),
            Ok(Err(e)) => tracing::error!("gateway: {e:#}"),
            Err(e) => tracing::error!("gateway task: {e}"),
        }
    }
    if let Some(task) = ca_serve {
        match task.await {
            Ok(Ok(())) => tracing::debug!("CA stopped"),
            Ok(Err(e)) => tracing::error!("CA: {e:#}"),
            Err(e) => tracing::error!("CA task: {e}"),
        }
    }
    if let Some(task) = follower {
        let _ = task.await;
    }
    if let Some(task) = admin_task {
        if let Ok(Err(e)) = task.await {
            tracing::error!("admin: {e:#}");
        }
        tracing::debug!("admin stopped");
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Loads and applies a new config; `Err` leaves everything as it was.
fn reload(
    path: &Path,
    current: &Config,
    gateway: Option<&Gateway>,
    ca: Option<&Ca>,
) -> anyhow::Result<Config> {
    let next = complete(load(path)?, ca);
    if next.ca != current.ca {
        tracing::warn!("[ca] changed; restart to apply it");
    }
    if next.status_feed != current.status_feed {
        tracing::warn!("[status_feed] changed; restart to apply it");
    }
    match (gateway, &next.gateway) {
        (Some(g), Some(_)) => g.reload(&next)?,
        (None, Some(_)) => {
            tracing::warn!("a [gateway] section was added; restart to start the gateway")
        }
        (Some(_), None) => {
            tracing::warn!("the [gateway] section was removed; restart to stop the gateway")
        }
        (None, None) => {}
    }
    if next.log != current.log {
        tracing::warn!("[log] changed; restart to apply it");
    }
    if next.admin.listen != current.admin.listen {
        tracing::warn!("admin.listen changed; restart to move the admin listener");
    }
    tracing::info!(path = %path.display(), "config reloaded");
    Ok(next)
}

fn inventory_format(path: &Path) -> InventoryFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => InventoryFormat::Json,
        _ => InventoryFormat::Toml,
    }
}

fn read_inventory(path: &Path) -> anyhow::Result<StatusSnapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("inventory: cannot read {}", path.display()))?;
    let mut snapshot = parse_inventory(&text, inventory_format(path))
        .map_err(|e| anyhow!("inventory {}: {e}", path.display()))?;
    if snapshot.produced_at.is_none() {
        snapshot.produced_at = Some(SystemTime::now());
    }
    Ok(snapshot)
}

fn republish(path: &Path, status: &StatusStore) {
    match read_inventory(path) {
        Ok(snapshot) => {
            let devices = snapshot.device_count();
            let generation = status.publish(snapshot);
            tracing::info!(path = %path.display(), devices, generation, "inventory reloaded");
        }
        Err(e) => tracing::error!("inventory reload refused, the last snapshot stays: {e:#}"),
    }
}

/// Files watched by content: `refresh` says whether any changed since the last call.
struct Watched {
    files: Vec<(PathBuf, Option<u64>)>,
}

impl Watched {
    fn new(path: Option<PathBuf>) -> Self {
        Self {
            files: path.into_iter().map(|p| (p, None)).collect(),
        }
    }

    /// The config file and what it names for the listener's TLS.
    fn many(config_path: &Path, config: &Config) -> Self {
        let mut files = vec![config_path.to_path_buf()];
        files.extend(config.trust.roots.iter().cloned());
        if let Some(gw) = &config.gateway {
            files.push(gw.cert.clone());
            files.push(gw.key.clone());
        }
        Self {
            files: files.into_iter().map(|p| (p, None)).collect(),
        }
    }

    fn refresh(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.files {
            let now = std::fs::read(&*path).ok().map(|bytes| {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            });
            if *seen != now {
                // The first look only records.
                changed |= seen.is_some() || now.is_none();
                *seen = now;
            }
        }
        changed
    }
}
