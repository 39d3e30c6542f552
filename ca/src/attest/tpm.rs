//! `fmt = "tpm"`: TPM 2.0 key attestation (W3C WebAuthn §8.3, used by
//! draft-ietf-acme-device-attest for TPM-backed keys).
//!
//! The statement is `{ver: "2.0", alg, x5c: [AK cert, ...], sig, certInfo, pubArea}`:
//! `certInfo` is a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY produced by TPM2_Certify over the
//! new key, signed by the attestation key (AK) whose certificate is `x5c[0]`; `pubArea` is the
//! new key's TPMT_PUBLIC. The verifier checks, in this order:
//! 1. `ver` is "2.0" and `alg` is a COSE algorithm accepted here (RS1 only if `allow_sha1`);
//! 2. the AK chain to a configured root ([`super::chain`]) and the AK certificate profile
//!    (WebAuthn §8.3.1);
//! 3. `certInfo` parses as TPMS_ATTEST with magic TPM_GENERATED_VALUE and type CERTIFY;
//! 4. `pubArea` parses as TPMT_PUBLIC (RSA or ECC); the key's object attributes and strength;
//! 5. `sig` verifies over `certInfo` under the AK key;
//! 6. `certInfo.extraData` = hash_alg(attToBeSigned) — for ACME the key authorization;
//! 7. `certInfo.attested.name` = nameAlg || H_nameAlg(pubArea) (TPM 2.0 Part 1 §16).

use std::time::SystemTime;

use ring::digest;
use ring::signature::{self, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::chain::{self, ChainPolicy, KeyKind};
use super::{der, err, AttObj, AttestError, AttestationFormat, Attested, Details, Rule};

/// The Microsoft TPM Root Certificate Authority 2014: the root of Windows AK certificates.
pub const MICROSOFT_TPM_ROOT_CA_2014_PEM: &str =
    include_str!("roots/microsoft-tpm-root-ca-2014.pem");

/// TPM_GENERATED_VALUE (TPM 2.0 Part 2 §6.2).
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY (TPM 2.0 Part 2 §6.9).
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

// TPM_ALG_ID values (TPM 2.0 Part 2 §6.3).
pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAES: u16 = 0x0015;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECDAA: u16 = 0x001a;
pub const TPM_ALG_ECC: u16 = 0x0023;
// TPM_ECC_CURVE (TPM 2.0 Part 2 §6.4).
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

// TPMA_OBJECT bits (TPM 2.0 Part 2 §8.3.2).
pub const TPMA_FIXED_TPM: u32 = 1 << 1;
pub const TPMA_FIXED_PARENT: u32 = 1 << 4;
pub const TPMA_SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub const TPMA_RESTRICTED: u32 = 1 << 16;
pub const TPMA_SIGN_ENCRYPT: u32 = 1 << 18;

/// tcg-kp-AIKCertificate (TCG EK Credential Profile; WebAuthn §8.3.1).
pub const OID_TCG_KP_AIK_CERTIFICATE: &str = "2.23.133.8.3";
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";

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

/// The hash of a COSE algorithm (and of `certInfo.extraData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    fn from_tpm(id: u16) -> Option<Self> {
        match id {
            TPM_ALG_SHA1 => Some(Self::Sha1),
            TPM_ALG_SHA256 => Some(Self::Sha256),
            TPM_ALG_SHA384 => Some(Self::Sha384),
            TPM_ALG_SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => TPM_ALG_SHA1,
            Self::Sha256 => TPM_ALG_SHA256,
            Self::Sha384 => TPM_ALG_SHA384,
            Self::Sha512 => TPM_ALG_SHA512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Pkcs1,
    Pss,
    Ecdsa,
}

/// COSE algorithm identifiers (IANA COSE Algorithms registry; RFC 9053, RFC 8812).
fn cose_alg(alg: i64) -> Option<(Scheme, HashAlg, &'static str)> {
    Some(match alg {
        -65535 => (Scheme::Pkcs1, HashAlg::Sha1, "RS1"),
        -257 => (Scheme::Pkcs1, HashAlg::Sha256, "RS256"),
        -258 => (Scheme::Pkcs1, HashAlg::Sha384, "RS384"),
        -259 => (Scheme::Pkcs1, HashAlg::Sha512, "RS512"),
        -37 => (Scheme::Pss, HashAlg::Sha256, "PS256"),
        -38 => (Scheme::Pss, HashAlg::Sha384, "PS384"),
        -39 => (Scheme::Pss, HashAlg::Sha512, "PS512"),
        -7 => (Scheme::Ecdsa, HashAlg::Sha256, "ES256"),
        -35 => (Scheme::Ecdsa, HashAlg::Sha384, "ES384"),
        _ => return None,
    })
}

/// A big-endian reader over a TPM structure (TPM 2.0 Part 1 §18 canonical marshalling) that
/// turns every short read into an error naming the structure and field.
struct Reader<'a> {
    buf: &'a [u8],
    rule: Rule,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], rule: Rule, what: &'static str) -> Self {
        Self { buf, rule, what }
    }

    fn fail<T>(&self, field: &str, why: &str) -> Result<T, AttestError> {
        err(
            self.rule,
            format!("tpm: {}.{field} {why} (TPM 2.0 Part 2)", self.what),
        )
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], AttestError> {
        if self.buf.len() < n {
            return self.fail(
                field,
                &format!("is truncated: needs {n} bytes, {} left", self.buf.len()),
            );
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self, field: &str) -> Result<u16, AttestError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, AttestError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64, AttestError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: UINT16 size then that many bytes, with the structure's maximum size.
    fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8], AttestError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return self.fail(field, &format!("size {size} exceeds its maximum {max}"));
        }
        self.take(size, field)
    }

    fn finish(&self) -> Result<(), AttestError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.fail("(end)", &format!("has {} trailing bytes", self.buf.len()))
        }
    }
}

