//! `[status_feed] state_file`: a gateway restarted while the CA is down starts from the last
//! state it heard instead of knowing no device. Without the file it would refuse everyone
//! (and never become ready) until the CA answers; with it, a best-effort gateway serves the
//! active devices and keeps refusing the quarantined one it had heard about.

mod common;

use std::time::{Duration, Instant};

use common::feed::{fresh_get, Lab};
use common::require_program;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_gateway_restarted_while_the_ca_is_down_starts_from_its_state_file() {
    if !require_program("curl") {
        return;
    }
    let (lab, mut ca) = Lab::new(&[("alice", "dev-alice"), ("bob", "dev-bob")]);
    let state = lab.dir.path().join("gw-1.state");
    let config = lab.gateway_config(
        "gw-1",
        "best_effort",
        &format!("state_file = \"{}\"", state.display()),
    );
    let gw = lab.start_gateway("gw-1", &config);
    let (alice, bob) = (lab.client("alice"), lab.client("bob"));
    let status = |who: &std::sync::Arc<rustls::ClientConfig>, gw: &common::Gateway| {
        lab.rt.block_on(fresh_get(who.clone(), gw.addr))
    };
    assert_eq!(status(&alice, &gw), Some(200));
    assert_eq!(status(&bob, &gw), Some(200));
    wait_for("the state file", || state.exists());
    let mode = std::fs::metadata(&state).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "the inventory on disk is the operator's only"
    );

    // A change the gateway hears reaches the file.
    let before = std::fs::metadata(&state).unwrap().modified().unwrap();
    lab.inventory(&["set-status", "dev-bob", "quarantined", "--reason", "lost"]);
    wait_for("bob refused", || status(&bob, &gw) == Some(403));
    wait_for("the state file rewritten", || {
        std::fs::metadata(&state).unwrap().modified().unwrap() > before
    });

    // The CA goes down, then the gateway restarts.
    ca.kill();
    drop(gw);
    let gw = lab.start_gateway("gw-1", &config);
    assert!(
        gw.log_text().contains("starting from the state file"),
        "{}",
        gw.log_text()
    );
    assert_eq!(status(&alice, &gw), Some(200), "{}", gw.log_text());
    assert_eq!(
        status(&bob, &gw),
        Some(403),
        "the quarantine heard before stays"
    );

    // A file that does not parse is ignored (logged), never trusted in part.
    drop(gw);
    std::fs::write(&state, "event: hello\ndata: {not json\n\n").unwrap();
    let log = lab.dir.path().join("gw-1-garbage.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the garbage file reported", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("state file ignored")
    });
    let _ = child.kill();
    let _ = child.wait();
}
