//! TPMS_ATTEST (TPM 2.0 Part 2 §10.12.8) as `certInfo`. Invariants: no panic; what parses has
//! the magic and type it was checked for, and every TPM2B within its maximum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_ca::attest::tpm;

fuzz_target!(|data: &[u8]| {
    if let Ok(ci) = tpm::parse_cert_info(data) {
        assert_eq!(ci.magic, tpm::TPM_GENERATED_VALUE);
        assert_eq!(ci.attest_type, tpm::TPM_ST_ATTEST_CERTIFY);
        assert!(ci.extra_data.len() <= 64 && ci.attested_name.len() <= 66);
    }
});
