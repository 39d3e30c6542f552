//! End-to-end: hot reload of the config and the inventory under load, with the real binary
//! and real curl. A reload must drop no request; a broken file must be refused (and say where
//! it is broken) while the previous one keeps serving. SIGHUP reloads. The connection limits
//! a reload sets apply: an idle keep-alive connection lives for `idle_timeout` (not
//! `header_read_timeout`), an incomplete request head for `header_read_timeout`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// `{headers}` is the route's identity header list: the reloads switch it, which is visible
/// in what the upstream receives.
fn routes(headers: &str) -> String {
    format!(
        r#"[[gateway.routes]]
name = "app"
from = "localhost"
to = "http://{{upstream}}"
identity_headers = [{headers}]
allow = [{{ tag = "eng" }}]
"#
    )
}

const PLAIN: &str = r#""plain""#;
const PLAIN_XFCC: &str = r#""plain", "xfcc""#;

/// One curl process (a new TLS connection) sending `n` keep-alive requests; returns the status
/// of each.
fn burst(gw_port: u16, fx: &Fixture, n: usize, tag: &str) -> Vec<u16> {
    let alice = fx.cred("alice");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--resolve"])
        .arg(format!("localhost:{gw_port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&fx.root)
        .arg("--cert")
        .arg(&alice.cert)
        .arg("--key")
        .arg(&alice.key)
        .args(["-w", "\n@@%{http_code}\n"]);
    for i in 0..n {
        cmd.arg(format!("https://localhost:{gw_port}/load/{tag}/{i}"));
    }
    let out = cmd.output().expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut statuses: Vec<u16> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@@"))
        .map(|s| s.trim().parse().unwrap_or(0))
        .collect();
    // A transfer that never got a response may print nothing: count it as failed.
    statuses.resize(n.max(statuses.len()), 0);
    statuses
}

#[test]
fn config_reload_under_load_drops_nothing_and_a_broken_config_is_refused() {
    if !require_program("curl") {
        return;
    }
    let fx = Fixture::new();
    fx.write_config(&fx.config_text("required", &routes(PLAIN)));
    let gw = fx.start();
    let port = gw.port();
    let ok_reloads = r#"portcullis_config_reloads_total{result="ok"}"#;
    let failed_reloads = r#"portcullis_config_reloads_total{result="error"}"#;
    let reloads_before = gw.metric(ok_reloads);

    // Load: two clients, each opening connection after connection with 20 requests apiece,
    // while the config is rewritten (switching the route's identity headers) every 600 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let fx = Arc::new(fx);
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, fx) = (stop.clone(), fx.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    statuses.extend(burst(port, &fx, 20, &format!("c{c}r{round}")));
                    round += 1;
                }
                statuses
            })
        })
        .collect();
    let rewrites = 6;
    for i in 0..rewrites {
        std::thread::sleep(Duration::from_millis(600));
        let headers = if i % 2 == 0 { PLAIN_XFCC } else { PLAIN };
        fx.write_config(&fx.config_text("required", &routes(headers)));
    }
    // The last rewrite set PLAIN; give the poller time to apply it under load too.
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    eprintln!(
        "{} requests during {rewrites} config rewrites, {} failed",
        statuses.len(),
        failed.len()
    );
    assert!(
        statuses.len() >= 40,
        "too little load to prove anything: {statuses:?}"
    );
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?}\nlog:\n{}",
        gw.log_text()
    );
    let applied = gw.metric(ok_reloads) - reloads_before;
    assert!(
        applied >= 3.0,
        "only {applied} of {rewrites} rewrites were reloaded; log:\n{}",
        gw.log_text()
    );
    assert_eq!(gw.metric(failed_reloads), 0.0, "log:\n{}", gw.log_text());

    // The reloaded config is the one in force: switch to PLAIN_XFCC and see XFCC appear.
    fx.write_config(&fx.config_text("required", &routes(PLAIN_XFCC)));
    let xfcc_seen = wait_for(Duration::from_secs(10), || {
        let out = Curl::new(&gw, &fx.root, "/after-reload")
            .cred(fx.cred("alice"))
            .run();
        out.status == 200 && echoed(&out.echo(), "x-forwarded-client-cert").len() == 1
    });
    assert!(
        xfcc_seen,
        "the new route config was never applied; log:\n{}",
        gw.log_text()
    );

    // A broken config: refused with file:line: key: message, counted, and the running config
    // (with XFCC) keeps serving.
    let good = fx.config_text("required", &routes(PLAIN_XFCC));
    let broken = good.replace(
        &format!("to = \"http://{}\"", fx.upstream),
        "to = \"htp://broken.example\"",
    );
    assert_ne!(good, broken);
    let broken_line = broken
        .lines()
        .position(|l| l.contains("htp://broken.example"))
        .expect("line")
        + 1;
    let failed_before = gw.metric(failed_reloads);
    let log_from = gw.log_text().len();
    fx.write_config(&broken);
    let expected = format!(
        "{}:{broken_line}: gateway.routes[0].to:",
        fx.config.display()
    );
    let line = gw.wait_log(log_from, "config reload refused");
    assert!(line.contains(&expected), "expected `{expected}` in: {line}");
    assert!(
        wait_for(Duration::from_secs(10), || gw.metric(failed_reloads)
            > failed_before),
        "a refused reload is counted"
    );
    let out = Curl::new(&gw, &fx.root, "/while-broken")
        .cred(fx.cred("alice"))
        .run();
    assert_eq!(out.status, 200, "the old config keeps serving: {out:?}");
    assert_eq!(echoed(&out.echo(), "x-forwarded-client-cert").len(), 1);

    // `portcullis config check` says the same, and exits 1.
    let check = Command::new(BIN)
        .args(["config", "check"])
        .arg(&fx.config)
        .output()
        .expect("config check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in: {stderr}"
    );
    assert!(stderr.contains("htp://broken.example"), "{stderr}");

    // A broken inventory is refused too: the last good snapshot stays (alice still active).
    let log_from = gw.log_text().len();
    write_atomically(
        &fx.inventory,
        "[[devices]]\nid = \"dev-alice\"\nstaus = \"active\"\n",
    );
    gw.wait_log(log_from, "inventory reload refused");
    let out = Curl::new(&gw, &fx.root, "/bad-inventory")
        .cred(fx.cred("alice"))
        .run();
    assert_eq!(
        out.status, 200,
        "the last good inventory keeps serving: {out:?}"
    );

    // And fixing the files is picked up again.
    fx.write_inventory(&[("dev-alice", "quarantined")]);
    assert!(
        wait_for(Duration::from_secs(10), || {
            Curl::new(&gw, &fx.root, "/fixed")
                .cred(fx.cred("alice"))
                .run()
                .status
                == 403
        }),
        "the fixed inventory (alice quarantined) was never applied"
    );
    let reloads_before = gw.metric(ok_reloads);
    fx.write_config(&good.replace(PLAIN_XFCC, PLAIN));
    assert!(
        wait_for(Duration::from_secs(10), || gw.metric(ok_reloads)
            > reloads_before),
        "the fixed config was never reloaded"
    );
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A route that lets in devices tagged `tag`.
fn route_for_tag(tag: &str) -> String {
    format!(
        r#"[[gateway.routes]]
name = "app"
from = "localhost"
to = "http://{{upstream}}"
allow = [{{ tag = "{tag}" }}]
"#
    )
}

