//! Shared helpers of the end-to-end tests: a dev PKI with one certificate per way of being
//! wrong, the real `portcullis` binary on a generated config, the built-in demo upstream, and
//! thin wrappers around the real `curl` and `openssl`.
//!
//! Ports: the gateway and admin listeners bind port 0 and the test reads the bound addresses
//! from the binary's JSON log, so parallel test processes (and other work on the machine)
//! cannot collide on a port.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod feed;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::demo_upstream::DemoUpstream;
use portcullis::devpki::{DevPki, DeviceSpec, Usage};
use portcullis_gateway::CancellationToken;

pub const TRUST_DOMAIN: &str = "portcullis.test";
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Generous: a debug binary on a 2-core CI runner shared with other test processes.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `program` can be run. Missing in CI (`CI=true`) is a failure: the tests that need it
/// must not silently pass there. Elsewhere it is a loud skip.
pub fn require_program(program: &str) -> bool {
    let found = Command::new(program)
        .arg(if program == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("`{program}` is required by this test and CI=true: install it (.ci/run does)");
        }
        eprintln!();
        eprintln!("################################################################");
        eprintln!("## SKIP: `{program}` is not installed; this test did NOT run.");
        eprintln!("################################################################");
        eprintln!();
    }
    found
}

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Cred {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Inventory of the standard fixture: id → (status, tags).
pub const DEVICES: &[(&str, &str, &[&str])] = &[
    ("dev-alice", "active", &["eng"]),
    ("dev-bob", "active", &["sales"]),
    ("dev-mallory", "quarantined", &["eng"]),
    ("dev-retired", "retired", &["eng"]),
    ("dev-ws", "active", &["eng"]),
];

/// Everything a gateway test needs, in one temp dir. Drop order: the gateway (if any) first,
/// then the upstream's runtime, then the directory.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub shutdown: CancellationToken,
    pub upstream: SocketAddr,
    pub root: PathBuf,
    /// Certificates by name: `alice`, `bob`, `mallory`, `retired`, `ws`, `unknown`, `expired`,
    /// `not_yet_valid`, `too_long`, `no_id`, `server_auth`, `other_ca`.
    pub creds: BTreeMap<&'static str, Cred>,
    pub server: Cred,
    pub config: PathBuf,
    pub inventory: PathBuf,
    pub audit: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-")
            .tempdir()
            .expect("temp dir");
        let pki_dir = dir.path().join("pki");
        let pki = DevPki::generate("E2E").expect("dev PKI");
        let files = pki.write_to(&pki_dir).expect("write PKI");
        let server = Cred {
            cert: pki_dir.join("server.pem"),
            key: pki_dir.join("server.key"),
        };
        pki.issuing
            .issue_server(&[])
            .expect("server cert")
            .write(&server.cert, &server.key)
            .expect("write server cert");

        let other = DevPki::generate("Somebody Else").expect("other PKI");
        let hour = Duration::from_secs(3600);
        let spec = |id: &str| DeviceSpec::new(id, TRUST_DOMAIN);
        let specs: Vec<(&'static str, &DevPki, DeviceSpec)> = vec![
            ("alice", &pki, spec("dev-alice").platform("linux")),
            ("bob", &pki, spec("dev-bob")),
            ("mallory", &pki, spec("dev-mallory")),
            ("retired", &pki, spec("dev-retired")),
            ("ws", &pki, spec("dev-ws")),
            ("unknown", &pki, spec("dev-unknown")),
            ("expired", &pki, spec("dev-alice").expired(hour)),
            ("not_yet_valid", &pki, spec("dev-alice").not_yet_valid(hour)),
            // The fixture's max_lifetime is 7 days.
            ("too_long", &pki, spec("dev-alice").lifetime(30 * 24 * hour)),
            ("no_id", &pki, spec("dev-alice").without_device_id()),
            (
                "server_auth",
                &pki,
                spec("dev-alice").usage(Usage::ServerAuth),
            ),
            ("other_ca", &other, spec("dev-alice")),
        ];
        let mut creds = BTreeMap::new();
        for (name, ca, spec) in specs {
            let cred = Cred {
                cert: dir.path().join(format!("certs/{name}.pem")),
                key: dir.path().join(format!("certs/{name}.key")),
            };
            ca.issuing
                .issue_device(&spec)
                .expect("device cert")
                .write(&cred.cert, &cred.key)
                .expect("write device cert");
            creds.insert(name, cred);
        }

        let (rt, upstream, shutdown) = demo_upstream(2);

        let fixture = Self {
            rt,
            shutdown,
            upstream,
            root: files.root_cert,
            creds,
            server,
            config: dir.path().join("portcullis.toml"),
            inventory: dir.path().join("inventory.toml"),
            audit: dir.path().join("audit.log"),
            dir,
        };
        fixture.write_inventory(&[]);
        fixture
    }

    pub fn cred(&self, name: &str) -> &Cred {
        self.creds
            .get(name)
            .unwrap_or_else(|| panic!("no test certificate `{name}`"))
    }

    /// Writes the standard inventory with the given status overrides, atomically (a rename,
    /// as careful editors do), so that the gateway never reads half a file.
    pub fn write_inventory(&self, overrides: &[(&str, &str)]) {
        let mut text = String::new();
        for (id, status, tags) in DEVICES {
            let status = overrides
                .iter()
                .find(|(o, _)| o == id)
                .map_or(*status, |(_, s)| *s);
            let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
            text.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nstatus = \"{status}\"\ntags = [{}]\nplatform = \"linux\"\nowner = \"{id}@example.com\"\n\n",
                tags.join(", ")
            ));
        }
        write_atomically(&self.inventory, &text);
    }

    /// The standard config with `routes` (TOML `[[gateway.routes]]` blocks) and the listener's
    /// `client_auth`. `{upstream}` in `routes` is replaced by the demo upstream's address.
    pub fn config_text(&self, client_auth: &str, routes: &str) -> String {
        format!(
            r#"[trust]
trust_domain = "{TRUST_DOMAIN}"
roots = ["{root}"]
clock_skew = "30s"
max_lifetime = "7d"

[inventory]
file = "{inventory}"

[log]
format = "json"
level = "info"

[audit]
sink = "{audit}"

[admin]
listen = "127.0.0.1:0"

[gateway]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_auth = "{client_auth}"
worker_threads = 2

[gateway.assertion]
issuer = "portcullis-e2e"
ttl = "2m"

{routes}"#,
            root = self.root.display(),
            inventory = self.inventory.display(),
            audit = self.audit.display(),
            cert = self.server.cert.display(),
            key = self.server.key.display(),
            routes = routes.replace("{upstream}", &self.upstream.to_string()),
        )
    }

    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config, text);
    }

    /// Starts the binary on the current config.
    pub fn start(&self) -> Gateway {
        Gateway::start(&self.config, &self.dir.path().join("portcullis.log"))
    }

    /// Audit lines so far, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (the audit writer is asynchronous) for an audit line matching `pred`.
    pub fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.audit_lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no audit line for {what}; the audit log is:\n{}",
                    std::fs::read_to_string(&self.audit).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A multi-threaded runtime running the built-in demo upstream on a loopback port; the upstream