// sizeof(TPMU_NAME) = 2 + 64 (TPMT_HA with SHA-512); TPM2B_DATA and TPM2B_DIGEST hold at most
// sizeof(TPMU_HA) = 64; RSA keys up to 4096 bits; ECC parameters up to P-521 (66 bytes).
const MAX_NAME: usize = 66;
const MAX_DIGEST: usize = 64;
const MAX_RSA: usize = 512;
const MAX_ECC_PARAM: usize = 66;

/// The fields of TPMS_ATTEST (TPM 2.0 Part 2 §10.12.8, as WebAuthn §8.3 cites it) used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: u8,
    pub firmware_version: u64,
    /// TPMS_CERTIFY_INFO.name (TPM 2.0 Part 2 §10.12.3).
    pub attested_name: Vec<u8>,
    pub attested_qualified_name: Vec<u8>,
}

/// Parses `certInfo`. Magic and type are checked here, before anything else is read, so that
/// a statement of another kind (a quote, a creation attestation) is named as such.
pub fn parse_cert_info(buf: &[u8]) -> Result<CertInfo, AttestError> {
    let mut r = Reader::new(buf, Rule::TpmCertInfoParse, "certInfo");
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED_VALUE {
        return err(
            Rule::TpmMagic,
            format!("tpm: certInfo.magic is {magic:#010x}, not TPM_GENERATED_VALUE 0xff544347 (WebAuthn §8.3; TPM 2.0 Part 2 §10.12.8)"),
        );
    }
    let attest_type = r.u16("type")?;
    if attest_type != TPM_ST_ATTEST_CERTIFY {
        return err(
            Rule::TpmType,
            format!("tpm: certInfo.type is {attest_type:#06x}, not TPM_ST_ATTEST_CERTIFY 0x8017 (WebAuthn §8.3; TPM 2.0 Part 2 §10.12.8)"),
        );
    }
    let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
    let extra_data = r.tpm2b("extraData", MAX_DIGEST)?.to_vec();
    // TPMS_CLOCK_INFO (§10.11.1).
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let safe = r.take(1, "clockInfo.safe")?[0];
    if safe > 1 {
        return r.fail("clockInfo.safe", "is not a TPMI_YES_NO");
    }
    let firmware_version = r.u64("firmwareVersion")?;
    let attested_name = r.tpm2b("attested.name", MAX_NAME)?.to_vec();
    let attested_qualified_name = r.tpm2b("attested.qualifiedName", MAX_NAME)?.to_vec();
    r.finish()?;
    Ok(CertInfo {
        magic,
        attest_type,
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        attested_name,
        attested_qualified_name,
    })
}

