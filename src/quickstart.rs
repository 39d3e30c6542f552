//! `portcullis up`: the CA, its inventory and a gateway in one command, with nothing to prepare.
//!
//! The first run creates a data directory:
//!
//! ```text
//! portcullis-data/
//!   portcullis.toml            the config (examples/portcullis.toml explains every key)
//!   ca/pki/root.pem .key       the CA's root (bundle.pem: the trust anchor; keys are 0600)
//!   ca/pki/intermediate.pem .key   the issuing CA: ACME certificates, and the ones below
//!   ca/ca.db                   the inventory (laptop-alice active, tag eng; laptop-mallory
//!                              quarantined) and the ACME state, SQLite
//!   admin.tokens               the inventory admin API's bearer token (0600)
//!   pki/server.pem   .key      gateway certificate for localhost / 127.0.0.1
//!   devices/<id>.pem .key      demo device client certificates, 24 h lifetime
//!   assertion-keys/            ES256 keys of the X-Portcullis-Assertion JWT (created by serve)
//!   audit.log                  one JSON line per access decision
//! ```
//!
//! Later runs reuse it: the config, the CA and the inventory are never overwritten (change them:
//! that is the point of the tour), but a device or server certificate that is missing,
//! unreadable or about to expire is issued again from the same CA, so that `up` still works
//! the next day. The demo device certificates are made here, not over ACME: a device proves
//! itself over ACME with a hardware attestation, which a laptop running the tour may not have.
//!
//! Then it starts the built-in demo upstream (`demo_upstream`) on the address the `demo`
//! route points at, runs `serve` on the config (CA, gateway, admin listener), and prints the
//! commands that succeed and fail.
//!
//! The listener uses `client_auth = "optional"` so that the `health` route answers without a
//! certificate; the `demo` route still refuses any request without an active device (its rule
//! reads device tags, which a request without a certificate cannot satisfy).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use portcullis_gateway::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use portcullis_ca::clock::SystemClock;
use portcullis_ca::pki::{CaPaths, InitOptions};
use portcullis_ca::store::{NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;

use crate::demo_upstream::DemoUpstream;
use crate::devpki::{self, DeviceSpec};

pub const DEFAULT_DATA_DIR: &str = "portcullis-data";
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
pub const DEFAULT_UPSTREAM_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8480);
pub const DEFAULT_CA_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8444);
/// The port the CA's http-01 validator connects to (Pebble's default `httpPort`): certbot
/// `--standalone --http-01-port 5002` answers there without root.
const HTTP01_PORT: u16 = 5002;
/// The name the tour's certbot example asks a workload certificate for.
const HTTP01_NAME: &str = "app.localhost";
const TRUST_DOMAIN: &str = "portcullis.local";
/// The route whose upstream is the built-in demo app.
const DEMO_ROUTE: &str = "demo";
/// Re-issue a certificate that expires sooner than this.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// The demo devices: (id, status, tag, owner, platform).
const DEVICES: &[(&str, DeviceStatus, &str, &str, &str)] = &[
    (
        "laptop-alice",
        DeviceStatus::Active,
        "eng",
        "alice@example.com",
        "linux",
    ),
    (
        "laptop-mallory",
        DeviceStatus::Quarantined,
        "eng",
        "mallory@example.com",
        "windows",
    ),
];

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    /// Used only when the config is created; an existing config keeps its addresses.
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream_listen: SocketAddr,
    pub ca_listen: SocketAddr,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            upstream_listen: DEFAULT_UPSTREAM_LISTEN,
            ca_listen: DEFAULT_CA_LISTEN,
        }
    }
}

/// The files of a quickstart data directory, all absolute.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
    pub config: PathBuf,
    pub audit_log: PathBuf,
    /// The CA's data directory (`[ca] data_dir`).
    pub ca_dir: PathBuf,
    pub ca: CaPaths,
    pub admin_tokens: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub devices: PathBuf,
}

