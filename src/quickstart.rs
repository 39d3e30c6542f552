//! `portcullis up`: a working gateway in one command, with nothing to prepare.
//!
//! The first run creates a data directory:
//!
//! ```text
//! portcullis-data/
//!   portcullis.toml            the config (examples/portcullis.toml explains every key)
//!   inventory.toml             two devices: laptop-alice (active, tag eng),
//!                              laptop-mallory (quarantined)
//!   pki/root-ca.pem  .key      dev root CA (the trust anchor; keys are 0600)
//!   pki/issuing-ca.pem .key    dev issuing CA, signs the server and device certificates
//!   pki/server.pem   .key      gateway certificate for localhost / 127.0.0.1 (+ issuing CA)
//!   devices/<id>.pem .key      device client certificates (+ issuing CA), 24 h lifetime
//!   assertion-keys/            ES256 keys of the X-Portcullis-Assertion JWT (created by serve)
//!   audit.log                  one JSON line per access decision
//! ```
//!
//! Later runs reuse it: the config, inventory and CAs are never overwritten (edit them: that is
//! the point of the tour), but a device or server certificate that is missing, unreadable or
//! about to expire is issued again from the same issuing CA, so that `up` still works the next
//! day.
//!
//! Then it starts the built-in demo upstream (`demo_upstream`) on the address the `demo`
//! route points at, runs `serve` on the config, and prints the `curl` commands that succeed
//! and fail.
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

use crate::demo_upstream::DemoUpstream;
use crate::devpki::{self, Ca, DevPki, DeviceSpec, PkiFiles};

pub const DEFAULT_DATA_DIR: &str = "portcullis-data";
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
pub const DEFAULT_UPSTREAM_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8480);
const TRUST_DOMAIN: &str = "portcullis.local";
/// The route whose upstream is the built-in demo app.
const DEMO_ROUTE: &str = "demo";
/// Re-issue a certificate that expires sooner than this.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// The demo devices: (id, status, tags, owner, platform).
const DEVICES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "laptop-alice",
        "active",
        "eng",
        "alice@example.com",
        "linux",
    ),
    (
        "laptop-mallory",
        "quarantined",
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
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            upstream_listen: DEFAULT_UPSTREAM_LISTEN,
        }
    }
}

/// The files of a quickstart data directory, all absolute.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
    pub config: PathBuf,
    pub inventory: PathBuf,
    pub audit_log: PathBuf,
    pub pki: PkiFiles,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub devices: PathBuf,
}

impl DataDir {
    fn new(root: PathBuf) -> Self {
        let pki_dir = root.join("pki");
        Self {
            config: root.join("portcullis.toml"),
            inventory: root.join("inventory.toml"),
            audit_log: root.join("audit.log"),
            pki: PkiFiles::in_dir(&pki_dir),
            server_cert: pki_dir.join("server.pem"),
            server_key: pki_dir.join("server.key"),
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

    let pki_dir = dir
        .pki
        .root_cert
        .parent()
        .unwrap_or(&dir.root)
        .to_path_buf();
    let issuing: Ca = if dir.pki.all_exist() {
        DevPki::load(&pki_dir)
            .context("the data dir has a PKI that cannot be read; move pki/ away to start over")?
            .issuing
    } else if dir.pki.root_cert.exists() || dir.pki.issuing_cert.exists() {
        // Half a PKI: generating a new root would silently invalidate every certificate the
        // user already handed out.
        bail!(
            "{} is incomplete (expected root-ca.pem/.key and issuing-ca.pem/.key); \
             move it away to start over",
            pki_dir.display()
        );
    } else {
        let pki = DevPki::generate("Portcullis Dev")?;
        pki.write_to(&pki_dir)?;
        eprintln!("created a dev root and issuing CA in {}", pki_dir.display());
        pki.issuing
    };

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

    if !dir.inventory.exists() {
        devpki::write_public(&dir.inventory, &inventory_toml())?;
    }
    if !dir.config.exists() {
        devpki::write_public(&dir.config, &config_toml(opts))?;
        eprintln!("wrote {}", dir.config.display());
    }
    Ok(dir)
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

fn inventory_toml() -> String {
    let mut out = String::from(
        "# Demo inventory written by `portcullis up`.\n\
         #\n\
         # Change a status (active | quarantined | retired) and save: the gateway reloads this\n\
         # file within a second, and every open connection of a device that is no longer\n\
         # active is cut. Devices not listed here are refused (unknown_device).\n",
    );
    for (id, status, tag, owner, platform) in DEVICES {
        out.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\nstatus = \"{status}\"\ntags = [\"{tag}\"]\n\
             owner = \"{owner}\"\nplatform = \"{platform}\"\n"
        ));
    }
    out
}

fn config_toml(opts: &UpOptions) -> String {
    format!(
        r#"# Written by `portcullis up`. Every key is explained in examples/portcullis.toml.
# Relative paths are resolved against this file's directory.

[trust]
trust_domain = "{TRUST_DOMAIN}"
roots = ["pki/root-ca.pem"]
max_lifetime = "7d"

[inventory]
# Edit it and save: reloaded within a second.
file = "inventory.toml"

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
pub fn instructions(dir: &DataDir, gateway: SocketAddr, admin: Option<SocketAddr>) -> String {
    let base = format!("https://localhost:{}", gateway.port());
    let ca = dir.pki.root_cert.display();
    let cert = |id: &str| {
        format!(
            "--cert {} --key {}",
            dir.device_cert(id).display(),
            dir.device_key(id).display()
        )
    };
    let mut s = String::new();
    s.push_str(&format!(
        "\nPortcullis is up: gateway {base} (data in {})\n\n",
        dir.root.display()
    ));
    s.push_str("This succeeds (laptop-alice is active and tagged eng; the demo app echoes the identity headers it got):\n");
    s.push_str(&format!(
        "  curl --cacert {ca} {} {base}/\n\n",
        cert("laptop-alice")
    ));
    s.push_str("These are refused: 403 (quarantined device) and 496 (no device certificate):\n");
    s.push_str(&format!(
        "  curl --cacert {ca} {} {base}/\n",
        cert("laptop-mallory")
    ));
    s.push_str(&format!("  curl --cacert {ca} {base}/\n\n"));
    s.push_str("The health route needs no certificate:\n");
    s.push_str(&format!("  curl --cacert {ca} {base}/healthz\n\n"));
    s.push_str(&format!(
        "Quarantine alice: set status = \"quarantined\" in {} and save.\n",
        dir.inventory.display()
    ));
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
            println!("{}", instructions(&dir, gateway_addr, admin));
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