/// The public key in a TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmKey {
    Rsa {
        key_bits: u16,
        /// 0 means the default 2^16 + 1 (TPM 2.0 Part 2 §12.2.3.5).
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        curve: u16,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// The fields of TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4) used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubArea {
    pub name_alg: u16,
    pub object_attributes: u32,
    pub auth_policy: Vec<u8>,
    pub key: TpmKey,
}

/// Parses `pubArea` (RSA and ECC keys; TPM 2.0 Part 2 §12.2.3, §12.2.4).
pub fn parse_pub_area(buf: &[u8]) -> Result<PubArea, AttestError> {
    let mut r = Reader::new(buf, Rule::TpmPubAreaParse, "pubArea");
    let key_type = r.u16("type")?;
    let name_alg = r.u16("nameAlg")?;
    let object_attributes = r.u32("objectAttributes")?;
    let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
    // TPMT_SYM_DEF_OBJECT (§11.1.7): algorithm, then keyBits and mode unless TPM_ALG_NULL.
    let sym = r.u16("parameters.symmetric.algorithm")?;
    if sym != TPM_ALG_NULL {
        r.u16("parameters.symmetric.keyBits")?;
        r.u16("parameters.symmetric.mode")?;
    }
    let key = match key_type {
        TPM_ALG_RSA => {
            // TPMT_RSA_SCHEME (§11.2.4.2): a hashAlg follows unless NULL or RSAES.
            let scheme = r.u16("parameters.scheme.scheme")?;
            if scheme != TPM_ALG_NULL && scheme != TPM_ALG_RSAES {
                r.u16("parameters.scheme.details.hashAlg")?;
            }
            let key_bits = r.u16("parameters.keyBits")?;
            let exponent = r.u32("parameters.exponent")?;
            let modulus = r.tpm2b("unique.rsa", MAX_RSA)?.to_vec();
            if modulus.len() * 8 != usize::from(key_bits) {
                return r.fail(
                    "unique.rsa",
                    &format!(
                        "is {} bits but parameters.keyBits says {key_bits}",
                        modulus.len() * 8
                    ),
                );
            }
            TpmKey::Rsa {
                key_bits,
                exponent,
                modulus,
            }
        }
        TPM_ALG_ECC => {
            // TPMT_ECC_SCHEME (§11.2.5.6): ECDAA details are hashAlg + count, others hashAlg.
            let scheme = r.u16("parameters.scheme.scheme")?;
            if scheme != TPM_ALG_NULL {
                r.u16("parameters.scheme.details.hashAlg")?;
                if scheme == TPM_ALG_ECDAA {
                    r.u16("parameters.scheme.details.count")?;
                }
            }
            let curve = r.u16("parameters.curveID")?;
            // TPMT_KDF_SCHEME (§11.2.3.3).
            let kdf = r.u16("parameters.kdf.scheme")?;
            if kdf != TPM_ALG_NULL {
                r.u16("parameters.kdf.details.hashAlg")?;
            }
            let x = r.tpm2b("unique.ecc.x", MAX_ECC_PARAM)?.to_vec();
            let y = r.tpm2b("unique.ecc.y", MAX_ECC_PARAM)?.to_vec();
            TpmKey::Ecc { curve, x, y }
        }
        other => {
            return r.fail(
                "type",
                &format!("is {other:#06x}; only TPM_ALG_RSA and TPM_ALG_ECC keys are accepted"),
            )
        }
    };
    r.finish()?;
    Ok(PubArea {
        name_alg,
        object_attributes,
        auth_policy,
        key,
    })
}

