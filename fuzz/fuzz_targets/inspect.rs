//! `inspect` on arbitrary input (PEM, JSON payload, base64url, DER, CBOR). Invariants: no
//! panic; the report always has the input check; every failure names a rule with a detail.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portcullis_ca::attest::checks::Outcome;
use portcullis_ca::attest::inspect::{inspect, InspectOptions};
use portcullis_ca::attest::Binding;

fuzz_target!(|data: &[u8]| {
    let report = inspect(
        data,
        &InspectOptions {
            format: None,
            roots: None,
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            binding: Binding::KeyAuthorization(b"token.thumbprint"),
            allow_sha1: true,
        },
    );
    assert_eq!(report.checks.first().map(|c| c.id.name), Some("input"));
    for c in &report.checks {
        if let Outcome::Failed(e) = &c.outcome {
            assert!(!e.detail.is_empty());
        }
    }
});
