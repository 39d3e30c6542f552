//! The attestation object parser (RFC 8949 CBOR, WebAuthn §6.5.4 shape) and, on what parses,
//! every verifier. Invariants: no panic; every refusal names a rule; what parses survives a
//! re-encoding unchanged.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portcullis_ca::attest::{attobj, Verifiers};

fuzz_target!(|data: &[u8]| {
    let Ok(att) = attobj::parse(data) else {
        return;
    };
    let again = attobj::parse(&attobj::to_cbor(&att)).expect("a parsed object re-encodes");
    assert_eq!(again, att);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let verifiers = Verifiers::with_defaults();
    // Nothing the fuzzer can make carries a signature by a vendor root.
    assert!(verifiers.verify(&att, b"token.thumbprint", now).is_err());
});
