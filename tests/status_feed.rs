//! The status feed end to end (issue 5): one CA process and three gateway processes that
//! follow it over mTLS with node certificates — two best-effort, one strict.
//!
//! 1. A device holds an open keep-alive connection and a WebSocket on every gateway; it is
//!    quarantined through the admin API. Every live connection is closed and every new
//!    request refused; the delay from the API's response to the last of those is measured.
//! 2. The CA is killed: the best-effort gateways keep serving active devices, the strict one
//!    refuses everyone after `max_staleness` and says so in `/readyz` and `/metrics`.
//! 3. The CA restarts and a device changes before the gateways are back: all converge.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    free_port, http_get, metric_value, require_program, rustls_client, Cred, Gateway, BIN,
    START_TIMEOUT, TRUST_DOMAIN,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use portcullis::demo_upstream::DemoUpstream;
use portcullis::devpki::{self, DeviceSpec};
use portcullis_gateway::CancellationToken;
use tokio_tungstenite::tungstenite::Message;

/// The CA, as its own `portcullis serve` process; killed on drop.
struct CaProcess {
    child: Child,
    log: PathBuf,
}

impl CaProcess {
    fn start(config: &Path, log: &Path, port: u16) -> Self {
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("CA log"))
            .spawn()
            .expect("start the CA");
        let mut ca = Self {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || !ca.log_text().contains("CA listening")
        {
            if let Ok(Some(status)) = ca.child.try_wait() {
                panic!("the CA exited with {status}; log:\n{}", ca.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the CA did not start; log:\n{}",
                ca.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ca
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn portcullis(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run portcullis");
    assert!(
        out.status.success(),
        "portcullis {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Lab {
    dir: tempfile::TempDir,
    ca_config: PathBuf,
    ca_port: u16,
    bundle: PathBuf,
    creds: std::collections::BTreeMap<&'static str, Cred>,
    rt: tokio::runtime::Runtime,
    upstream: SocketAddr,
    _upstream_stop: CancellationToken,
}

impl Lab {
    fn new() -> (Self, CaProcess) {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-feed-")
            .tempdir()
            .unwrap();
        let ca_port = free_port();
        let tokens = dir.path().join("admin.tokens");
        devpki::write_private(&tokens, &format!("admin {}\n", "t".repeat(40))).unwrap();
        let ca_config = dir.path().join("ca.toml");
        std::fs::write(
            &ca_config,
            format!(
                r#"[trust]
trust_domain = "{TRUST_DOMAIN}"

[log]
format = "json"
level = "info"

[admin]
listen = "127.0.0.1:0"

[ca]
listen = "127.0.0.1:{ca_port}"
base_url = "https://127.0.0.1:{ca_port}"
data_dir = "{data}"

[ca.admin_api]
tokens_file = "{tokens}"
"#,
                data = dir.path().join("ca").display(),
                tokens = tokens.display(),
            ),
        )
        .unwrap();
        let ca = CaProcess::start(&ca_config, &dir.path().join("ca.log"), ca_port);
        let pki = dir.path().join("ca/pki");
        let issuing =
            devpki::Ca::load(&pki.join("intermediate.pem"), &pki.join("intermediate.key"))
                .expect("the CA's intermediate");
        let mut creds = std::collections::BTreeMap::new();
        for (name, id) in [("alice", "dev-alice"), ("bob", "dev-bob")] {
            let cred = Cred {
                cert: dir.path().join(format!("{name}.pem")),
                key: dir.path().join(format!("{name}.key")),
            };
            issuing
                .issue_device(&DeviceSpec::new(id, TRUST_DOMAIN))
                .unwrap()
                .write(&cred.cert, &cred.key)
                .unwrap();
            creds.insert(name, cred);
        }
        let server = Cred {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
        };
        issuing
            .issue_server(&[])
            .unwrap()
            .write(&server.cert, &server.key)
            .unwrap();
        creds.insert("server", server);

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let upstream = rt
            .block_on(DemoUpstream::spawn(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                stop.clone(),
            ))
            .unwrap();
        let lab = Self {
            bundle: pki.join("bundle.pem"),
            dir,
            ca_config,
            ca_port,
            creds,
            rt,
            upstream,
            _upstream_stop: stop,
        };
        for id in ["dev-alice", "dev-bob"] {
            lab.inventory(&["add", id, "--tag", "eng"]);
        }
        (lab, ca)
    }

    fn inventory(&self, args: &[&str]) -> String {
        let config = self.ca_config.to_str().unwrap();
        let mut all = vec!["inventory", "--config", config];
        all.extend_from_slice(args);
        portcullis(&all)
    }

    fn gateway(&self, name: &str, mode: &str) -> Gateway {
        let out = self.dir.path().join("nodes");
        portcullis(&[
            "ca",
            "node-cert",
            name,
            "--config",
            self.ca_config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let config = self.dir.path().join(format!("{name}.toml"));
        let server = &self.creds["server"];
        std::fs::write(
            &config,
            format!(
                r#"[trust]
trust_domain = "{TRUST_DOMAIN}"
roots = ["{bundle}"]

[status_feed]
url = "https://127.0.0.1:{port}/feed/v1/status"
ca_roots = "{bundle}"
cert = "{nodes}/{name}.pem"
key = "{nodes}/{name}.key"
max_staleness = "2s"
mode = "{mode}"

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
worker_threads = 2

[[gateway.routes]]
name = "app"
from = "localhost"
to = "http://{upstream}"
allow = [{{ tag = "eng" }}]
"#,
                bundle = self.bundle.display(),
                port = self.ca_port,
                nodes = out.display(),
                audit = self.audit(name).display(),
                cert = server.cert.display(),
                key = server.key.display(),
                upstream = self.upstream,
            ),
        )
        .unwrap();
        Gateway::start(&config, &self.dir.path().join(format!("{name}.log")))
    }

    fn audit(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.audit"))
    }

    fn client(&self, who: &str) -> Arc<rustls::ClientConfig> {
        rustls_client(&self.bundle, Some(&self.creds[who]))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A keep-alive HTTP/1.1 connection through the gateway; the connection task's end is
/// observable (`closed`).
async fn keep_alive(
    config: Arc<rustls::ClientConfig>,
    gw: SocketAddr,
) -> (Sender, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn get(sender: &mut Sender, path: &str) -> Option<u16> {
    sender.ready().await.ok()?;
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// One request on a fresh connection: the status, or `None` if the connection failed.
async fn fresh_get(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Option<u16> {
    let (mut s, _task) = keep_alive(config, gw).await;
    get(&mut s, "/fresh").await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn websocket(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Ws {
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", gw.port()), tls)
            .await
            .expect("WebSocket through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo")
        .expect("open")
        .expect("message");
    assert_eq!(echo, Message::text("ping"));
    ws
}

async fn ws_closed(ws: &mut Ws) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => continue,
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn ready(gw: &Gateway) -> (u16, String) {
    http_get(gw.admin, "/readyz").expect("GET /readyz")
}

#[test]
fn three_gateways_follow_one_ca_through_quarantine_outage_and_restart() {
    if !require_program("curl") {
        return;
    }
    let (lab, mut ca) = Lab::new();
    let gateways = [
        lab.gateway("gw-1", "best_effort"),
        lab.gateway("gw-2", "best_effort"),
        lab.gateway("gw-3", "strict"),
    ];
    let alice = lab.client("alice");
    let bob = lab.client("bob");

    // 1. Live sessions of dev-alice on every gateway, then a quarantine through the admin API.
    let delay = lab.rt.block_on(async {
        let mut sessions = Vec::new();
        for gw in &gateways {
            let (mut sender, conn) = keep_alive(alice.clone(), gw.addr).await;
            assert_eq!(
                get(&mut sender, "/before").await,
                Some(200),
                "{}",
                gw.log_text()
            );
            let ws = websocket(alice.clone(), gw.addr).await;
            sessions.push((sender, conn, ws));
        }
        let config = lab.ca_config.clone();
        let asked = tokio::task::spawn_blocking(move || {
            portcullis(&[
                "inventory",
                "--config",
                config.to_str().unwrap(),
                "set-status",
                "dev-alice",
                "quarantined",
                "--reason",
                "lost laptop",
            ]);
            Instant::now()
        })
        .await
        .unwrap();
        for (i, (mut sender, conn, mut ws)) in sessions.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(5), ws_closed(&mut ws))
                .await
                .unwrap_or_else(|_| panic!("gw-{}: the WebSocket stayed open", i + 1));
            tokio::time::timeout(Duration::from_secs(5), conn)
                .await
                .unwrap_or_else(|_| panic!("gw-{}: the keep-alive connection stayed open", i + 1))
                .unwrap();
            assert_eq!(
                get(&mut sender, "/after").await,
                None,
                "a cut connection serves nothing"
            );
        }
        for gw in &gateways {
            // Refused on a new connection (403 with the reason), bob untouched.
            loop {
                match fresh_get(alice.clone(), gw.addr).await {
                    Some(403) => break,
                    _ if asked.elapsed() > Duration::from_secs(5) => {
                        panic!(
                            "{:?}: dev-alice still admitted 5 s after the quarantine",
                            gw.addr
                        )
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            assert_eq!(fresh_get(bob.clone(), gw.addr).await, Some(200));
        }
        asked.elapsed()
    });
    eprintln!("quarantine → every session cut and every gateway refusing: {delay:?} after the admin API answered");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    for name in ["gw-1", "gw-2", "gw-3"] {
        let audit = std::fs::read_to_string(lab.audit(name)).unwrap_or_default();
        assert!(
            audit.lines().any(|l| l.contains("connection_cut")
                && l.contains("dev-alice")
                && l.contains("quarantined by admin: lost laptop")),
            "{name}: no audited cut naming the change:\n{audit}"
        );
    }

    // 2. The CA goes away. Best-effort gateways keep serving; the strict one refuses.
    ca.kill();
    let strict = &gateways[2];
    wait_for(
        "the strict gateway to go unready",
        Duration::from_secs(10),
        || ready(strict).0 == 503,
    );
    let (_, why) = ready(strict);
    assert!(why.contains("strict"), "{why}");
    lab.rt.block_on(async {
        for gw in &gateways[..2] {
            assert_eq!(
                fresh_get(bob.clone(), gw.addr).await,
                Some(200),
                "best effort keeps serving"
            );
            assert_eq!(
                fresh_get(alice.clone(), gw.addr).await,
                Some(403),
                "and keeps what it heard"
            );
        }
    });
    // The strict point refuses within a staleness check (250 ms) of going stale.
    wait_for(
        "the strict gateway to refuse",
        Duration::from_secs(2),
        || lab.rt.block_on(fresh_get(bob.clone(), strict.addr)) == Some(403),
    );
    for gw in &gateways[..2] {
        assert_eq!(ready(gw).0, 200, "a stale best-effort point stays ready");
        assert_eq!(
            metric_value(
                &gw.metrics(),
                r#"portcullis_status_feed_stale{mode="best_effort"}"#
            ),
            1.0
        );
    }
    assert_eq!(
        metric_value(
            &strict.metrics(),
            r#"portcullis_status_feed_stale{mode="strict"}"#
        ),
        1.0
    );

    // 3. The CA comes back (new process, new stream); a change made right away reaches
    // everyone together with the state the gateways missed.
    let ca = CaProcess::start(&lab.ca_config, &lab.dir.path().join("ca2.log"), lab.ca_port);
    lab.inventory(&["set-status", "dev-alice", "active", "--reason", "found"]);
    for gw in &gateways {
        wait_for(
            "convergence after the CA restart",
            Duration::from_secs(15),
            || lab.rt.block_on(fresh_get(alice.clone(), gw.addr)) == Some(200),
        );
        assert_eq!(ready(gw).0, 200);
        assert_eq!(
            metric_value(
                &gw.metrics(),
                r#"portcullis_status_feed_stale{mode="best_effort"}"#
            ) + metric_value(
                &gw.metrics(),
                r#"portcullis_status_feed_stale{mode="strict"}"#
            ),
            0.0
        );
    }
    lab.rt.block_on(async {
        assert_eq!(
            fresh_get(bob.clone(), strict.addr).await,
            Some(200),
            "strict recovers"
        );
    });
    drop(ca);
}

#[test]
fn the_feed_refuses_device_certificates_and_strangers() {
    if !require_program("curl") {
        return;
    }
    let (lab, _ca) = Lab::new();
    let url = format!("https://127.0.0.1:{}/feed/v1/status", lab.ca_port);
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "--cacert",
            ])
            .arg(&lab.bundle)
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "403", "no certificate");
    let alice = &lab.creds["alice"];
    assert_eq!(
        curl(&[
            "--cert",
            alice.cert.to_str().unwrap(),
            "--key",
            alice.key.to_str().unwrap()
        ]),
        "403",
        "a device certificate of the same CA is not a node"
    );
    // A node certificate gets the stream: the first event is the hello.
    let out = lab.dir.path().join("nodes");
    portcullis(&[
        "ca",
        "node-cert",
        "probe",
        "--config",
        lab.ca_config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(out.join("probe.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let stream = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "2", "--cacert"])
        .arg(&lab.bundle)
        .arg("--cert")
        .arg(out.join("probe.pem"))
        .arg("--key")
        .arg(out.join("probe.key"))
        .arg(&url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stream.stdout);
    assert!(text.starts_with("event: hello\ndata: {"), "{text}");
    assert!(text.contains("event: snapshot_end"), "{text}");
    assert!(text.contains("\"dev-alice\""), "{text}");
    assert!(text.contains("event: heartbeat"), "{text}");
}
