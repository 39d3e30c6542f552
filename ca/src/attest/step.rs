//! `fmt = "step"`: YubiKey PIV attestation as step-ca defines it for `device-attest-01`
//! (smallstep `acme/challenge.go`; Yubico "PIV attestation").
//!
//! The statement is `{alg, sig, x5c: [slot attestation cert, f9 device cert, ...]}`:
//! - the slot certificate (issued by the device's f9 key) attests the key in the slot;
//! - the chain goes to a Yubico PIV root: the "Yubico PIV Root CA Serial 263751" for firmware
//!   before 5.7.4, "Yubico Attestation Root 1" after, through Yubico's published
//!   "PIV Attestation A 1/B 1" and "Attestation Intermediate A 1/B 1" certificates, which
//!   devices do not send, so the verifier supplies them;
//! - YubiKey 4 f9 certificates have no basicConstraints: accepted for the leaf's direct issuer
//!   only ([`ChainPolicy::allow_issuer_without_basic_constraints`]);
//! - `sig` is the attested key's signature over the key authorization, which binds the
//!   attestation to this challenge and this ACME account.
//!
//! Yubico extensions on the slot certificate (raw extnValue bytes unless noted):
//! 1.3.6.1.4.1.41482.3.3 firmware (3 bytes), 3.7 serial (DER INTEGER), 3.8 pin and touch
//! policy (2 bytes), 3.9 form factor (1 byte).

use std::time::SystemTime;

use ring::signature::{self, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;

use super::chain::{self, ChainPolicy, KeyKind};
use super::{
    der, err, AttObj, AttestError, AttestationFormat, Attested, Details, DeviceIdentifier, Rule,
};

/// Yubico PIV Root CA Serial 263751 (firmware < 5.7.4).
pub const YUBICO_PIV_ROOT_CA_PEM: &str = include_str!("roots/yubico-piv-root-ca-serial-263751.pem");
/// Yubico Attestation Root 1 (firmware >= 5.7.4).
pub const YUBICO_ATTESTATION_ROOT_1_PEM: &str = include_str!("roots/yubico-attestation-root-1.pem");
/// Yubico PIV Attestation A 1 + Attestation Intermediate A 1.
pub const YUBICO_PIV_ATTESTATION_A1_PEM: &str =
    include_str!("roots/yubico-piv-attestation-A1-bundle.pem");
/// Yubico PIV Attestation B 1 + Attestation Intermediate B 1.
pub const YUBICO_PIV_ATTESTATION_B1_PEM: &str =
    include_str!("roots/yubico-piv-attestation-B1-bundle.pem");

pub const OID_YUBICO_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
pub const OID_YUBICO_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
pub const OID_YUBICO_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
pub const OID_YUBICO_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

/// The `step` verifier and its configuration.
#[derive(Debug, Clone)]
pub struct StepVerifier {
    pub roots: Vec<Vec<u8>>,
    /// Intermediates supplied by the verifier (Yubico's A1/B1 for the 5.7.4+ PKI).
    pub intermediates: Vec<Vec<u8>>,
    /// Accept an f9 certificate without basicConstraints (YubiKey 4). On by default.
    pub allow_f9_without_basic_constraints: bool,
}

impl StepVerifier {
    pub fn with_default_roots() -> Self {
        let pems = |p: &str| super::pem_certificates(p).unwrap_or_default();
        let mut roots = pems(YUBICO_PIV_ROOT_CA_PEM);
        roots.extend(pems(YUBICO_ATTESTATION_ROOT_1_PEM));
        let mut intermediates = pems(YUBICO_PIV_ATTESTATION_A1_PEM);
        intermediates.extend(pems(YUBICO_PIV_ATTESTATION_B1_PEM));
        Self {
            roots,
            intermediates,
            allow_f9_without_basic_constraints: true,
        }
    }

    pub fn with_roots(roots: Vec<Vec<u8>>) -> Self {
        Self {
            roots,
            intermediates: Vec::new(),
            allow_f9_without_basic_constraints: true,
        }
    }
}

fn ext_value<'a>(cert: &'a X509Certificate<'_>, oid: &str) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
        .map(|e| e.value)
}

/// The YubiKey serial number (1.3.6.1.4.1.41482.3.7, a DER INTEGER).
pub fn yubikey_serial(cert: &X509Certificate<'_>) -> Result<u64, AttestError> {
    let Some(v) = ext_value(cert, OID_YUBICO_SERIAL) else {
        return err(
            Rule::StepSerialMissing,
            "step: the slot certificate has no YubiKey serial 1.3.6.1.4.1.41482.3.7",
        );
    };
    der::read_exact(v, der::TAG_INTEGER)
        .and_then(der::integer_u64)
        .ok_or_else(|| {
            AttestError::new(
                Rule::StepExtension,
                "step: YubiKey serial 1.3.6.1.4.1.41482.3.7 is not a non-negative DER INTEGER",
            )
        })
}

fn firmware(cert: &X509Certificate<'_>) -> Result<Option<String>, AttestError> {
    match ext_value(cert, OID_YUBICO_FIRMWARE) {
        None => Ok(None),
        Some([a, b, c]) => Ok(Some(format!("{a}.{b}.{c}"))),
        Some(_) => err(
            Rule::StepExtension,
            "step: firmware version 1.3.6.1.4.1.41482.3.3 is not 3 bytes",
        ),
    }
}

fn pin_policy(b: u8) -> String {
    match b {
        1 => "never".into(),
        2 => "once".into(),
        3 => "always".into(),
        4 => "match-once".into(),
        5 => "match-always".into(),
        other => format!("unknown({other})"),
    }
}

