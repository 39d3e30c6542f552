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

use std::process::Command;
use std::time::{Duration, Instant};

use common::feed::{fresh_get, get, keep_alive, portcullis, websocket, ws_closed, CaProcess, Lab};
use common::{http_get, metric_value, require_program, Gateway};

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
    let (lab, mut ca) = Lab::new(&[("alice", "dev-alice"), ("bob", "dev-bob")]);
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
    let (lab, _ca) = Lab::new(&[("alice", "dev-alice")]);
    let url = format!("https://127.0.0.1:{}/feed/v2/status", lab.ca_port);
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
    let (cert, key) = lab.node_cert("probe");
    let mode = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let stream = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "2", "--cacert"])
        .arg(&lab.bundle)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stream.stdout);
    assert!(text.starts_with("event: hello\ndata: {"), "{text}");
    assert!(text.contains("event: snapshot_end"), "{text}");
    // `devices` events: one `data:` line per device, tab-separated (docs/status-feed.md).
    assert!(
        text.contains("event: devices\ndata: {\"devices\":1,"),
        "{text}"
    );
    assert!(text.contains("\ndata: dev-alice\ta\t0"), "{text}");
    assert!(text.contains("event: heartbeat"), "{text}");
}