impl DataDir {
    fn new(root: PathBuf) -> Self {
        let ca_dir = root.join("ca");
        Self {
            config: root.join("portcullis.toml"),
            audit_log: root.join("audit.log"),
            ca: portcullis_ca::service::Ca::paths(&ca_dir),
            ca_dir,
            admin_tokens: root.join("admin.tokens"),
            server_cert: root.join("pki/server.pem"),
            server_key: root.join("pki/server.key"),
            devices: root.join("devices"),
            root,
        }
    }

    pub fn device_cert(&self, id: &str) -> PathBuf {
        self.devices.join(format!("{id}.pem"))
    }

    pub fn device_key(&self, id: &str) -> PathBuf {
        self.devices.join(format!("{id}.key"))
    }
}

/// Creates what is missing in the data directory and returns its layout. Idempotent.
pub fn prepare(opts: &UpOptions) -> anyhow::Result<DataDir> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create the data dir {}", opts.data_dir.display()))?;
    let root = std::fs::canonicalize(&opts.data_dir)
        .with_context(|| format!("cannot resolve {}", opts.data_dir.display()))?;
    let dir = DataDir::new(root);

    if !dir.ca.exists() {
        if dir.ca.dir.exists() && std::fs::read_dir(&dir.ca.dir)?.next().is_some() {
            // Half a CA: a new root would silently strand every certificate already handed out.
            bail!(
                "{} is incomplete (expected root, intermediate and bundle.pem); move it away \
                 to start over",
                dir.ca.dir.display()
            );
        }
        let opts = InitOptions {
            name: "Portcullis Dev".into(),
            ..InitOptions::default()
        };
        portcullis_ca::service::Ca::init(&dir.ca_dir, &opts, &SystemClock)?;
        eprintln!("created a CA in {}", dir.ca.dir.display());
    }
    let issuing = devpki::Ca::load(&dir.ca.intermediate_cert, &dir.ca.intermediate_key)
        .context("the data dir has a CA that cannot be read; move ca/ away to start over")?;

    if needs_issuing(&dir.server_cert) {
        issuing
            .issue_server(&[])?
            .write(&dir.server_cert, &dir.server_key)?;
        eprintln!(
            "issued the gateway certificate {}",
            dir.server_cert.display()
        );
    }
    for (id, ..) in DEVICES {
        let cert = dir.device_cert(id);
        if needs_issuing(&cert) {
            issuing
                .issue_device(&DeviceSpec::new(id, TRUST_DOMAIN))?
                .write(&cert, dir.device_key(id))?;
            eprintln!("issued the device certificate {}", cert.display());
        }
    }

    seed_inventory(&dir)?;
    if !dir.admin_tokens.exists() {
        devpki::write_private(
            &dir.admin_tokens,
            &format!(
                "# Bearer tokens of the inventory admin API: `name token` per line.\n\
                 # `portcullis inventory --config portcullis.toml ...` uses the first one.\n\
                 admin {}\n",
                random_token()?
            ),
        )?;
    }
    if !dir.config.exists() {
        devpki::write_public(&dir.config, &config_toml(opts))?;
        eprintln!("wrote {}", dir.config.display());
    }
    Ok(dir)
}

/// Adds the demo devices the inventory does not know yet; a device already there keeps
/// whatever status the user gave it.
fn seed_inventory(dir: &DataDir) -> anyhow::Result<()> {
    let db = portcullis_ca::service::Ca::db_path(&dir.ca_dir);
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    for (id, status, tag, owner, platform) in DEVICES {
        if store.device(id)?.is_some() {
            continue;
        }
        let device = NewDevice {
            id: (*id).into(),
            hw_module_id: None,
            platform: Some((*platform).into()),
            owner: Some((*owner).into()),
            tags: [(*tag).to_string()].into(),
            status: *status,
            source: "portcullis up".into(),
        };
        store.upsert_device(&device, "portcullis up", "demo device", SystemTime::now())?;
    }
    Ok(())
}

/// 256 bits from the OS, hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow!("the OS random number generator failed"))?;
    Ok(hex::encode(bytes))
}

