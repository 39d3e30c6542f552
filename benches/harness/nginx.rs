//! nginx as the reference: same certificates, same upstream, same client, and a configuration
//! that does the comparable work — require and verify the client certificate, proxy over a
//! keep-alive upstream pool, and pass the verification result on in a header.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::sys;

/// `NGINX_BIN`, else `nginx` on PATH, else Debian's `/usr/sbin/nginx` (not on a non-root
/// user's PATH).
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

/// `nginx -V` first line, for the report.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub struct NginxSpec<'a> {
    pub bin: &'a Path,
    /// A directory of its own (prefix, conf, logs, temp paths).
    pub dir: &'a Path,
    pub listen: SocketAddr,
    pub workers: usize,
    pub upstream: SocketAddr,
    pub server_chain: &'a Path,
    pub server_key: &'a Path,
    pub client_ca: &'a Path,
    /// `None`: `access_log off`; `Some(file)`: the default combined format to that file, the
    /// comparison for Portcullis' audit-to-file variant.
    pub access_log: Option<&'a Path>,
    /// CPUs the master and its workers may run on (`None`: any).
    pub cpus: Option<&'a [usize]>,
}

pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(spec: &NginxSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(spec.dir.join("logs"))
            .with_context(|| format!("nginx: cannot create {}", spec.dir.display()))?;
        let conf_path = spec.dir.join("nginx.conf");
        std::fs::write(&conf_path, conf(spec))
            .with_context(|| format!("nginx: cannot write {}", conf_path.display()))?;
        let stderr = std::fs::File::create(spec.dir.join("stderr.log"))
            .context("nginx: cannot create stderr.log")?;
        let mut cmd = Command::new(spec.bin);
        if let Some(cpus) = spec.cpus {
            sys::pin_command(&mut cmd, cpus);
        }
        let child = cmd
            .arg("-p")
            .arg(spec.dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("nginx: cannot run {}", spec.bin.display()))?;
        Ok(Self {
            child,
            dir: spec.dir.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(text)` if the master has exited, with what it said.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("nginx exited ({status}): {}", self.logs())),
            _ => None,
        }
    }

    pub fn logs(&self) -> String {
        sys::log_tail(&self.dir, &["stderr.log", "logs/error.log"])
    }

    /// Lines in the error log at `warn` or worse, which a clean run should not produce.
    pub fn error_log_lines(&self) -> usize {
        sys::line_count(&self.dir.join("logs/error.log"))
    }

    /// SIGTERM to the master (fast shutdown: it stops its workers), then SIGKILL for any
    /// worker left, so that no stray nginx keeps a port or a core after a failed run.
    pub fn stop(&mut self) {
        let workers = sys::children(self.child.id());
        sys::terminate(&mut self.child, Duration::from_secs(5));
        for pid in workers {
            if sys::alive(pid) {
                sys::signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn conf(spec: &NginxSpec) -> String {
    let dir = spec.dir.display();
    let access_log = match spec.access_log {
        None => "access_log off;".to_owned(),
        Some(p) => format!("access_log {};", p.display()),
    };
    // Why each line:
    // - `user root` only when the master runs as root: the workers would otherwise drop to
    //   `nobody`, which cannot enter the root-private temp dir (proxy buffers, temp files).
    // - keepalive_requests raised on both sides: nginx closes a client or upstream keep-alive
    //   connection after 1000 requests by default, which would turn part of the keep-alive
    //   benchmark into a handshake benchmark. Portcullis has no such limit.
    // - the ssl_session_* defaults are left alone: the client never resumes anyway.
    format!(
        r#"# Generated by benches/harness/nginx.rs
daemon off;
master_process on;
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    {access_log}
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 75s;

    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000000;
    }}

    server {{
        listen {listen} ssl;
        server_name localhost;

        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {ca};
        ssl_verify_depth 3;

        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Client-Verify $ssl_client_verify;
        }}
    }}
}}
"#,
        user = if running_as_root() {
            "user root;\n"
        } else {
            ""
        },
        workers = spec.workers.max(1),
        upstream = spec.upstream,
        listen = spec.listen,
        chain = spec.server_chain.display(),
        key = spec.server_key.display(),
        ca = spec.client_ca.display(),
    )
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl super::ProxyProcess for Nginx {
    fn pid(&self) -> u32 {
        Nginx::pid(self)
    }
    fn exited(&mut self) -> Option<String> {
        Nginx::exited(self)
    }
    fn logs(&self) -> String {
        Nginx::logs(self)
    }
    fn log_lines(&self) -> usize {
        Nginx::error_log_lines(self)
    }
    fn stop(&mut self) {
        Nginx::stop(self)
    }
}