impl PubArea {
    /// The key as SubjectPublicKeyInfo DER, after the strength rule (RSA ≥ 2048, P-256/P-384).
    pub fn spki(&self) -> Result<Vec<u8>, AttestError> {
        match &self.key {
            TpmKey::Rsa {
                key_bits,
                exponent,
                modulus,
            } => {
                if *key_bits < 2048 {
                    return err(
                        Rule::TpmKeyStrength,
                        format!("tpm: attested RSA key has {key_bits} bits, fewer than 2048"),
                    );
                }
                let e = if *exponent == 0 { 65537 } else { *exponent };
                Ok(der::rsa_spki(modulus, &e.to_be_bytes()))
            }
            TpmKey::Ecc { curve, x, y } => {
                let (oid, len) = match *curve {
                    TPM_ECC_NIST_P256 => (der::OID_P256, 32),
                    TPM_ECC_NIST_P384 => (der::OID_P384, 48),
                    other => {
                        return err(
                            Rule::TpmKeyStrength,
                            format!("tpm: attested ECC key is on curve {other:#06x}; only NIST P-256 and P-384 are accepted"),
                        )
                    }
                };
                if x.len() > len || y.len() > len {
                    return err(
                        Rule::TpmPubAreaParse,
                        format!("tpm: pubArea.unique.ecc coordinates are longer than {len} bytes"),
                    );
                }
                let mut point = vec![0x04];
                point.extend(std::iter::repeat_n(0, len - x.len()));
                point.extend_from_slice(x);
                point.extend(std::iter::repeat_n(0, len - y.len()));
                point.extend_from_slice(y);
                Ok(der::ec_spki(oid, &point))
            }
        }
    }
}

/// The TCG SAN directoryName attributes of an AK certificate (TCG EK Credential Profile
/// §3.2.9; WebAuthn §8.3.1): (manufacturer, model, version).
fn ak_tpm_identity(cert: &X509Certificate<'_>) -> Result<(String, String, String), AttestError> {
    let (mut manufacturer, mut model, mut version) = (None, None, None);
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            let GeneralName::DirectoryName(dn) = name else {
                continue;
            };
            // One multi-valued RDN (Nuvoton) or three RDNs (Intel, ST): both are seen.
            for attr in dn.iter_attributes() {
                let slot = match attr.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => &mut manufacturer,
                    OID_TPM_MODEL => &mut model,
                    OID_TPM_VERSION => &mut version,
                    _ => continue,
                };
                let value = attr.as_str().map_err(|_| {
                    AttestError::new(
                        Rule::TpmAkCertSan,
                        "tpm: AK certificate SAN TPM attribute is not a string (TCG EK Credential Profile §3.2.9)",
                    )
                })?;
                *slot = Some(value.to_owned());
            }
        }
    }
    match (manufacturer, model, version) {
        (Some(a), Some(b), Some(c)) => Ok((a, b, c)),
        _ => err(
            Rule::TpmAkCertSan,
            "tpm: AK certificate SAN lacks the TPM manufacturer, model and version directoryName (WebAuthn §8.3.1; TCG EK Credential Profile §3.2.9)",
        ),
    }
}

/// The AK certificate requirements of WebAuthn §8.3.1.
fn check_ak_profile(cert: &X509Certificate<'_>) -> Result<(String, String, String), AttestError> {
    if cert.version().0 != 2 {
        return err(
            Rule::TpmAkCertVersion,
            "tpm: AK certificate is not X.509 version 3 (WebAuthn §8.3.1)",
        );
    }
    if cert.subject().iter_attributes().next().is_some() {
        return err(
            Rule::TpmAkCertSubject,
            "tpm: AK certificate subject is not empty (WebAuthn §8.3.1)",
        );
    }
    let tpm = ak_tpm_identity(cert)?;
    let eku = cert.extended_key_usage().map_err(|e| {
        AttestError::new(
            Rule::TpmAkCertEku,
            format!("tpm: AK certificate EKU is malformed: {e}"),
        )
    })?;
    let has_aik = eku.is_some_and(|e| {
        e.value
            .other
            .iter()
            .any(|o| o.to_id_string() == OID_TCG_KP_AIK_CERTIFICATE)
    });
    if !has_aik {
        return err(
            Rule::TpmAkCertEku,
            "tpm: AK certificate extendedKeyUsage lacks tcg-kp-AIKCertificate 2.23.133.8.3 (WebAuthn §8.3.1)",
        );
    }
    let bc = cert.basic_constraints().map_err(|e| {
        AttestError::new(
            Rule::TpmAkCertCa,
            format!("tpm: AK certificate basicConstraints is malformed: {e}"),
        )
    })?;
    if bc.is_some_and(|b| b.value.ca) {
        return err(
            Rule::TpmAkCertCa,
            "tpm: AK certificate has basicConstraints cA true; it must be false (WebAuthn §8.3.1)",
        );
    }
    Ok(tpm)
}

