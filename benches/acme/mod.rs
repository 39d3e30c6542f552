//! ACME harness shared by `benches/acme_vs_pebble.rs` (orders/s, Portcullis vs Pebble) and the
//! end-to-end tests `tests/acme_clients.rs` and `tests/ca_crash.rs`:
//!
//! - `portcullis`: the real `portcullis serve` binary with a `[ca]` section in a temp dir
//!   (start, wait until the CA listens, `kill -9`, restart on the same data dir);
//! - `pebble`: Let's Encrypt's Pebble (Debian package) with `pebble-challtestsrv` as its DNS
//!   server, so that every name resolves to 127.0.0.1, and real http-01 validation;
//! - `responder`: the "workload" side of http-01, a loopback HTTP server answering key
//!   authorizations from a token map or from a directory (dehydrated's WELLKNOWN);
//! - `flow`: one order end to end with the instant-acme client (new order → http-01 →
//!   finalize → download), polling at a fixed interval so that both servers are timed alike.

#![allow(dead_code)] // Three crates include this module and each uses a different subset.

pub mod flow;
pub mod load;
pub mod pebble;
pub mod portcullis;
pub mod responder;

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// A port that was free a moment ago. Listeners whose address goes into a config before they
/// bind (the CA's `listen` makes its URLs) cannot use port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether `program` can be run. Missing under `CI=true` is a failure (the tests needing it
/// must not silently pass there); elsewhere a loud skip.
pub fn require_program(program: &str, version_arg: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
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

/// `openssl verify -CAfile bundle -untrusted chain leaf`: Ok(()) or openssl's words.
pub fn openssl_verify(
    bundle: &std::path::Path,
    chain: &std::path::Path,
    leaf: &std::path::Path,
    purpose: Option<&str>,
) -> Result<(), String> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify");
    if let Some(p) = purpose {
        cmd.args(["-purpose", p]);
    }
    let out = cmd
        .arg("-CAfile")
        .arg(bundle)
        .arg("-untrusted")
        .arg(chain)
        .arg(leaf)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim_end().ends_with(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}
