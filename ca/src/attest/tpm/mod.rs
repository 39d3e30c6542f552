//! `fmt = "tpm"`: TPM 2.0 key attestation (W3C WebAuthn §8.3, used by
//! draft-ietf-acme-device-attest for TPM-backed keys).
//!
//! The statement is `{ver: "2.0", alg, x5c: [AK cert, ...], sig, certInfo, pubArea}`:
//! `certInfo` is a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY produced by TPM2_Certify over the
//! new key, signed by the attestation key (AK) whose certificate is `x5c[0]`; `pubArea` is the
//! new key's TPMT_PUBLIC. The checks, in this order ([`CHECKS`]):
//! 1. the statement's fields; `ver` is "2.0"; `alg` is a COSE algorithm accepted here (RS1
//!    only if `allow_sha1`);
//! 2. the AK chain to a configured root ([`super::chain`]) and the AK certificate profile
//!    (WebAuthn §8.3.1, [`ak`]);
//! 3. `certInfo` parses as TPMS_ATTEST with magic TPM_GENERATED_VALUE and type CERTIFY;
//! 4. `pubArea` parses as TPMT_PUBLIC (RSA or ECC); the key's object attributes and strength;
//! 5. `sig` verifies over `certInfo` under the AK key;
//! 6. `certInfo.extraData` = hash_alg(attToBeSigned) — for ACME the key authorization;
//! 7. `certInfo.attested.name` = nameAlg || H_nameAlg(pubArea) (TPM 2.0 Part 1 §16).

mod ak;
mod sig;
mod structures;

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;

use super::chain::{self, ChainPolicy, KeyKind};
use super::checks::{need, ChallengeForm, CheckId, Need, Run};
use super::{err, AttObj, AttestError, AttestationFormat, Attested, Binding, Findings, Rule};
pub use ak::{is_ak_certificate, OID_TCG_KP_AIK_CERTIFICATE};
pub use sig::HashAlg;
use sig::{Scheme, SigBytes};
pub use structures::*;

/// The Microsoft TPM Root Certificate Authority 2014: the root of Windows AK certificates.
pub const MICROSOFT_TPM_ROOT_CA_2014_PEM: &str =
    include_str!("../roots/microsoft-tpm-root-ca-2014.pem");

/// The `tpm` verifier and its configuration.
#[derive(Debug, Clone)]
pub struct TpmVerifier {
    /// Trust anchors for AK certificates (TPM manufacturer / attestation CA roots).
    pub roots: Vec<Vec<u8>>,
    /// Intermediates the verifier supplies besides those in `x5c`.
    pub intermediates: Vec<Vec<u8>>,
    /// Accept SHA-1: `alg` RS1 (-65535), SHA-1 Names and sha1WithRSA certificates. Every real
    /// Windows TPM attestation uses RS1; off by default.
    pub allow_sha1: bool,
}

impl TpmVerifier {
    /// Roots: the Microsoft TPM Root CA 2014. SHA-1 refused.
    pub fn with_default_roots() -> Self {
        Self {
            roots: super::pem_certificates(MICROSOFT_TPM_ROOT_CA_2014_PEM).unwrap_or_default(),
            intermediates: Vec::new(),
            allow_sha1: false,
        }
    }

    pub fn with_roots(roots: Vec<Vec<u8>>) -> Self {
        Self {
            roots,
            intermediates: Vec::new(),
            allow_sha1: false,
        }
    }
}

const fn id(name: &'static str, about: &'static str) -> CheckId {
    CheckId { name, about }
}