fn touch_policy(b: u8) -> String {
    match b {
        1 => "never".into(),
        2 => "always".into(),
        3 => "cached".into(),
        other => format!("unknown({other})"),
    }
}

fn form_factor(b: u8) -> String {
    let name = match b & 0x7f {
        1 => "usb-a-keychain",
        2 => "usb-a-nano",
        3 => "usb-c-keychain",
        4 => "usb-c-nano",
        5 => "usb-c-lightning",
        6 => "usb-a-bio",
        7 => "usb-c-bio",
        _ => "unknown",
    };
    if b & 0x80 != 0 {
        format!("{name} (FIPS)")
    } else {
        name.into()
    }
}

impl AttestationFormat for StepVerifier {
    fn fmt(&self) -> &'static str {
        "step"
    }

    fn verify(
        &self,
        att: &AttObj,
        key_authorization: &[u8],
        now: SystemTime,
    ) -> Result<Attested, AttestError> {
        super::check_fmt(att, "step")?;
        let stmt = &att.att_stmt;
        let alg = stmt.int("step", "alg")?;
        let sig = stmt.bytes("step", "sig")?;
        let x5c = stmt.x5c("step")?;
        let policy = ChainPolicy {
            allow_issuer_without_basic_constraints: self.allow_f9_without_basic_constraints,
            ..ChainPolicy::default()
        };
        let path =
            chain::verify_chain("step", &x5c, &self.intermediates, &self.roots, now, &policy)?;
        let leaf = chain::parse_certificate(x5c[0], "step: x5c[0]")?;
        super::check_leaf_not_ca("step", &leaf)?;
        let serial = yubikey_serial(&leaf)?;

        // `sig` by the attested key over the key authorization (step-ca acme/challenge.go,
        // doStepAttestationFormat). COSE algorithms: IANA COSE registry, RFC 9053.
        let spki = leaf.public_key();
        let kind = chain::key_kind(spki);
        let (ring_alg, alg_name): (&'static dyn VerificationAlgorithm, &str) = match (alg, kind) {
            (-7, Some(KeyKind::P256)) => (&signature::ECDSA_P256_SHA256_ASN1, "ES256"),
            (-35, Some(KeyKind::P384)) => (&signature::ECDSA_P384_SHA384_ASN1, "ES384"),
            (-257, Some(KeyKind::Rsa { bits })) if bits >= 2048 => {
                (&signature::RSA_PKCS1_2048_8192_SHA256, "RS256")
            }
            (-8, Some(KeyKind::Ed25519)) => (&signature::ED25519, "EdDSA"),
            (-7 | -35 | -257 | -8, Some(KeyKind::Rsa { bits })) if bits < 2048 => {
                return err(
                    Rule::StepKeyType,
                    format!("step: attested RSA key has {bits} bits, fewer than 2048"),
                )
            }
            (-7 | -35 | -257 | -8, None) => {
                return err(
                    Rule::StepKeyType,
                    "step: attested key type is not P-256, P-384, RSA or Ed25519",
                )
            }
            (-7 | -35 | -257 | -8, Some(k)) => {
                return err(
                    Rule::StepAlgorithm,
                    format!("step: attStmt.alg {alg} does not fit the attested key ({k:?})"),
                )
            }
            _ => {
                return err(
                    Rule::StepAlgorithm,
                    format!("step: attStmt.alg {alg} is not ES256, ES384, RS256 or EdDSA"),
                )
            }
        };
        if !chain::verify_with(spki, ring_alg, key_authorization, sig) {
            return err(
                Rule::StepSignature,
                format!("step: sig does not verify over the key authorization under the attested key ({alg_name})"),
            );
        }

        let mut details = Details {
            platform: "YubiKey PIV".into(),
            manufacturer: Some("Yubico".into()),
            firmware_version: firmware(&leaf)?,
            ..Details::default()
        };
        match ext_value(&leaf, OID_YUBICO_POLICY) {
            None => {}
            Some([pin, touch]) => {
                details
                    .extra
                    .insert("yubikey.pinPolicy".into(), pin_policy(*pin));
                details
                    .extra
                    .insert("yubikey.touchPolicy".into(), touch_policy(*touch));
            }
            Some(_) => {
                return err(
                    Rule::StepExtension,
                    "step: pin/touch policy 1.3.6.1.4.1.41482.3.8 is not 2 bytes",
                )
            }
        }
        match ext_value(&leaf, OID_YUBICO_FORM_FACTOR) {
            None => {}
            Some([b]) => details.model = Some(form_factor(*b)),
            Some(_) => {
                return err(
                    Rule::StepExtension,
                    "step: form factor 1.3.6.1.4.1.41482.3.9 is not 1 byte",
                )
            }
        }
        details.extra.insert("step.alg".into(), alg_name.into());
        Ok(Attested {
            format: "step",
            identifiers: vec![DeviceIdentifier::PermanentIdentifier {
                value: serial.to_string(),
                assigner: None,
                source: "yubikey 1.3.6.1.4.1.41482.3.7 (serial)",
            }],
            public_key_spki: spki.raw.to_vec(),
            chain: path,
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_step_policy_names() {
        assert_eq!(pin_policy(2), "once");
        assert_eq!(touch_policy(1), "never");
        assert_eq!(form_factor(0x81), "usb-a-keychain (FIPS)");
        assert_eq!(form_factor(0x04), "usb-c-nano");
    }

    #[test]
    fn attest_step_default_roots_and_intermediates() {
        let v = StepVerifier::with_default_roots();
        assert_eq!(v.roots.len(), 2);
        assert_eq!(v.intermediates.len(), 4);
    }
}