fn get_status(gw: &Gateway, fx: &Fixture, path: &str) -> u16 {
    Curl::new(gw, &fx.root, path)
        .cred(fx.cred("alice"))
        .run()
        .status
}

#[test]
fn sighup_reloads_a_changed_route_rule() {
    if !require_program("curl") || !require_program("kill") {
        return;
    }
    let fx = Fixture::new();
    fx.write_config(&fx.config_text("required", &route_for_tag("eng")));
    let gw = fx.start();
    assert_eq!(get_status(&gw, &fx, "/before"), 200, "alice is tagged eng");

    // The rule now wants a tag alice does not have; SIGHUP right after writing it.
    let log_from = gw.log_text().len();
    fx.write_config(&fx.config_text("required", &route_for_tag("finance")));
    let kill = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    gw.wait_log(log_from, "SIGHUP: reloading");
    // SIGHUP reloads whether or not the file poller saw the change first: after the signal's
    // line comes a completed reload.
    let text = gw.log_text();
    let signal_at = log_from + text[log_from..].find("SIGHUP: reloading").unwrap_or(0);
    gw.wait_log(signal_at, "config reloaded");
    assert!(
        wait_for(Duration::from_secs(10), || get_status(&gw, &fx, "/after")
            == 403),
        "the new rule was not applied; log:\n{}",
        gw.log_text()
    );
    let denied = fx.wait_audit("the denial under the new rule", |l| {
        l["path"] == "/after" && l["decision"] == "deny"
    });
    assert_eq!(denied["reason"], "no_rule_matched");

    // And back.
    let log_from = gw.log_text().len();
    fx.write_config(&fx.config_text("required", &route_for_tag("eng")));
    Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("run kill");
    gw.wait_log(log_from, "SIGHUP: reloading");
    assert!(
        wait_for(Duration::from_secs(10), || get_status(&gw, &fx, "/back")
            == 200),
        "the restored rule was not applied; log:\n{}",
        gw.log_text()
    );
}