/// Missing, unreadable, or expiring within [`RENEW_BEFORE`].
fn needs_issuing(cert: &Path) -> bool {
    let Ok(pem) = std::fs::read(cert) else {
        return true;
    };
    use rustls_pki_types::pem::PemObject;
    let Some(Ok(der)) = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next() else {
        return true;
    };
    match portcullis_policy::DeviceIdentity::from_der(der.as_ref(), TRUST_DOMAIN) {
        Ok(id) => id.not_after < SystemTime::now() + RENEW_BEFORE,
        Err(_) => true,
    }
}

fn config_toml(opts: &UpOptions) -> String {
    format!(
        r#"# Written by `portcullis up`. Every key is explained in examples/portcullis.toml.
# Relative paths are resolved against this file's directory.

[trust]
trust_domain = "{TRUST_DOMAIN}"
# No `roots`: the gateway trusts the bundle of the CA below (ca/pki/bundle.pem), and takes
# device status from the CA's inventory.
max_lifetime = "7d"

[ca]
listen = "{ca}"
data_dir = "ca"
name = "Portcullis Dev"

[ca.acme.http01]
# Workload (server) certificates over http-01, for these names only. The validator connects
# to port {HTTP01_PORT} so that `certbot --standalone --http-01-port {HTTP01_PORT}` works without root.
allowed_names = ["{HTTP01_NAME}"]
port = {HTTP01_PORT}
hosts = {{ "{HTTP01_NAME}" = "127.0.0.1" }}

[ca.admin_api]
# `portcullis inventory --config portcullis.toml list | show | set-status | import`
tokens_file = "admin.tokens"

[log]
format = "pretty"
level = "info"

[audit]
sink = "audit.log"

[admin]
# /metrics, /healthz, /readyz and the JWKS.
listen = "{admin}"

[gateway]
listen = "{listen}"
cert = "pki/server.pem"
key = "pki/server.key"
# `optional` so that the health route answers without a certificate. A certificate that is
# presented must still verify, and the demo route refuses requests without an active device.
client_auth = "optional"

[gateway.assertion]
issuer = "portcullis"
ttl = "5m"
key_dir = "assertion-keys"

[[gateway.routes]]
name = "health"
from = "localhost"
path_prefix = "/healthz"
to = "http://{upstream}"
identity_headers = []
allow = [{{ accept = true }}]

[[gateway.routes]]
name = "{DEMO_ROUTE}"
from = "localhost"
to = "http://{upstream}"
identity_headers = ["plain", "xfcc", "client-cert", "assertion"]
# Active devices tagged `eng` (a device must be active for any rule to count).
allow = [{{ tag = "eng" }}]
"#,
        admin = opts.admin_listen,
        listen = opts.listen,
        upstream = opts.upstream_listen,
        ca = opts.ca_listen,
    )
}