pub const FMT: CheckId = id("tpm.fmt", "attObj.fmt is \"tpm\"");
pub const FIELDS: CheckId = id(
    "tpm.fields",
    "attStmt has ver, alg, sig, certInfo, pubArea of the right types (WebAuthn §8.3)",
);
pub const VER: CheckId = id("tpm.ver", "attStmt.ver is \"2.0\" (WebAuthn §8.3)");
pub const ALG: CheckId = id(
    "tpm.alg",
    "attStmt.alg is an accepted COSE algorithm (IANA COSE registry)",
);
pub const ALG_SHA1: CheckId = id(
    "tpm.alg.sha1",
    "attStmt.alg is not SHA-1 based, unless SHA-1 is allowed (allow_sha1_tpm)",
);
pub const CHAIN: CheckId = id(
    "tpm.chain",
    "x5c chains to a configured TPM root (RFC 5280 §6.1)",
);
pub const AK_VERSION: CheckId = id(
    "tpm.ak.version",
    "AK certificate is X.509 v3 (WebAuthn §8.3.1)",
);
pub const AK_SUBJECT: CheckId = id(
    "tpm.ak.subject",
    "AK certificate subject is empty (WebAuthn §8.3.1)",
);
pub const AK_SAN: CheckId = id(
    "tpm.ak.san",
    "AK certificate SAN names the TPM manufacturer, model, version (TCG EK Credential Profile §3.2.9)",
);
pub const AK_EKU: CheckId = id(
    "tpm.ak.eku",
    "AK certificate EKU has tcg-kp-AIKCertificate 2.23.133.8.3 (WebAuthn §8.3.1)",
);
pub const AK_CA: CheckId = id(
    "tpm.ak.notCa",
    "AK certificate is not a CA (WebAuthn §8.3.1)",
);
pub const AK_KEY: CheckId = id("tpm.ak.key", "AK key is RSA, P-256 or P-384");
pub const CERT_INFO: CheckId = id(
    "tpm.certInfo",
    "certInfo is a TPMS_ATTEST, magic TPM_GENERATED_VALUE, type CERTIFY (TPM 2.0 Part 2 §10.12.8)",
);
pub const PUB_AREA: CheckId = id(
    "tpm.pubArea",
    "pubArea is an RSA or ECC TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4)",
);
pub const ATTRIBUTES: CheckId = id(
    "tpm.objectAttributes",
    "attested key: fixedTPM, fixedParent, sensitiveDataOrigin, sign, not restricted (TPM 2.0 Part 2 §8.3)",
);
pub const KEY: CheckId = id("tpm.key", "attested key is RSA >= 2048 or P-256/P-384");
pub const SIG: CheckId = id(
    "tpm.sig",
    "sig verifies over certInfo under the AK key with alg (WebAuthn §8.3)",
);
pub const EXTRA_DATA: CheckId = id(
    "tpm.extraData",
    "certInfo.extraData = hash of alg over the key authorization (WebAuthn §8.3)",
);
pub const NAME: CheckId = id(
    "tpm.name",
    "certInfo.attested.name is the Name of pubArea (TPM 2.0 Part 1 §16)",
);
pub const IDENTIFIERS: CheckId = id(
    "tpm.identifiers",
    "AK certificate SAN device identifiers are well formed (RFC 4043, RFC 4108)",
);

/// Every check of the format, in the order it runs them.
pub const CHECKS: &[CheckId] = &[
    FMT,
    FIELDS,
    VER,
    ALG,
    ALG_SHA1,
    CHAIN,
    AK_VERSION,
    AK_SUBJECT,
    AK_SAN,
    AK_EKU,
    AK_CA,
    AK_KEY,
    CERT_INFO,
    PUB_AREA,
    ATTRIBUTES,
    KEY,
    SIG,
    EXTRA_DATA,
    NAME,
    IDENTIFIERS,
];

/// The statement's fields besides `x5c`, read together (WebAuthn §8.3 "Verify that attStmt
/// is valid CBOR conforming to the syntax defined above").
#[derive(Clone, Copy)]
struct Fields<'a> {
    ver: &'a str,
    alg: i64,
    sig: &'a [u8],
    cert_info: &'a [u8],
    pub_area: &'a [u8],
}

fn read_fields(att: &AttObj) -> Result<Fields<'_>, AttestError> {
    let stmt = &att.att_stmt;
    Ok(Fields {
        ver: stmt.text("tpm", "ver")?,
        alg: stmt.int("tpm", "alg")?,
        sig: stmt.bytes("tpm", "sig")?,
        cert_info: stmt.bytes("tpm", "certInfo")?,
        pub_area: stmt.bytes("tpm", "pubArea")?,
    })
}

