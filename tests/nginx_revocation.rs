//! nginx as a third-party enforcement point (issue 5): mutual TLS with the CA's root as the
//! client trust anchor, and revocation checked through what the CA publishes for relying
//! parties that are not ours —
//!
//! - `ssl_crl`: the CRL fetched over plain HTTP, converted to PEM, nginx reloaded (SIGHUP);
//! - `ssl_ocsp leaf` + `ssl_ocsp_responder http://127.0.0.1:PORT` (nginx ≥ 1.19): nginx asks
//!   our responder on every handshake (no `ssl_ocsp_cache`).
//!
//! A device certificate is accepted while the device is active and refused once it is
//! quarantined (certificateHold); with OCSP it is accepted again after reactivation.
//!
//! nginx is run unprivileged-style like benches/harness/nginx.rs: its own prefix, temp paths
//! and logs in a temporary directory, `daemon off`, `user root` only when running as root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_ca::acme::AcmeConfig;
use portcullis_ca::clock::{unix_seconds, SystemClock};
use portcullis_ca::pki::{CertTemplate, IssueRequest};
use portcullis_ca::service::{Ca, CaSettings};
use portcullis_ca::store::{AcmeStore, NewCert, NewDevice};
use portcullis_config::DeviceStatus;
use rcgen::PublicKeyData;

const DEVICE: &str = "SN-NGINX-1";

