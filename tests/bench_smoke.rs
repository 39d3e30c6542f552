//! Proves that the benchmark (`benches/gateway_vs_nginx.rs`) works: the same harness, about a
//! second per scenario, against the debug binary and nginx. It asserts that both proxies
//! served requests without a single error and passed identity on — never a figure: timing
//! targets live in the bench, not in tests.
//!
//! nginx is required: missing under CI=true is a failure (.ci/run installs it); elsewhere the
//! test says SKIP loudly and passes.

#[path = "../benches/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

#[test]
fn benchmark_harness_runs_against_portcullis_and_nginx() {
    let Some(nginx) = harness::nginx::find() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("nginx is not installed, and CI=true: the benchmark smoke test must run in CI");
        }
        eprintln!("\n*** SKIP bench_smoke: nginx not found (apt-get install -y nginx) ***\n");
        return;
    };
    let mut opts = harness::Options::new(PathBuf::from(env!("CARGO_BIN_EXE_portcullis")), nginx);
    opts.connections = 4;
    opts.duration = Duration::from_secs(1);
    opts.warmup = Duration::ZERO;
    opts.client_threads = 1;

    let report = harness::run(&opts).expect("the harness runs");
    let text = report.to_markdown();
    eprintln!("{text}");

    assert_eq!(
        report.rows.len(),
        3,
        "keep-alive, new connection, keep-alive with logging"
    );
    for row in &report.rows {
        let label = row.scenario.label();
        for (name, m) in [("portcullis", &row.portcullis), ("nginx", &row.nginx)] {
            assert!(
                m.phase.ok_total > 0,
                "{label} / {name}: no request served\n{text}"
            );
            assert_eq!(
                m.phase.error_count(),
                0,
                "{label} / {name}: errors {:?}\n{text}",
                m.phase.errors
            );
        }
        // The comparable work was done: every request that reached the upstream carried the
        // identity the proxy is configured to pass on.
        assert!(row.portcullis.upstream.requests > 0, "{label}\n{text}");
        assert_eq!(
            row.portcullis.upstream.portcullis_identity, row.portcullis.upstream.requests,
            "{label}: Portcullis forwarded requests without identity headers\n{text}"
        );
        assert_eq!(
            row.nginx.upstream.nginx_verified, row.nginx.upstream.requests,
            "{label}: nginx forwarded requests without X-Client-Verify: SUCCESS\n{text}"
        );
    }
}
