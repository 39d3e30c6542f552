//! Pebble, Let's Encrypt's ACME test server (Debian package `pebble`), with real validation:
//!
//! - `pebble-challtestsrv` is only its DNS server (every A query → 127.0.0.1, no AAAA); its
//!   own challenge servers are off;
//! - `httpPort` is the client's challenge responder; `PEBBLE_VA_NOSLEEP=1` (no random
//!   0–15 s validation delay); `PEBBLE_WFE_NONCEREJECT=0` (no deliberately rejected nonces);
//!   `PEBBLE_AUTHZREUSE=0` (every order validates afresh, as Portcullis does);
//!   `PEBBLE_VA_ALWAYS_VALID` is never set;
//! - its HTTPS certificate comes from a dev PKI (`portcullis::devpki`) whose root the client
//!   trusts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Pebble {
    pebble: Child,
    dns: Child,
    pub directory: String,
    /// The root the client must trust for Pebble's HTTPS.
    pub tls_root: PathBuf,
    pub log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn find() -> Option<(PathBuf, PathBuf)> {
    let which = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    };
    Some((which("pebble")?, which("pebble-challtestsrv")?))
}

impl Pebble {
    pub fn pid(&self) -> u32 {
        self.pebble.id()
    }

    /// Starts Pebble in `dir`, validating http-01 against port `http_port` of 127.0.0.1.
    pub fn start(dir: &Path, http_port: u16) -> anyhow::Result<Self> {
        let (pebble_bin, dns_bin) = find().context("pebble / pebble-challtestsrv not on PATH")?;
        std::fs::create_dir_all(dir)?;
        let pki = portcullis::devpki::DevPki::generate("Pebble bench")?;
        let files = pki.write_to(&dir.join("tls"))?;
        let cert = dir.join("tls/pebble.pem");
        let key = dir.join("tls/pebble.key");
        pki.issuing.issue_server(&[])?.write(&cert, &key)?;

        let [listen, management, tls_port, dns_port, dns_management] =
            [(); 5].map(|_| super::free_port());
        let config = dir.join("pebble-config.json");
        std::fs::write(
            &config,
            serde_json::to_string_pretty(&serde_json::json!({
                "pebble": {
                    "listenAddress": format!("127.0.0.1:{listen}"),
                    "managementListenAddress": format!("127.0.0.1:{management}"),
                    "certificate": cert,
                    "privateKey": key,
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false
                }
            }))?,
        )?;
        let dns_log = std::fs::File::create(dir.join("challtestsrv.log"))?;
        let dns = Command::new(dns_bin)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone()?)
            .stderr(dns_log)
            .spawn()
            .context("starting pebble-challtestsrv")?;
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log)?;
        let pebble = Command::new(pebble_bin)
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting pebble")?;
        let mut me = Self {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            tls_root: files.root_cert,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(listen) && up(dns_management) {
                return Ok(me);
            }
            for c in [&mut me.pebble, &mut me.dns] {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "pebble exited with {status}; logs in {}:\n{}",
                        dir.display(),
                        std::fs::read_to_string(&me.log).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("pebble did not start; logs in {}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