/// stops when the token is cancelled (or the runtime dropped).
pub fn demo_upstream(workers: usize) -> (tokio::runtime::Runtime, SocketAddr, CancellationToken) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = CancellationToken::new();
    let upstream = rt
        .block_on(DemoUpstream::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            stop.clone(),
        ))
        .expect("demo upstream");
    (rt, upstream, stop)
}

/// The `[gateway]` of the end-to-end labs: a loopback listener with `cert`/`key`, two
/// workers, one route `app` for `localhost` to `upstream` allowing devices tagged `eng`.
pub fn eng_gateway_toml(cert: &Path, key: &Path, upstream: SocketAddr) -> String {
    format!(
        r#"[gateway]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
worker_threads = 2

[[gateway.routes]]
name = "app"
from = "localhost"
to = "http://{upstream}"
allow = [{{ tag = "eng" }}]
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The running binary; killed (and reaped) on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub fn start(config: &Path, log: &Path) -> Self {
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start portcullis");
        let mut gw = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!(
                    "portcullis exited with {status} while starting; log:\n{}",
                    gw.log_text()
                );
            }
            let text = gw.log_text();
            if let (Some(addr), Some(admin)) = (
                logged_addr(&text, "gateway listening"),
                logged_addr(&text, "admin listening"),
            ) {
                gw.addr = addr;
                gw.admin = admin;
                if http_get(admin, "/readyz").is_some_and(|(status, _)| status == 200) {
                    return gw;
                }
            }
            if Instant::now() > deadline {
                panic!("portcullis did not become ready; log:\n{}", gw.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port())
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|(_, body)| body)
            .expect("GET /metrics")
    }

    /// The value of one Prometheus sample, e.g.
    /// `portcullis_handshake_failures_total{reason="expired"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// Waits until the log contains `needle` (after `from` bytes), returning the matching line.
    pub fn wait_log(&self, from: usize, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if let Some(line) = text
                .get(from..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains(needle))
            {
                return line.to_owned();
            }
            if Instant::now() > deadline {
                panic!("log has no line with {needle:?}; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The address in the JSON log line whose message is `message` (`"addr"` field; the gateway
/// may log it as `Some(…)`).
pub fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned))
        .and_then(|a| {
            let start = a.find(|c: char| c.is_ascii_digit() || c == '[')?;
            let end = a.rfind(|c: char| c.is_ascii_digit())? + 1;
            a.get(start..end)?.parse().ok()
        })
}

pub fn metric_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A plain HTTP/1.0 GET (admin listener): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    tcp.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A port that was free a moment ago (for `portcullis up`, which writes addresses into its
/// config before it binds; everything else binds port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One curl invocation.
#[derive(Debug, Clone)]
pub struct Curl {
    args: Vec<String>,
}

#[derive(Debug)]
pub struct CurlOutput {
    /// curl's exit code.
    pub exit: i32,
    /// `000` when there was no HTTP response.
    pub status: u16,
    /// `1.1`, `2`, … as curl reports `%{http_version}`.
    pub http_version: String,
    /// Seconds until the first response byte, and until the end.
    pub time_starttransfer: f64,
    pub time_total: f64,
    pub body: String,
    pub stderr: String,
}

const STATUS_MARK: &str = "\n@@curl-status@@";

impl Curl {
    /// `curl -sS` against the gateway, trusting the fixture root, resolving `localhost` to
    /// 127.0.0.1 (no IPv6 detour).
    pub fn new(gw: &Gateway, root: &Path, path: &str) -> Self {
        Self {
            args: vec![
                "-sS".into(),
                "--max-time".into(),
                "20".into(),
                "--resolve".into(),
                format!("localhost:{}:127.0.0.1", gw.port()),
                "--cacert".into(),
                root.display().to_string(),
                gw.url(path),
            ],
        }
    }

    pub fn cred(mut self, cred: &Cred) -> Self {
        self.args.extend([
            "--cert".into(),
            cred.cert.display().to_string(),
            "--key".into(),
            cred.key.display().to_string(),
        ]);
        self
    }

    pub fn header(mut self, header: &str) -> Self {
        self.args.extend(["-H".into(), header.into()]);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Replaces the URL (e.g. to address the gateway by IP).
    pub fn url(mut self, url: &str) -> Self {
        if let Some(u) = self.args.iter_mut().find(|a| a.starts_with("https://")) {
            *u = url.to_owned();
        }
        self
    }

    pub fn run(&self) -> CurlOutput {
        self.run_with_stdin(&[])
    }

    /// Runs with `stdin` piped in (for `--data-binary @-`).
    pub fn run_with_stdin(&self, stdin: &[u8]) -> CurlOutput {
        let mut child = Command::new("curl")
            .args(&self.args)
            .args([
                "-w",
                &format!(
                    "{STATUS_MARK}%{{http_code}} %{{http_version}} %{{time_starttransfer}} %{{time_total}}"
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl");
        let input = stdin.to_vec();
        let mut pipe = child.stdin.take().expect("stdin");
        let feeder = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().expect("curl output");
        let _ = feeder.join();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout
            .rsplit_once(STATUS_MARK)
            .unwrap_or((&stdout, "000 0"));
        let mut tail = tail.split_whitespace();
        CurlOutput {
            exit: out.status.code().unwrap_or(-1),
            status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
            http_version: tail.next().unwrap_or("0").to_owned(),
            time_starttransfer: tail.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
            time_total: tail.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl CurlOutput {
    /// The demo upstream's echo.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {self:?}"))
    }
}

/// Header values the upstream received for `name` (lowercase), in order.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .filter_map(|h| h.as_str())
        .filter_map(|h| h.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// `openssl s_client` against the gateway, sending one HTTP request. Returns (exit code,
/// stdout + stderr).
pub fn s_client(gw: &Gateway, root: &Path, cred: Option<&Cred>, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.port()))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(root)
        .args(["-verify_return_error", "-ign_eof"])
        .args(extra);
    if let Some(c) = cred {
        cmd.arg("-cert").arg(&c.cert).arg("-key").arg(&c.key);
        // The file holds leaf + issuing CA; send both.
        cmd.arg("-cert_chain").arg(&c.cert);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    }
    let out = wait_with_timeout(child, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("collect output")
}

/// rustls client config presenting `cred` and trusting `root`, for Rust clients in tests
/// (WebSocket). ALPN http/1.1: a WebSocket upgrade is an HTTP/1.1 mechanism.
pub fn rustls_client(root: &Path, cred: Option<&Cred>) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).expect("root pem") {
        roots.add(cert.expect("root cert")).expect("add root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match cred {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
                .expect("cert pem")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(&c.key).expect("key pem");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}