fn check_ver(ver: &str) -> Result<(), AttestError> {
    if ver != "2.0" {
        return err(
            Rule::TpmVersion,
            format!("tpm: attStmt.ver is {ver:?}, not \"2.0\" (WebAuthn §8.3)"),
        );
    }
    Ok(())
}

fn check_alg(alg: i64) -> Result<(Scheme, HashAlg, &'static str), AttestError> {
    sig::cose_alg(alg).ok_or_else(|| {
        AttestError::new(
            Rule::TpmAlgorithm,
            format!("tpm: attStmt.alg {alg} is not an accepted COSE algorithm"),
        )
    })
}

/// A policy apart from the algorithm itself, so that `inspect` still checks the signature
/// and extraData of an RS1 statement and shows that only the policy refuses it.
fn check_alg_sha1(hash: HashAlg, allow_sha1: bool) -> Result<(), AttestError> {
    if hash == HashAlg::Sha1 && !allow_sha1 {
        return err(
            Rule::TpmAlgorithm,
            "tpm: attStmt.alg is RS1 (SHA-1) and SHA-1 is not allowed (configure allow_sha1)",
        );
    }
    Ok(())
}

fn check_ak_key(ak: &X509Certificate<'_>) -> Result<KeyKind, AttestError> {
    chain::key_kind(ak.public_key()).ok_or_else(|| {
        AttestError::new(
            Rule::TpmAlgorithm,
            "tpm: the AK certificate's key type is not supported",
        )
    })
}