/// The signature of `certInfo` in either of its two encodings: a TPMT_SIGNATURE
/// (TPM 2.0 Part 2 §11.3.4) as TPM2_Certify returns it, or the raw signature WebAuthn
/// clients send (RSA: the signature octets; ECDSA: DER Ecdsa-Sig-Value).
enum SigBytes {
    /// Verify with the `_ASN1` (DER) or plain RSA algorithm.
    Raw(Vec<u8>),
    /// ECDSA r || s, each left-padded to the field size: verify with `_FIXED`.
    EcdsaFixed(Vec<u8>),
}

fn decode_sig(
    sig: &[u8],
    scheme: Scheme,
    hash: HashAlg,
    ak: KeyKind,
) -> Result<SigBytes, AttestError> {
    let bad = |why: &str| {
        AttestError::new(
            Rule::TpmSignature,
            format!("tpm: sig is not a valid TPMT_SIGNATURE: {why} (TPM 2.0 Part 2 §11.3.4)"),
        )
    };
    match (scheme, ak) {
        (Scheme::Pkcs1 | Scheme::Pss, KeyKind::Rsa { bits }) => {
            if sig.len() == bits.div_ceil(8) {
                return Ok(SigBytes::Raw(sig.to_vec()));
            }
            let mut r = Reader::new(sig, Rule::TpmSignature, "sig");
            let alg = r.u16("sigAlg")?;
            let want = if scheme == Scheme::Pkcs1 {
                TPM_ALG_RSASSA
            } else {
                TPM_ALG_RSAPSS
            };
            if alg != want {
                return Err(bad(&format!(
                    "sigAlg {alg:#06x} does not match attStmt.alg"
                )));
            }
            if r.u16("hash")? != hash.tpm_id() {
                return Err(bad("hash does not match attStmt.alg"));
            }
            let s = r.tpm2b("sig", MAX_RSA)?.to_vec();
            r.finish()?;
            Ok(SigBytes::Raw(s))
        }
        (Scheme::Ecdsa, KeyKind::P256 | KeyKind::P384) => {
            if sig.first() == Some(&0x30) {
                return Ok(SigBytes::Raw(sig.to_vec()));
            }
            let len = if ak == KeyKind::P256 { 32 } else { 48 };
            let mut r = Reader::new(sig, Rule::TpmSignature, "sig");
            if r.u16("sigAlg")? != TPM_ALG_ECDSA {
                return Err(bad("sigAlg is not TPM_ALG_ECDSA"));
            }
            if r.u16("hash")? != hash.tpm_id() {
                return Err(bad("hash does not match attStmt.alg"));
            }
            let sr = r.tpm2b("signatureR", MAX_ECC_PARAM)?;
            let ss = r.tpm2b("signatureS", MAX_ECC_PARAM)?;
            r.finish()?;
            if sr.len() > len || ss.len() > len {
                return Err(bad("r or s longer than the curve's field"));
            }
            let mut fixed = vec![0u8; 2 * len];
            fixed[len - sr.len()..len].copy_from_slice(sr);
            fixed[2 * len - ss.len()..].copy_from_slice(ss);
            Ok(SigBytes::EcdsaFixed(fixed))
        }
        _ => err(
            Rule::TpmAlgorithm,
            format!("tpm: attStmt.alg does not fit the AK's key ({ak:?}) (WebAuthn §8.3)"),
        ),
    }
}

