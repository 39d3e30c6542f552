//! TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4) as `pubArea`, and the SubjectPublicKeyInfo built from
//! it. Invariants: no panic; an SPKI that is built is DER the X.509 parser reads back whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_ca::attest::tpm;

fuzz_target!(|data: &[u8]| {
    let Ok(pa) = tpm::parse_pub_area(data) else {
        return;
    };
    if let Ok(spki) = pa.spki() {
        assert!(
            portcullis_ca::attest::chain::spki_key_kind(&spki).is_some(),
            "an SPKI built from pubArea does not read back: {spki:02x?}"
        );
    }
});
