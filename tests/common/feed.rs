//! A CA process and gateway processes that follow it over the status feed, and the clients
//! that hold sessions through them: shared by tests/status_feed.rs and the propagation
//! benchmark (benches/feed/propagation.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use portcullis::devpki::{self, DeviceSpec};
use portcullis_gateway::CancellationToken;
use tokio_tungstenite::tungstenite::Message;

use super::{free_port, rustls_client, Cred, Gateway, BIN, START_TIMEOUT, TRUST_DOMAIN};

/// The admin API bearer token the lab's CA accepts.
pub fn admin_token() -> String {
    "t".repeat(40)
}

pub struct CaProcess {
    pub child: Child,
    log: PathBuf,
}

impl CaProcess {
    pub fn start(config: &Path, log: &Path, port: u16) -> Self {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn portcullis(args: &[&str]) -> String {
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

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub ca_config: PathBuf,
    pub ca_port: u16,
    pub bundle: PathBuf,
    pub creds: std::collections::BTreeMap<&'static str, Cred>,
    pub rt: tokio::runtime::Runtime,
    pub upstream: SocketAddr,
    _upstream_stop: CancellationToken,
}

impl Lab {
    /// A CA with `devices` (name → device id) in its inventory, tagged `eng`, each with a
    /// certificate from the CA's intermediate; `creds["server"]` is the gateways' certificate.
    pub fn new(devices: &[(&'static str, &str)]) -> (Self, CaProcess) {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-feed-")
            .tempdir()
            .unwrap();
        let ca_port = free_port();
        let tokens = dir.path().join("admin.tokens");
        devpki::write_private(&tokens, &format!("admin {}\n", admin_token())).unwrap();
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
        for &(name, id) in devices {
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

        let (rt, upstream, stop) = super::demo_upstream(2);
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
        for (_, id) in devices {
            lab.inventory(&["add", id, "--tag", "eng"]);
        }
        (lab, ca)
    }

    pub fn inventory(&self, args: &[&str]) -> String {
        let config = self.ca_config.to_str().unwrap();
        let mut all = vec!["inventory", "--config", config];
        all.extend_from_slice(args);
        portcullis(&all)
    }

    /// `portcullis ca node-cert NAME` into `<lab>/nodes/`: the certificate and key files.
    pub fn node_cert(&self, name: &str) -> (PathBuf, PathBuf) {
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
        (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        )
    }

    pub fn gateway(&self, name: &str, mode: &str) -> Gateway {
        self.start_gateway(name, &self.gateway_config(name, mode, ""))
    }

    /// Starts (or restarts) gateway `name` from `config`.
    pub fn start_gateway(&self, name: &str, config: &Path) -> Gateway {
        Gateway::start(config, &self.dir.path().join(format!("{name}.log")))
    }

    /// Writes the config of gateway `name` (and its node certificate); `status_feed_extra`
    /// is added to its `[status_feed]` section.
    pub fn gateway_config(&self, name: &str, mode: &str, status_feed_extra: &str) -> PathBuf {
        let out = self.dir.path().join("nodes");
        self.node_cert(name);
        let config = self.dir.path().join(format!("{name}.toml"));
        let server = &self.creds["server"];
        std::fs::write(
            &config,
            format!(
                r#"[trust]
trust_domain = "{TRUST_DOMAIN}"
roots = ["{bundle}"]

[status_feed]
url = "https://127.0.0.1:{port}/feed/v2/status"
ca_roots = "{bundle}"
cert = "{nodes}/{name}.pem"
key = "{nodes}/{name}.key"
max_staleness = "2s"
mode = "{mode}"
{status_feed_extra}

[log]
format = "json"
level = "info"

[audit]
sink = "{audit}"

[admin]
listen = "127.0.0.1:0"

{gateway}"#,
                bundle = self.bundle.display(),
                port = self.ca_port,
                nodes = out.display(),
                audit = self.audit(name).display(),
                gateway = super::eng_gateway_toml(&server.cert, &server.key, self.upstream),
            ),
        )
        .unwrap();
        config
    }

    pub fn audit(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.audit"))
    }

    pub fn client(&self, who: &str) -> Arc<rustls::ClientConfig> {
        rustls_client(&self.bundle, Some(&self.creds[who]))
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A keep-alive HTTP/1.1 connection through the gateway; the connection task's end is
/// observable (`closed`).
pub async fn keep_alive(
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

pub async fn get(sender: &mut Sender, path: &str) -> Option<u16> {
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
pub async fn fresh_get(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Option<u16> {
    let (mut s, _task) = keep_alive(config, gw).await;
    get(&mut s, "/fresh").await
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub async fn websocket(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Ws {
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

pub async fn ws_closed(ws: &mut Ws) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => continue,
        }
    }
}