/// Where the `demo` route of `config` sends requests, if that is a loopback `http://` address
/// the demo upstream can listen on.
fn demo_upstream_addr(config: &portcullis_config::Config) -> Option<SocketAddr> {
    let route = config
        .gateway
        .as_ref()?
        .routes
        .iter()
        .find(|r| r.name.as_deref() == Some(DEMO_ROUTE))?;
    let uri: http::Uri = route.to.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    ip.is_loopback()
        .then(|| SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

/// The text `up` prints once the gateway is ready.
pub fn instructions(
    dir: &DataDir,
    gateway: SocketAddr,
    admin: Option<SocketAddr>,
    ca: Option<&portcullis_config::CaConfig>,
) -> String {
    let base = format!("https://localhost:{}", gateway.port());
    let bundle = dir.ca.bundle.display();
    let cert = |id: &str| {
        format!(
            "--cert {} --key {}",
            dir.device_cert(id).display(),
            dir.device_key(id).display()
        )
    };
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "portcullis".into());
    let mut s = String::new();
    s.push_str(&format!(
        "\nPortcullis is up: gateway {base} (data in {})\n\n",
        dir.root.display()
    ));
    s.push_str("This succeeds (laptop-alice is active and tagged eng; the demo app echoes the identity headers it got):\n");
    s.push_str(&format!(
        "  curl --cacert {bundle} {} {base}/\n\n",
        cert("laptop-alice")
    ));
    s.push_str("These are refused: 403 (quarantined device) and 496 (no device certificate):\n");
    s.push_str(&format!(
        "  curl --cacert {bundle} {} {base}/\n",
        cert("laptop-mallory")
    ));
    s.push_str(&format!("  curl --cacert {bundle} {base}/\n\n"));
    s.push_str("The health route needs no certificate:\n");
    s.push_str(&format!("  curl --cacert {bundle} {base}/healthz\n\n"));
    if let Some(ca) = ca {
        s.push_str(&format!(
            "ACME directory: {}/acme/directory (CA bundle: {bundle})\n",
            ca.base_url()
        ));
        if ca.admin_api.tokens_file.is_some() {
            s.push_str(&format!(
                "Quarantine alice (her open connections are cut within a second):\n  \
                 {exe} inventory --config {} set-status laptop-alice quarantined --reason \"lost laptop\"\n",
                dir.config.display()
            ));
        }
    }
    s.push_str(&format!("Audit log: tail -f {}\n", dir.audit_log.display()));
    if let Some(admin) = admin {
        s.push_str(&format!("Metrics:   curl http://{admin}/metrics\n"));
    }
    s.push_str("Stop with Ctrl-C.\n");
    s
}

/// Prepares the data dir, starts the demo upstream and the gateway, prints the instructions,
/// and serves until `shutdown`.
pub async fn run(opts: &UpOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = prepare(opts)?;
    let config = portcullis_config::load_file(&dir.config).map_err(|e| {
        anyhow!("{e}\n(the config in the data dir was edited and is now invalid; fix it or delete it to have `up` write a fresh one)")
    })?;
    let gateway_addr = config
        .gateway
        .as_ref()
        .map(|g| g.listen)
        .ok_or_else(|| anyhow!("{}: no [gateway] section", dir.config.display()))?;
    if gateway_addr != opts.listen && opts.listen != DEFAULT_LISTEN {
        eprintln!(
            "note: {} exists and listens on {gateway_addr}; --listen applies only to a new config",
            dir.config.display()
        );
    }

    match demo_upstream_addr(&config) {
        Some(addr) => {
            let bound = DemoUpstream::spawn(addr, shutdown.clone())
                .await
                .context("starting the demo upstream")?;
            eprintln!("demo upstream listening on http://{bound}");
        }
        None => eprintln!(
            "note: no route named `{DEMO_ROUTE}` with a loopback http:// upstream; \
             the demo upstream is not started"
        ),
    }

    let mut serve = {
        let path = dir.config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { crate::serve::run_with_shutdown(&path, shutdown).await })
    };
    let admin = config.admin.listen;
    tokio::select! {
        ready = wait_ready(admin, gateway_addr) => {
            if let Err(e) = ready {
                shutdown.cancel();
                let _ = serve.await;
                return Err(e);
            }
            // A foreign process on the admin port could answer /readyz while our own bind
            // failed a moment ago: give a failed start the chance to show before claiming
            // that Portcullis is up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if serve.is_finished() {
                return flatten(serve.await);
            }
            println!("{}", instructions(&dir, gateway_addr, admin, config.ca.as_ref()));
        }
        // The gateway failed before it was ready (e.g. the port is taken): its error is the
        // one to show.
        ended = &mut serve => return flatten(ended),
    }
    flatten(serve.await)
}

fn flatten(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    ended.map_err(|e| anyhow!("the gateway task panicked: {e}"))?
}

/// Waits until the admin `/readyz` says ready (or, without an admin listener, until the
/// gateway port accepts connections). 30 s at most: a slow disk or a busy CI runner.
async fn wait_ready(admin: Option<SocketAddr>, gateway: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match admin {
            Some(addr) => readyz(addr).await,
            None => tokio::net::TcpStream::connect(gateway).await.is_ok(),
        };
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway did not become ready within 30 s (see the log above)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `GET /readyz` over plain HTTP/1.0: true on a 200.
pub async fn readyz(admin: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(admin).await?;
        tcp.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(
            buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}
