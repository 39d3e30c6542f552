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
use super::checks::{need, ChallengeForm, CheckId, Need, Run};
use super::{
    der, err, AttObj, AttestError, AttestationFormat, Attested, Binding, Details, DeviceIdentifier,
    Findings, Rule,
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

const fn id(name: &'static str, about: &'static str) -> CheckId {
    CheckId { name, about }
}

pub const FMT: CheckId = id("step.fmt", "attObj.fmt is \"step\"");
pub const FIELDS: CheckId = id(
    "step.fields",
    "attStmt has alg (integer) and sig (bytes) (step-ca acme/challenge.go)",
);
pub const CHAIN: CheckId = id(
    "step.chain",
    "x5c (slot certificate, f9 certificate) chains to a Yubico PIV root (RFC 5280 §6.1)",
);
pub const LEAF_NOT_CA: CheckId = id(
    "step.leaf.notCa",
    "the slot certificate x5c[0] is not a CA (RFC 5280 §4.2.1.9)",
);
pub const SERIAL: CheckId = id(
    "step.serial",
    "the slot certificate carries the YubiKey serial 1.3.6.1.4.1.41482.3.7",
);
pub const KEY: CheckId = id(
    "step.key",
    "the attested key is P-256, P-384, RSA >= 2048 or Ed25519",
);
pub const ALG: CheckId = id(
    "step.alg",
    "attStmt.alg is ES256, ES384, RS256 or EdDSA and fits the key (IANA COSE registry)",
);
pub const SIG: CheckId = id(
    "step.sig",
    "sig by the attested key verifies over the key authorization (step-ca acme/challenge.go)",
);
pub const EXTENSIONS: CheckId = id(
    "step.extensions",
    "firmware, pin/touch policy and form factor extensions (1.3.6.1.4.1.41482.3.x) are well formed",
);

/// Every check of the format, in the order it runs them.
pub const CHECKS: &[CheckId] = &[
    FMT,
    FIELDS,
    CHAIN,
    LEAF_NOT_CA,
    SERIAL,
    KEY,
    ALG,
    SIG,
    EXTENSIONS,
];

/// Whether a certificate carries Yubico attestation extensions (1.3.6.1.4.1.41482.3.x), for
/// telling the format of a bare chain.
pub fn is_yubikey_attestation(cert: &X509Certificate<'_>) -> bool {
    cert.extensions()
        .iter()
        .any(|e| e.oid.to_id_string().starts_with("1.3.6.1.4.1.41482.3."))
}

fn read_fields(att: &AttObj) -> Result<(i64, &[u8]), AttestError> {
    Ok((
        att.att_stmt.int("step", "alg")?,
        att.att_stmt.bytes("step", "sig")?,
    ))
}

fn check_key(leaf: &X509Certificate<'_>) -> Result<KeyKind, AttestError> {
    match chain::key_kind(leaf.public_key()) {
        Some(KeyKind::Rsa { bits }) if bits < 2048 => err(
            Rule::StepKeyType,
            format!("step: attested RSA key has {bits} bits, fewer than 2048"),
        ),
        Some(kind) => Ok(kind),
        None => err(
            Rule::StepKeyType,
            "step: attested key type is not P-256, P-384, RSA or Ed25519",
        ),
    }
}

/// The COSE algorithm (IANA COSE registry, RFC 9053) that `sig` is made with, for this key.
fn check_alg(
    alg: i64,
    kind: KeyKind,
) -> Result<(&'static dyn VerificationAlgorithm, &'static str), AttestError> {
    Ok(match (alg, kind) {
        (-7, KeyKind::P256) => (&signature::ECDSA_P256_SHA256_ASN1, "ES256"),
        (-35, KeyKind::P384) => (&signature::ECDSA_P384_SHA384_ASN1, "ES384"),
        (-257, KeyKind::Rsa { .. }) => (&signature::RSA_PKCS1_2048_8192_SHA256, "RS256"),
        (-8, KeyKind::Ed25519) => (&signature::ED25519, "EdDSA"),
        (-7 | -35 | -257 | -8, k) => {
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
    })
}

/// `sig` by the attested key over the key authorization binds the attestation to this
/// challenge and this ACME account (step-ca acme/challenge.go, doStepAttestationFormat).
fn check_sig(
    leaf: &X509Certificate<'_>,
    (ring_alg, alg_name): (&'static dyn VerificationAlgorithm, &'static str),
    key_authorization: &[u8],
    sig: &[u8],
) -> Result<(), AttestError> {
    if !chain::verify_with(leaf.public_key(), ring_alg, key_authorization, sig) {
        return err(
            Rule::StepSignature,
            format!("step: sig does not verify over the key authorization under the attested key ({alg_name})"),
        );
    }
    Ok(())
}

/// Firmware version, pin/touch policy and form factor, as recorded facts.
fn extensions(leaf: &X509Certificate<'_>) -> Result<Details, AttestError> {
    let mut details = Details {
        firmware_version: firmware(leaf)?,
        ..Details::default()
    };
    match ext_value(leaf, OID_YUBICO_POLICY) {
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
    match ext_value(leaf, OID_YUBICO_FORM_FACTOR) {
        None => {}
        Some([b]) => details.model = Some(form_factor(*b)),
        Some(_) => {
            return err(
                Rule::StepExtension,
                "step: form factor 1.3.6.1.4.1.41482.3.9 is not 1 byte",
            )
        }
    }
    Ok(details)
}

impl StepVerifier {
    /// The checks of a YubiKey PIV attestation ([`CHECKS`]).
    pub(crate) fn run(
        &self,
        att: &AttObj,
        binding: Binding<'_>,
        now: SystemTime,
        run: &mut Run,
    ) -> Result<Findings, AttestError> {
        let mut found = Findings::new("YubiKey PIV");
        found.details.manufacturer = Some("Yubico".into());
        run.check(&FMT, super::check_fmt(att, "step"))?;
        let fields = if run.chain_only() {
            run.skip(&FIELDS, Rule::StatementField, Need::Statement)?;
            None
        } else {
            run.check(&FIELDS, read_fields(att))?
        };
        let fields = need(fields, FIELDS.name);
        let x5c = att.att_stmt.x5c("step");
        let policy = ChainPolicy {
            allow_issuer_without_basic_constraints: self.allow_f9_without_basic_constraints,
            ..ChainPolicy::default()
        };
        found.chain = run.check(
            &CHAIN,
            x5c.clone().and_then(|x5c| {
                chain::verify_chain("step", &x5c, &self.intermediates, &self.roots, now, &policy)
            }),
        )?;
        // Parsed on its own so that the serial is reported even when the chain fails.
        let leaf = x5c
            .ok()
            .and_then(|x5c| chain::parse_certificate(x5c[0], "step: x5c[0]").ok());
        if let Some(leaf) = &leaf {
            found.public_key_spki = Some(leaf.public_key().raw.to_vec());
        }
        let leaf = need(leaf.as_ref(), "a parsed x5c[0]");
        run.check_with(&LEAF_NOT_CA, leaf, Rule::LeafIsCa, |leaf| {
            super::check_leaf_not_ca("step", leaf)
        })?;
        if let Some(serial) = run.check_with(&SERIAL, leaf, Rule::StepSerialMissing, |leaf| {
            yubikey_serial(leaf)
        })? {
            found.identifiers = vec![DeviceIdentifier::PermanentIdentifier {
                value: serial.to_string(),
                assigner: None,
                source: "yubikey 1.3.6.1.4.1.41482.3.7 (serial)",
            }];
        }
        let kind = run.check_with(&KEY, leaf, Rule::StepKeyType, check_key)?;
        let alg_input = (|| -> Result<_, Need> { Ok((fields?.0, need(kind, KEY.name)?)) })();
        let alg = run.check_with(&ALG, alg_input, Rule::StepAlgorithm, |(alg, kind)| {
            check_alg(alg, kind)
        })?;
        if let Some((_, name)) = alg {
            found.details.extra.insert("step.alg".into(), name.into());
        }
        let sig_input = (|| -> Result<_, Need> {
            let (_, sig) = fields?;
            let (leaf, alg) = (leaf?, need(alg, ALG.name)?);
            match binding {
                Binding::KeyAuthorization(ka) => Ok((leaf, alg, ka, sig)),
                _ => Err(Need::Challenge(&[ChallengeForm::KeyAuthorization])),
            }
        })();
        run.check_with(
            &SIG,
            sig_input,
            Rule::StepSignature,
            |(leaf, alg, ka, sig)| check_sig(leaf, alg, ka, sig),
        )?;
        if let Some(d) = run.check_with(&EXTENSIONS, leaf, Rule::StepExtension, extensions)? {
            found.details.firmware_version = d.firmware_version;
            found.details.model = d.model;
            found.details.extra.extend(d.extra);
        }
        Ok(found)
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
        self.run(
            att,
            Binding::KeyAuthorization(key_authorization),
            now,
            &mut Run::verify(),
        )?
        .into_attested("step", Rule::StepKeyType)
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
