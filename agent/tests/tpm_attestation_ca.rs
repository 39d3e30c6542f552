//! The agent's `tpm` attestation from a real software TPM (swtpm), checked by the CA's own
//! verifier (`portcullis_ca::attest::tpm::TpmVerifier`) with an AK certificate from a test
//! AK CA in the profile that verifier requires.

use std::time::SystemTime;

use portcullis_agent::attestation;
use portcullis_agent::testing::{Swtpm, TestAkCa, TpmIdentity};
use portcullis_agent::tpm::ak::AkAlg;
use portcullis_agent::tpm::ek::EkAlg;
use portcullis_agent::tpm::{Persistent, Tpm};
use portcullis_ca::attest::tpm::TpmVerifier;
use portcullis_ca::attest::{attobj, AttestationFormat, DeviceIdentifier, Rule};

const DEVICE_KEY: Persistent = Persistent(0x8100_0101);
const AK: Persistent = Persistent(0x8100_0102);
const KA: &str = "dGVzdHRva2VudGVzdHRva2VudGVzdHRva2Vu.thumbprintTHUMBPRINTthumbprintTHUMBPRI";

/// The agent's `tpm` attestation, verified by the CA's verifier, for both AK algorithms.
#[test]
fn tpm_attestation_is_accepted_by_the_ca_verifier() {
    let Some(swtpm) = Swtpm::start("tpm_attestation_accepted") else {
        return;
    };
    let ak_ca = TestAkCa::new();
    let verifier = TpmVerifier::with_roots(vec![ak_ca.root_der.clone()]);
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let device = tpm.ensure_device_key(DEVICE_KEY).unwrap();
    for (alg, handle) in [
        (AkAlg::EccP256, AK),
        (AkAlg::Rsa2048, Persistent(0x8100_0103)),
    ] {
        let ak = tpm.ensure_ak(EkAlg::Rsa2048, alg, handle).unwrap();
        let ak_cert = ak_ca.issue(
            &ak.spki().unwrap(),
            &TpmIdentity::default(),
            Some("device-42"),
        );
        let certification = tpm.certify_for_acme(DEVICE_KEY, handle, KA).unwrap();
        assert_eq!(certification.alg, alg.cose());
        let cbor = attestation::tpm_att_obj(&certification, &[ak_cert]);
        let att = attobj::parse(&cbor).expect("the CA parses the attObj");
        let attested = verifier
            .verify(&att, KA.as_bytes(), SystemTime::now())
            .unwrap_or_else(|e| panic!("{alg:?}: refused: {e} ({:?})", e.rule));
        assert_eq!(attested.format, "tpm");
        assert_eq!(attested.public_key_spki, device.spki().unwrap());
        assert!(attested.identifiers.iter().any(|i| matches!(
            i,
            DeviceIdentifier::PermanentIdentifier { value, .. } if value == "device-42"
        )));
        assert_eq!(
            attested.details.manufacturer.as_deref(),
            Some("id:00001014")
        );

        // Bound to the key authorization: another one is refused by the extraData rule.
        let e = verifier
            .verify(&att, b"token.anotherAccount", SystemTime::now())
            .unwrap_err();
        assert_eq!(e.rule, Rule::TpmExtraData, "{e}");
    }
    // An AK certificate from a CA the verifier does not trust.
    let other_ca = TestAkCa::new();
    let ak = tpm.ak_public(AK).unwrap();
    let rogue = other_ca.issue(&ak.spki().unwrap(), &TpmIdentity::default(), None);
    let certification = tpm.certify_for_acme(DEVICE_KEY, AK, KA).unwrap();
    let att = attobj::parse(&attestation::tpm_att_obj(&certification, &[rogue])).unwrap();
    assert!(verifier
        .verify(&att, KA.as_bytes(), SystemTime::now())
        .is_err());
    // The AK is restricted: it cannot be certified as a device key.
    let e = tpm.certify_for_acme(AK, AK, KA).unwrap_err();
    assert!(e.to_string().contains("not a device key"), "{e}");
    assert!(tpm.transient_objects().unwrap().is_empty());
}