/// `NGINX_BIN`, `nginx` on PATH, or Debian's /usr/sbin/nginx; `None` (loud skip, or a
/// failure when CI=true) when there is none — likewise for openssl and curl.
fn tools() -> Option<PathBuf> {
    let nginx = std::env::var_os("NGINX_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nginx"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")))
        .filter(|p| p.is_file());
    let runs = |p: &str, arg: &str| {
        Command::new(p)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = [
        ("nginx", nginx.is_some()),
        ("openssl", runs("openssl", "version")),
        ("curl", runs("curl", "--version")),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        return nginx;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("required on CI but missing: {missing:?}");
    }
    eprintln!(
        "\n!!! SKIPPED: {missing:?} not installed; the nginx revocation test did not run !!!\n"
    );
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Lab {
    dir: tempfile::TempDir,
    ca: Ca,
    /// `http://127.0.0.1:PORT` of the CRL/OCSP listener.
    url: String,
    bundle: PathBuf,
    server_chain: PathBuf,
    server_key: PathBuf,
    client_chain: PathBuf,
    client_key: PathBuf,
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut settings = CaSettings::new(
        dir.path().join("ca"),
        AcmeConfig::new("https://127.0.0.1:1"),
    );
    settings.http_base_url = Some(url.clone());
    let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(portcullis_ca::revocation::serve_http(
        listener,
        ca.revocation.plain_router(),
        std::future::pending(),
    ));
    ca.inventory
        .upsert(
            &NewDevice {
                id: DEVICE.into(),
                hw_module_id: None,
                platform: Some("linux".into()),
                owner: Some("alice@example.com".into()),
                tags: Default::default(),
                status: DeviceStatus::Active,
                source: "test".into(),
            },
            "test",
            "enrolled",
        )
        .unwrap();

    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let issue =
        |template: CertTemplate, dns: Vec<String>, uris: Vec<String>, device: Option<&str>| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let ips = if dns.is_empty() {
                vec![]
            } else {
                vec!["127.0.0.1".parse().unwrap()]
            };
            let issued = ca
                .pki
                .issue(
                    &IssueRequest {
                        spki_der: &key.subject_public_key_info(),
                        template: &template,
                        dns_names: &dns,
                        ip_addresses: &ips,
                        uris: &uris,
                        not_before: None,
                        not_after: None,
                    },
                    std::time::SystemTime::now(),
                )
                .unwrap();
            ca.store
                .record_certificate(&NewCert {
                    serial: &issued.serial.to_hex(),
                    fingerprint: &issued.fingerprint,
                    der: &issued.der,
                    chain_pem: &issued.chain_pem,
                    not_before: unix_seconds(issued.not_before),
                    not_after: unix_seconds(issued.not_after),
                    device_id: device,
                })
                .unwrap();
            (issued.chain_pem, key.serialize_pem())
        };
    let (server_chain, server_key) = issue(
        CertTemplate::workload(),
        vec!["localhost".into()],
        vec![],
        None,
    );
    let (client_chain, client_key) = issue(
        CertTemplate::device(),
        vec![],
        vec![format!("spiffe://portcullis.test/device/{DEVICE}")],
        Some(DEVICE),
    );
    Lab {
        bundle: write("bundle.pem", ca.pki.root_pem()),
        server_chain: write("server.pem", &server_chain),
        server_key: write("server.key", &server_key),
        client_chain: write("client.pem", &client_chain),
        client_key: write("client.key", &client_key),
        dir,
        ca,
        url,
    }
}

impl Lab {
    /// The CA's CRL as an operator would install it for nginx: fetched over plain HTTP and
    /// converted to PEM; followed by an (empty) CRL of the root. nginx sets
    /// X509_V_FLAG_CRL_CHECK_ALL with `ssl_crl`, so every CA of the chain needs one; the
    /// root's key is an offline asset the CA service does not hold, so that ARL is signed
    /// with `portcullis ca arl`, as an operator would with the root key.
    fn install_crl(&self, path: &Path) {
        let der = self.dir.path().join("fetched.crl");
        let c = Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&der)
            .arg(format!("{}/crl/intermediate.crl", self.url))
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        let o = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-outform", "PEM", "-in"])
            .arg(&der)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut pem = String::from_utf8(o.stdout).unwrap();
        pem.push_str(&self.root_crl());
        std::fs::write(path, pem).unwrap();
    }

    /// The root's ARL, signed by `portcullis ca arl` as an operator would.
    fn root_crl(&self) -> String {
        let config = self.dir.path().join("arl.toml");
        std::fs::write(
            &config,
            format!(
                "[ca]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"{}\"\n",
                self.dir.path().join("ca").display()
            ),
        )
        .unwrap();
        let out = self.dir.path().join("root-arl.pem");
        let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["ca", "arl", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    }

    /// `(http status, body)` of a GET with the device certificate; status 0 when the TLS
    /// connection itself failed.
    fn device_get(&self, port: u16) -> (u16, String) {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
            .arg(&self.bundle)
            .arg("--cert")
            .arg(&self.client_chain)
            .arg("--key")
            .arg(&self.client_key)
            .arg(format!("https://localhost:{port}/"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            body.trim_end().to_string(),
        )
    }
}

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, port: u16, lab: &Lab, revocation: &str) -> Self {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process on;
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {server};
        ssl_certificate_key {key};
        ssl_verify_client on;
        ssl_client_certificate {bundle};
        ssl_verify_depth 3;
        {revocation}
        location / {{ return 200 "ok $ssl_client_verify\n"; }}
    }}
}}
"#,
            server = lab.server_chain.display(),
            key = lab.server_key.display(),
            bundle = lab.bundle.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut n = Self {
            child,
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited ({status}): {}", n.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not listen: {}",
                n.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    /// SIGHUP: re-read the configuration and the files it names (the CRL).
    fn reload(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
    }

    fn logs(&self) -> String {
        ["stderr.log", "logs/error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM is nginx's fast shutdown.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `get` until it returns `want` three times in a row (bounded) and returns the last
/// body: after a reload, an old worker may still accept a connection or two before it stops.
fn eventually(
    what: &str,
    want: u16,
    nginx: &Nginx,
    mut get: impl FnMut() -> (u16, String),
) -> String {
    let start = Instant::now();
    let mut in_a_row = 0;
    loop {
        let (code, body) = get();
        in_a_row = if code == want { in_a_row + 1 } else { 0 };
        if in_a_row == 3 {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: got {code} {body:?}, wanted {want}\n{}",
            nginx.logs()
        );
        if code != want {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_our_crl_refuses_a_quarantined_device() {
    let Some(bin) = tools() else { return };
    let lab = lab().await;
    let crl = lab.dir.path().join("crl.pem");
    lab.install_crl(&crl);
    let port = free_port();
    let nginx = Nginx::start(
        &bin,
        &lab.dir.path().join("nginx-crl"),
        port,
        &lab,
        &format!("ssl_crl {};", crl.display()),
    );
    let (code, body) = lab.device_get(port);
    assert_eq!(
        (code, body.as_str()),
        (200, "ok SUCCESS"),
        "{}",
        nginx.logs()
    );

    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Quarantined, "test", "EDR alert")
        .unwrap();
    // The CRL is re-signed on the inventory event; wait for it, install it, reload nginx.
    let start = Instant::now();
    while lab.ca.revocation.crl().revoked.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "CRL not re-signed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lab.install_crl(&crl);
    nginx.reload();
    let body = eventually("quarantined device via CRL", 400, &nginx, || {
        lab.device_get(port)
    });
    assert!(body.contains("The SSL certificate error"), "{body}");
    assert!(
        nginx.logs().contains("certificate revoked"),
        "{}",
        nginx.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_asking_our_ocsp_responder_refuses_a_quarantined_device_and_readmits_it() {
    let Some(bin) = tools() else { return };
    let lab = lab().await;
    let port = free_port();
    // `leaf`: only the client certificate is checked. `on` would also ask about the
    // intermediate, whose status only a responder for the root could give.
    let nginx = Nginx::start(
        &bin,
        &lab.dir.path().join("nginx-ocsp"),
        port,
        &lab,
        &format!("ssl_ocsp leaf;\n        ssl_ocsp_responder {};", lab.url),
    );
    let (code, body) = lab.device_get(port);
    assert_eq!(
        (code, body.as_str()),
        (200, "ok SUCCESS"),
        "{}",
        nginx.logs()
    );

    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Quarantined, "test", "EDR alert")
        .unwrap();
    // No reload, no cache: the very next handshake asks the responder.
    let (code, body) = lab.device_get(port);
    assert_eq!(code, 400, "{body}\n{}", nginx.logs());
    assert!(body.contains("The SSL certificate error"), "{body}");
    assert!(
        nginx.logs().contains("certificate revoked"),
        "{}",
        nginx.logs()
    );

    lab.ca
        .inventory
        .set_status(DEVICE, DeviceStatus::Active, "test", "cleared")
        .unwrap();
    let (code, body) = lab.device_get(port);
    assert_eq!(
        (code, body.as_str()),
        (200, "ok SUCCESS"),
        "{}",
        nginx.logs()
    );
}