/// `limits` for the config, as a table placed before the routes.
fn limits_and_route(header_read_timeout: &str, idle_timeout: &str) -> String {
    format!(
        "[gateway.limits]\nheader_read_timeout = \"{header_read_timeout}\"\n\
         idle_timeout = \"{idle_timeout}\"\n\n{}",
        route_for_tag("eng")
    )
}

/// A TLS connection to the gateway presenting alice's certificate; reads time out after 30 s
/// (a bound for a hung test, not a measurement).
fn tls_connection(
    gw: &Gateway,
    fx: &Fixture,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = rustls_client(&fx.root, Some(fx.cred("alice")));
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(("127.0.0.1", gw.port())).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends a GET on `stream` and reads its response (head + Content-Length body); the status.
fn get_on(stream: &mut impl ReadWrite, path: &str) -> u16 {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send request");
    stream.flush().expect("flush");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            other => panic!(
                "connection ended in the response head ({other:?}): {}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads until the gateway closes the connection; the bytes it sent meanwhile.
fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A close without close_notify, or a reset: closed all the same.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return got
            }
            Err(e) => panic!("the gateway did not close the connection: {e}"),
        }
    }
}

#[test]
fn idle_keep_alive_lasts_idle_timeout_and_a_slow_head_header_read_timeout() {
    let fx = Fixture::new();
    // A short header read timeout and a long idle timeout.
    fx.write_config(&fx.config_text("required", &limits_and_route("1s", "60s")));
    let gw = fx.start();

    // Idle between two requests for well over the header read timeout (and its check
    // interval): the keep-alive connection is still there.
    let mut conn = tls_connection(&gw, &fx);
    assert_eq!(get_on(&mut conn, "/first"), 200);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        get_on(&mut conn, "/second"),
        200,
        "an idle keep-alive connection was closed before idle_timeout"
    );

    // A request head that never completes is closed (by the header read timeout: the idle
    // timeout is a minute, past the 30 s read timeout) without a response.
    let mut slow = tls_connection(&gw, &fx);
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: local")
        .expect("partial head");
    slow.flush().expect("flush");
    let answer = read_until_closed(&mut slow);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // Swap the limits by reload: a long header read timeout (past the 30 s read timeout) and
    // a short idle timeout. A new idle connection is closed by the idle timeout.
    let reloads = gw.metric(r#"portcullis_config_reloads_total{result="ok"}"#);
    fx.write_config(&fx.config_text("required", &limits_and_route("45s", "2s")));
    assert!(
        wait_for(Duration::from_secs(10), || gw
            .metric(r#"portcullis_config_reloads_total{result="ok"}"#)
            > reloads),
        "the new limits were never loaded"
    );
    let mut idle = tls_connection(&gw, &fx);
    assert_eq!(get_on(&mut idle, "/then-idle"), 200);
    let answer = read_until_closed(&mut idle);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}