/// The attested key must be a TPM-resident signing key that never left the TPM and is not
/// restricted (issue 4; TPM 2.0 Part 2 §8.3.3, TPMA_OBJECT attribute descriptions).
fn check_attributes(attrs: u32) -> Result<(), AttestError> {
    for (bit, name, want) in [
        (TPMA_FIXED_TPM, "fixedTPM", true),
        (TPMA_FIXED_PARENT, "fixedParent", true),
        (TPMA_SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin", true),
        (TPMA_SIGN_ENCRYPT, "sign", true),
        (TPMA_RESTRICTED, "restricted", false),
    ] {
        if (attrs & bit != 0) != want {
            return err(
                Rule::TpmObjectAttributes,
                format!(
                    "tpm: pubArea.objectAttributes {attrs:#010x}: {name} must be {} (TPM 2.0 Part 2 §8.3)",
                    if want { "set" } else { "clear" }
                ),
            );
        }
    }
    Ok(())
}

/// "Verify the sig is a valid signature over certInfo using the attestation public key in
/// aikCert with the algorithm specified in alg."
fn check_sig(
    sig: &[u8],
    cert_info: &[u8],
    (scheme, hash, alg_name): (Scheme, HashAlg, &'static str),
    ak: &X509Certificate<'_>,
    ak_kind: KeyKind,
) -> Result<(), AttestError> {
    let decoded = sig::decode_sig(sig, scheme, hash, ak_kind)?;
    let (bytes, fixed) = match &decoded {
        SigBytes::Raw(b) => (b, false),
        SigBytes::EcdsaFixed(b) => (b, true),
    };
    let Some(ring_alg) = sig::ring_alg(scheme, hash, ak_kind, fixed) else {
        return err(
            Rule::TpmAlgorithm,
            format!("tpm: attStmt.alg {alg_name} is not supported with an AK key {ak_kind:?}"),
        );
    };
    if !chain::verify_with(ak.public_key(), ring_alg, cert_info, bytes) {
        return err(
            Rule::TpmSignature,
            format!("tpm: sig does not verify over certInfo under the AK key with {alg_name} (WebAuthn §8.3)"),
        );
    }
    Ok(())
}

/// What `certInfo.extraData` must equal: the hash of the key authorization (for ACME the
/// attToBeSigned of WebAuthn §8.3), or a value an operator gives as is.
#[derive(Clone, Copy)]
enum ExpectedExtraData<'a> {
    HashOf(&'a [u8]),
    Value(&'a [u8]),
}

/// "Verify that extraData is set to the hash of attToBeSigned using the hash algorithm
/// employed in alg."
fn check_extra_data(
    cert_info: &CertInfo,
    hash: HashAlg,
    expected: ExpectedExtraData<'_>,
) -> Result<(), AttestError> {
    let (expected, what) = match expected {
        ExpectedExtraData::HashOf(ka) => (
            hash.digest(ka),
            format!("the {hash:?} hash of the key authorization"),
        ),
        ExpectedExtraData::Value(v) => (v.to_vec(), "the expected value".to_owned()),
    };
    if cert_info.extra_data != expected {
        return err(
            Rule::TpmExtraData,
            format!("tpm: certInfo.extraData is not {what} (WebAuthn §8.3)"),
        );
    }
    Ok(())
}

/// "Verify that attested contains a TPMS_CERTIFY_INFO structure ... whose name field contains
/// a valid Name for pubArea" (TPM 2.0 Part 1 §16: Name = nameAlg || H_nameAlg(pubArea)).
fn check_name(
    cert_info: &CertInfo,
    pub_area: &PubArea,
    pub_area_bytes: &[u8],
    allow_sha1: bool,
) -> Result<(), AttestError> {
    let Some(name_hash) = HashAlg::from_tpm(pub_area.name_alg) else {
        return err(
            Rule::TpmName,
            format!(
                "tpm: pubArea.nameAlg {:#06x} is not a supported hash",
                pub_area.name_alg
            ),
        );
    };
    if name_hash == HashAlg::Sha1 && !allow_sha1 {
        return err(
            Rule::TpmName,
            "tpm: pubArea.nameAlg is SHA-1 and SHA-1 is not allowed",
        );
    }
    let mut name = pub_area.name_alg.to_be_bytes().to_vec();
    name.extend(name_hash.digest(pub_area_bytes));
    if cert_info.attested_name != name {
        return err(
            Rule::TpmName,
            "tpm: certInfo.attested.name is not the Name of pubArea (WebAuthn §8.3; TPM 2.0 Part 1 §16)",
        );
    }
    Ok(())
}

impl TpmVerifier {
    /// The verification procedure of WebAuthn §8.3, as named checks ([`CHECKS`]).
    pub(crate) fn run(
        &self,
        att: &AttObj,
        binding: Binding<'_>,
        now: SystemTime,
        run: &mut Run,
    ) -> Result<Findings, AttestError> {
        let mut found = Findings::new("TPM 2.0");
        run.check(&FMT, super::check_fmt(att, "tpm"))?;
        let fields = if run.chain_only() {
            run.skip(&FIELDS, Rule::StatementField, Need::Statement)?;
            None
        } else {
            run.check(&FIELDS, read_fields(att))?
        };
        let fields = need(fields, FIELDS.name);
        run.check_with(&VER, fields.map(|f| f.ver), Rule::TpmVersion, check_ver)?;
        let alg = run.check_with(&ALG, fields.map(|f| f.alg), Rule::TpmAlgorithm, check_alg)?;
        run.check_with(
            &ALG_SHA1,
            need(alg, ALG.name),
            Rule::TpmAlgorithm,
            |(_, hash, _)| check_alg_sha1(hash, self.allow_sha1),
        )?;
        if let Some((_, _, name)) = alg {
            found.details.extra.insert("tpm.alg".into(), name.into());
        }

        // The AK chain and certificate profile (WebAuthn §8.3: "Verify that aikCert meets the
        // requirements in § 8.3.1").
        let x5c = att.att_stmt.x5c("tpm");
        let policy = ChainPolicy {
            allow_sha1: self.allow_sha1,
            ..ChainPolicy::default()
        };
        found.chain = run.check(
            &CHAIN,
            x5c.clone().and_then(|x5c| {
                chain::verify_chain("tpm", &x5c, &self.intermediates, &self.roots, now, &policy)
            }),
        )?;
        // Parsed on its own so that the profile is reported even when the chain fails.
        let ak = x5c
            .ok()
            .and_then(|x5c| chain::parse_certificate(x5c[0], "tpm: x5c[0]").ok());
        let ak = need(ak.as_ref(), "a parsed x5c[0]");
        run.check_with(&AK_VERSION, ak, Rule::TpmAkCertVersion, ak::check_version)?;
        run.check_with(&AK_SUBJECT, ak, Rule::TpmAkCertSubject, ak::check_subject)?;
        if let Some((manufacturer, model, version)) =
            run.check_with(&AK_SAN, ak, Rule::TpmAkCertSan, ak::tpm_identity)?
        {
            found.details.manufacturer = Some(manufacturer);
            found.details.model = Some(model);
            found.details.extra.insert("tpm.version".into(), version);
        }
        run.check_with(&AK_EKU, ak, Rule::TpmAkCertEku, ak::check_eku)?;
        run.check_with(&AK_CA, ak, Rule::TpmAkCertCa, ak::check_not_ca)?;
        let ak_kind = run.check_with(&AK_KEY, ak, Rule::TpmAlgorithm, check_ak_key)?;

        let cert_info = run.check_with(
            &CERT_INFO,
            fields.map(|f| f.cert_info),
            Rule::TpmCertInfoParse,
            parse_cert_info,
        )?;
        if let Some(ci) = &cert_info {
            found.details.firmware_version = Some(format!("{:#018x}", ci.firmware_version));
        }
        let pub_area = run.check_with(
            &PUB_AREA,
            fields.map(|f| f.pub_area),
            Rule::TpmPubAreaParse,
            parse_pub_area,
        )?;
        let attrs = need(pub_area.as_ref(), PUB_AREA.name).map(|p| p.object_attributes);
        if let Ok(attrs) = attrs {
            found
                .details
                .extra
                .insert("tpm.objectAttributes".into(), format!("{attrs:#010x}"));
        }
        run.check_with(
            &ATTRIBUTES,
            attrs,
            Rule::TpmObjectAttributes,
            check_attributes,
        )?;
        found.public_key_spki = run.check_with(
            &KEY,
            need(pub_area.as_ref(), PUB_AREA.name),
            Rule::TpmKeyStrength,
            PubArea::spki,
        )?;

        let sig_input = (|| -> Result<_, Need> {
            Ok((
                fields?,
                need(alg, ALG.name)?,
                ak?,
                need(ak_kind, AK_KEY.name)?,
            ))
        })();
        run.check_with(&SIG, sig_input, Rule::TpmSignature, |(f, alg, ak, kind)| {
            check_sig(f.sig, f.cert_info, alg, ak, kind)
        })?;

        let expected = match binding {
            Binding::KeyAuthorization(ka) => Ok(ExpectedExtraData::HashOf(ka)),
            Binding::Expected(v) => Ok(ExpectedExtraData::Value(v)),
            Binding::Token(_) | Binding::None => Err(Need::Challenge(&[
                ChallengeForm::KeyAuthorization,
                ChallengeForm::Expected,
            ])),
        };
        let extra_input = (|| -> Result<_, Need> {
            let ci = need(cert_info.as_ref(), CERT_INFO.name)?;
            Ok((ci, need(alg, ALG.name)?.1, expected?))
        })();
        run.check_with(
            &EXTRA_DATA,
            extra_input,
            Rule::TpmExtraData,
            |(ci, hash, expected)| check_extra_data(ci, hash, expected),
        )?;

        let name_input = (|| -> Result<_, Need> {
            let ci = need(cert_info.as_ref(), CERT_INFO.name)?;
            Ok((
                ci,
                need(pub_area.as_ref(), PUB_AREA.name)?,
                fields?.pub_area,
            ))
        })();
        run.check_with(&NAME, name_input, Rule::TpmName, |(ci, pa, bytes)| {
            check_name(ci, pa, bytes, self.allow_sha1)
        })?;

        if let Some(ids) = run.check_with(&IDENTIFIERS, ak, Rule::CertParse, |ak| {
            super::san_device_identifiers(ak, "tpm AK certificate SAN")
        })? {
            found.identifiers = ids;
        }
        Ok(found)
    }
}

impl AttestationFormat for TpmVerifier {
    fn fmt(&self) -> &'static str {
        "tpm"
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
        .into_attested("tpm", Rule::TpmKeyStrength)
    }
}
