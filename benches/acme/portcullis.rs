//! The real `portcullis serve` binary running only its CA (`[ca]`, no gateway) in a directory
//! of its own: config, data dir (`ca/pki/bundle.pem`, `ca/ca.db`) and one log file per start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Generous: a debug binary on a 2-core CI runner shared with other test processes.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The port the CA's http-01 validator connects to (the client's challenge server).
    pub http01_port: u16,
    /// Names mapped to 127.0.0.1 in `ca.acme.http01.hosts`; `*.test` is allowed.
    pub names: Vec<String>,
    /// `log.level` (an env-filter directive); the tests keep `info`, the bench `warn`.
    pub log_level: String,
}

impl CaOptions {
    pub fn new(http01_port: u16, names: &[&str]) -> Self {
        Self {
            http01_port,
            names: names.iter().map(|n| n.to_string()).collect(),
            log_level: "info".into(),
        }
    }
}

/// The running binary; killed (SIGKILL) and reaped on drop.
pub struct PortcullisCa {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// Log of the current (last) start.
    pub log: PathBuf,
    pub starts: u32,
}

impl Drop for PortcullisCa {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl PortcullisCa {
    /// Writes the config into `dir` and starts the CA on a free port (retrying with another
    /// port if one was taken between choosing and binding it).
    pub fn start(bin: &Path, dir: &Path, opts: &CaOptions) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            let port = super::free_port();
            let mut ca = Self {
                bin: bin.to_path_buf(),
                dir: dir.to_path_buf(),
                config: dir.join("portcullis.toml"),
                port,
                child: None,
                log: dir.join("portcullis-1.log"),
                starts: 0,
            };
            std::fs::write(&ca.config, config_text(port, opts))?;
            match ca.restart() {
                Ok(()) => return Ok(ca),
                Err(e) if ca.log_text().contains("cannot bind") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap())
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/acme/directory", self.port)
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA bundle ACME clients must trust (it also anchors the CA's own HTTPS certificate).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca/pki/bundle.pem")
    }

    pub fn intermediate(&self) -> PathBuf {
        self.dir.join("ca/pki/intermediate.pem")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("ca/ca.db")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush or finish anything; then reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the binary (again) on the same config and data dir and waits until the CA
    /// listens; every start logs to its own file.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.starts += 1;
        self.log = self.dir.join(format!("portcullis-{}.log", self.starts));
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "portcullis exited with {status} while starting; log:\n{}",
                    self.log_text()
                );
            }
            if self.log_text().contains("\"CA listening\"")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the CA did not start listening; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log lines (JSON) of every start so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        (1..=self.starts)
            .flat_map(|n| {
                std::fs::read_to_string(self.dir.join(format!("portcullis-{n}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| v["fields"]["message"] == message)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn config_text(port: u16, opts: &CaOptions) -> String {
    let hosts: Vec<String> = opts
        .names
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1\""))
        .collect();
    format!(
        r#"# Written by benches/acme/portcullis.rs: the CA alone, on loopback.
[log]
format = "json"
level = "{level}"

[admin]
listen = "127.0.0.1:0"

[ca]
listen = "127.0.0.1:{port}"
data_dir = "ca"

[ca.acme.http01]
allowed_names = ["*.test"]
port = {http01}
hosts = {{ {hosts} }}
timeout = "10s"
"#,
        level = opts.log_level,
        http01 = opts.http01_port,
        hosts = hosts.join(", "),
    )
}