fn ring_alg(
    scheme: Scheme,
    hash: HashAlg,
    ak: KeyKind,
    fixed: bool,
) -> Option<&'static dyn VerificationAlgorithm> {
    use signature::*;
    Some(match (scheme, hash, ak, fixed) {
        (Scheme::Pkcs1, HashAlg::Sha1, KeyKind::Rsa { .. }, false) => {
            &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (Scheme::Pkcs1, HashAlg::Sha256, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA256,
        (Scheme::Pkcs1, HashAlg::Sha384, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA384,
        (Scheme::Pkcs1, HashAlg::Sha512, KeyKind::Rsa { .. }, false) => &RSA_PKCS1_2048_8192_SHA512,
        (Scheme::Pss, HashAlg::Sha256, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA256,
        (Scheme::Pss, HashAlg::Sha384, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA384,
        (Scheme::Pss, HashAlg::Sha512, KeyKind::Rsa { .. }, false) => &RSA_PSS_2048_8192_SHA512,
        (Scheme::Ecdsa, HashAlg::Sha256, KeyKind::P256, false) => &ECDSA_P256_SHA256_ASN1,
        (Scheme::Ecdsa, HashAlg::Sha256, KeyKind::P256, true) => &ECDSA_P256_SHA256_FIXED,
        (Scheme::Ecdsa, HashAlg::Sha384, KeyKind::P384, false) => &ECDSA_P384_SHA384_ASN1,
        (Scheme::Ecdsa, HashAlg::Sha384, KeyKind::P384, true) => &ECDSA_P384_SHA384_FIXED,
        _ => return None,
    })
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
        super::check_fmt(att, "tpm")?;
        let stmt = &att.att_stmt;
        // WebAuthn §8.3 verification procedure.
        let ver = stmt.text("tpm", "ver")?;
        if ver != "2.0" {
            return err(
                Rule::TpmVersion,
                format!("tpm: attStmt.ver is {ver:?}, not \"2.0\" (WebAuthn §8.3)"),
            );
        }
        let alg = stmt.int("tpm", "alg")?;
        let Some((scheme, hash, alg_name)) = cose_alg(alg) else {
            return err(
                Rule::TpmAlgorithm,
                format!("tpm: attStmt.alg {alg} is not an accepted COSE algorithm"),
            );
        };
        if hash == HashAlg::Sha1 && !self.allow_sha1 {
            return err(
                Rule::TpmAlgorithm,
                "tpm: attStmt.alg is RS1 (SHA-1) and SHA-1 is not allowed (configure allow_sha1)",
            );
        }
        let sig = stmt.bytes("tpm", "sig")?;
        let cert_info_bytes = stmt.bytes("tpm", "certInfo")?;
        let pub_area_bytes = stmt.bytes("tpm", "pubArea")?;
        let x5c = stmt.x5c("tpm")?;

        // The AK chain and certificate profile (WebAuthn §8.3: "Verify that aikCert meets the
        // requirements in § 8.3.1").
        let policy = ChainPolicy {
            allow_sha1: self.allow_sha1,
            ..ChainPolicy::default()
        };
        let path =
            chain::verify_chain("tpm", &x5c, &self.intermediates, &self.roots, now, &policy)?;
        let ak = chain::parse_certificate(x5c[0], "tpm: x5c[0]")?;
        let (manufacturer, model, tpm_version) = check_ak_profile(&ak)?;
        let ak_key = ak.public_key();
        let Some(ak_kind) = chain::key_kind(ak_key) else {
            return err(
                Rule::TpmAlgorithm,
                "tpm: the AK certificate's key type is not supported",
            );
        };

        let cert_info = parse_cert_info(cert_info_bytes)?;
        let pub_area = parse_pub_area(pub_area_bytes)?;

        // The attested key must be a TPM-resident signing key that never left the TPM and
        // is not restricted (issue 4; TPM 2.0 Part 2 §8.3.3, TPMA_OBJECT attribute descriptions).
        let attrs = pub_area.object_attributes;
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
        let spki = pub_area.spki()?;

        // "Verify the sig is a valid signature over certInfo using the attestation public
        // key in aikCert with the algorithm specified in alg."
        let decoded = decode_sig(sig, scheme, hash, ak_kind)?;
        let (bytes, fixed) = match &decoded {
            SigBytes::Raw(b) => (b, false),
            SigBytes::EcdsaFixed(b) => (b, true),
        };
        let Some(ring_alg) = ring_alg(scheme, hash, ak_kind, fixed) else {
            return err(
                Rule::TpmAlgorithm,
                format!("tpm: attStmt.alg {alg_name} is not supported with an AK key {ak_kind:?}"),
            );
        };
        if !chain::verify_with(ak_key, ring_alg, cert_info_bytes, bytes) {
            return err(
                Rule::TpmSignature,
                format!("tpm: sig does not verify over certInfo under the AK key with {alg_name} (WebAuthn §8.3)"),
            );
        }

        // "Verify that extraData is set to the hash of attToBeSigned using the hash algorithm
        // employed in alg." For ACME, attToBeSigned is the key authorization.
        if cert_info.extra_data != hash.digest(key_authorization) {
            return err(
                Rule::TpmExtraData,
                format!("tpm: certInfo.extraData is not the {hash:?} hash of the key authorization (WebAuthn §8.3)"),
            );
        }

        // "Verify that attested contains a TPMS_CERTIFY_INFO structure ... whose name field
        // contains a valid Name for pubArea" (TPM 2.0 Part 1 §16: Name = nameAlg || H(pubArea)).
        let Some(name_hash) = HashAlg::from_tpm(pub_area.name_alg) else {
            return err(
                Rule::TpmName,
                format!(
                    "tpm: pubArea.nameAlg {:#06x} is not a supported hash",
                    pub_area.name_alg
                ),
            );
        };
        if name_hash == HashAlg::Sha1 && !self.allow_sha1 {
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

        let identifiers = super::san_device_identifiers(&ak, "tpm AK certificate SAN")?;
        let mut details = Details {
            platform: "TPM 2.0".into(),
            manufacturer: Some(manufacturer),
            model: Some(model),
            firmware_version: Some(format!("{:#018x}", cert_info.firmware_version)),
            ..Details::default()
        };
        details.extra.insert("tpm.version".into(), tpm_version);
        details.extra.insert("tpm.alg".into(), alg_name.into());
        details
            .extra
            .insert("tpm.objectAttributes".into(), format!("{attrs:#010x}"));
        Ok(Attested {
            format: "tpm",
            identifiers,
            public_key_spki: spki,
            chain: path,
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpm2b(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn cert_info(magic: u32, ty: u16, extra: &[u8], name: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        v.extend(ty.to_be_bytes());
        v.extend(tpm2b(&[0x00, 0x0b, 1, 2]));
        v.extend(tpm2b(extra));
        v.extend(42u64.to_be_bytes());
        v.extend(1u32.to_be_bytes());
        v.extend(2u32.to_be_bytes());
        v.push(1);
        v.extend(7u64.to_be_bytes());
        v.extend(tpm2b(name));
        v.extend(tpm2b(&[]));
        v
    }

    #[test]
    fn attest_tpm_cert_info_parse_and_rules() {
        let good = cert_info(
            TPM_GENERATED_VALUE,
            TPM_ST_ATTEST_CERTIFY,
            &[9; 32],
            &[0, 0x0b, 5],
        );
        let ci = parse_cert_info(&good).unwrap();
        assert_eq!(ci.extra_data, vec![9; 32]);
        assert_eq!(ci.attested_name, vec![0, 0x0b, 5]);
        assert_eq!(
            (ci.clock, ci.reset_count, ci.restart_count, ci.safe),
            (42, 1, 2, 1)
        );
        assert_eq!(ci.firmware_version, 7);
        let bad_magic = cert_info(0xff544348, TPM_ST_ATTEST_CERTIFY, &[], &[]);
        assert_eq!(
            parse_cert_info(&bad_magic).unwrap_err().rule,
            Rule::TpmMagic
        );
        let quote = cert_info(TPM_GENERATED_VALUE, 0x8018, &[], &[]);
        let e = parse_cert_info(&quote).unwrap_err();
        assert_eq!(e.rule, Rule::TpmType);
        assert!(e.detail.contains("0x8018"), "{e}");
        // Every truncation is a parse error, never a panic.
        for n in 0..good.len() {
            let e = parse_cert_info(&good[..n]).unwrap_err();
            assert_eq!(e.rule, Rule::TpmCertInfoParse, "prefix {n}: {e}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_cert_info(&trailing)
            .unwrap_err()
            .detail
            .contains("trailing"));
        // Lying size: extraData claims 0xffff bytes.
        let mut lying = good.clone();
        let off = 4 + 2 + 2 + 4;
        lying[off] = 0xff;
        lying[off + 1] = 0xff;
        let e = parse_cert_info(&lying).unwrap_err();
        assert_eq!(e.rule, Rule::TpmCertInfoParse);
        assert!(e.detail.contains("extraData size 65535 exceeds"), "{e}");
    }

    fn rsa_pub_area(attrs: u32, bits: u16, modulus_len: usize) -> Vec<u8> {
        let mut v = TPM_ALG_RSA.to_be_bytes().to_vec();
        v.extend(TPM_ALG_SHA256.to_be_bytes());
        v.extend(attrs.to_be_bytes());
        v.extend(tpm2b(&[]));
        v.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
        v.extend(TPM_ALG_RSASSA.to_be_bytes()); // scheme
        v.extend(TPM_ALG_SHA256.to_be_bytes());
        v.extend(bits.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend(tpm2b(&vec![0xc5; modulus_len]));
        v
    }

    #[test]
    fn attest_tpm_pub_area_parse_rsa_and_limits() {
        let good = rsa_pub_area(0x00060472, 2048, 256);
        let pa = parse_pub_area(&good).unwrap();
        assert_eq!(pa.object_attributes, 0x00060472);
        let spki = pa.spki().unwrap();
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der_helper(&spki);
        assert_eq!(parsed, Some(KeyKind::Rsa { bits: 2048 }));
        for n in 0..good.len() {
            assert_eq!(
                parse_pub_area(&good[..n]).unwrap_err().rule,
                Rule::TpmPubAreaParse
            );
        }
        // keyBits that lies about the modulus length.
        let e = parse_pub_area(&rsa_pub_area(0x00060472, 4096, 256)).unwrap_err();
        assert!(e.detail.contains("keyBits says 4096"), "{e}");
        // RSA-1024 parses but fails the strength rule.
        let weak = parse_pub_area(&rsa_pub_area(0x00060472, 1024, 128)).unwrap();
        assert_eq!(weak.spki().unwrap_err().rule, Rule::TpmKeyStrength);
        // Unknown key type (KEYEDHASH).
        let mut keyed = good.clone();
        keyed[1] = 0x08;
        assert!(parse_pub_area(&keyed)
            .unwrap_err()
            .detail
            .contains("only TPM_ALG_RSA"));
    }

    #[test]
    fn attest_tpm_ecc_point_padding() {
        let pa = PubArea {
            name_alg: TPM_ALG_SHA256,
            object_attributes: 0,
            auth_policy: vec![],
            key: TpmKey::Ecc {
                curve: TPM_ECC_NIST_P256,
                x: vec![1; 31],
                y: vec![2; 32],
            },
        };
        let spki = pa.spki().unwrap();
        assert_eq!(&spki[spki.len() - 65..spki.len() - 64], &[0x04]);
        assert_eq!(spki[spki.len() - 64], 0);
        let p521 = PubArea {
            key: TpmKey::Ecc {
                curve: 0x0005,
                x: vec![1; 66],
                y: vec![1; 66],
            },
            ..pa.clone()
        };
        assert_eq!(p521.spki().unwrap_err().rule, Rule::TpmKeyStrength);
        let long = PubArea {
            key: TpmKey::Ecc {
                curve: TPM_ECC_NIST_P256,
                x: vec![1; 33],
                y: vec![1; 32],
            },
            ..pa
        };
        assert_eq!(long.spki().unwrap_err().rule, Rule::TpmPubAreaParse);
    }

    #[test]
    fn attest_tpm_cose_algs() {
        assert_eq!(cose_alg(-65535).map(|a| a.2), Some("RS1"));
        assert_eq!(cose_alg(-7).map(|a| a.1), Some(HashAlg::Sha256));
        assert_eq!(cose_alg(-8), None); // EdDSA: not a TPM algorithm
    }

    trait SpkiKind {
        fn from_der_helper(der: &[u8]) -> ((), Option<KeyKind>);
    }
    impl SpkiKind for x509_parser::x509::SubjectPublicKeyInfo<'_> {
        fn from_der_helper(der: &[u8]) -> ((), Option<KeyKind>) {
            use x509_parser::prelude::FromDer;
            let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).unwrap();
            assert!(rest.is_empty());
            ((), chain::key_kind(&spki))
        }
    }
}
