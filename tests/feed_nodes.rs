//! Node certificates are credentials like any other: the CA records them, lists them and
//! revokes them (`portcullis ca nodes`, `portcullis ca node-revoke`). A revoked node's open
//! feed subscription ends within seconds, its reconnections are refused, and an enforcement
//! point cut off that way goes stale as its `mode` says — it never gets the fleet's state again.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::feed::{fresh_get, portcullis, Lab};
use common::{metric_value, require_program};

fn subscribe(lab: &Lab, name: &str, max_time: u64) -> Command {
    let (cert, key) = (
        lab.dir.path().join(format!("nodes/{name}.pem")),
        lab.dir.path().join(format!("nodes/{name}.key")),
    );
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-N", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", &max_time.to_string(), "--cacert"])
        .arg(&lab.bundle)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("https://127.0.0.1:{}/feed/v2/status", lab.ca_port));
    curl
}

#[test]
fn a_revoked_node_is_cut_off_the_feed_and_refused() {
    if !require_program("curl") {
        return;
    }
    let (lab, _ca) = Lab::new(&[("alice", "dev-alice")]);
    lab.node_cert("probe");
    let gw = lab.gateway("gw-1", "best_effort");
    let alice = lab.client("alice");
    assert_eq!(
        lab.rt.block_on(fresh_get(alice.clone(), gw.addr)),
        Some(200)
    );

    let config = lab.ca_config.to_str().unwrap();
    let listed = portcullis(&["ca", "nodes", "--config", config]);
    for node in ["probe", "gw-1"] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(node) && l.ends_with("valid")),
            "{node} listed valid:\n{listed}"
        );
    }

    // An open subscription of `probe` ends once its certificate is revoked.
    let mut stream = subscribe(&lab, "probe", 30)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(stream.try_wait().unwrap().is_none(), "the stream is open");
    let revoked_at = Instant::now();
    let said = portcullis(&[
        "ca",
        "node-revoke",
        "probe",
        "--config",
        config,
        "--reason",
        "keyCompromise",
    ]);
    assert!(said.contains("revoked"), "{said}");
    let ended = loop {
        if let Some(status) = stream.try_wait().unwrap() {
            break (status, revoked_at.elapsed());
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "the revoked node's stream was not ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The feed's revoked set is refreshed once a second and heartbeats come twice a second.
    assert!(
        ended.1 < Duration::from_secs(5),
        "ended after {:?}",
        ended.1
    );
    let out = subscribe(&lab, "probe", 5).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "reconnection refused"
    );
    let listed = portcullis(&["ca", "nodes", "--config", config]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("probe") && l.contains("revoked")),
        "{listed}"
    );
    // Revoking a node twice, or a node that never was, says so.
    let again = portcullis(&["ca", "node-revoke", "probe", "--config", config]);
    assert!(again.contains("no live certificate"), "{again}");
    let stranger = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["ca", "node-revoke", "nobody", "--config", config])
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("no node `nobody`"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );

    // A gateway whose node is revoked loses the feed: best-effort, it keeps the last state it
    // heard (and says it is stale); it never hears the fleet again with that certificate.
    portcullis(&["ca", "node-revoke", "gw-1", "--config", config]);
    let start = Instant::now();
    while metric_value(
        &gw.metrics(),
        "portcullis_status_feed_stale{mode=\"best_effort\"}",
    ) < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "gw-1 never went stale:\n{}",
            gw.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.rt.block_on(fresh_get(alice, gw.addr)), Some(200));
    gw.wait_log(0, "the CA answered 403");
}
