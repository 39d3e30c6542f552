//! The endorsement key (EK): where its trust comes from, and the parameters MakeCredential
//! encrypts to.
//!
//! An EK is trusted in one of two ways:
//! - its **EK certificate** chains to a configured TPM manufacturer root (the vendor-tolerant
//!   walker of [`crate::attest::chain`]: vendor EK PKIs break webpki's rules), is not a CA
//!   certificate, and names the TPM in its SAN (TCG EK Credential Profile §3.2.9);
//! - or its **public area** (TPMT_PUBLIC) is the one the inventory pins for the device (checked
//!   by the caller against the store; here only its shape).
//!
//! When only a certificate is sent, the EK's nameAlg and symmetric algorithm (which
//! MakeCredential needs, TPM 2.0 Part 1 §24.4) are those of the TCG default EK template for
//! the key (TCG EK Credential Profile, Annex B: RSA 2048 and P-256 use SHA-256 + AES-128-CFB;
//! RSA 3072 and P-384 use SHA-384 + AES-256-CFB). An agent whose EK follows another template
//! also sends `ek_pub`, which must carry the same key.
//!
//! The EK's identity, for pins and bindings, is the SHA-256 of its public key as a canonical
//! SubjectPublicKeyInfo (rsaEncryption or id-ecPublicKey/namedCurve), so that an operator can
//! compute it from the certificate: `openssl x509 -pubkey -noout -in ek.pem | openssl pkey
//! -pubin -outform der | sha256sum`.

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::error::{refuse, EnrollError, Rule};
use super::NameAlg;
use crate::attest::chain::{self, ChainPolicy};
use crate::attest::der;
use crate::attest::tpm::{self as tpm, TpmKey};

const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";
/// rsaEncryption (RFC 3279 §2.3.1) and id-RSAES-OAEP (RFC 4055 §4.1), which the TCG EK
/// Credential Profile (§3.2.7) allows for RSA EKs.
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

// TPMA_OBJECT bits not exported by `attest::tpm` (TPM 2.0 Part 2 §8.3.2).
pub(crate) const TPMA_DECRYPT: u32 = 1 << 17;
pub(crate) const TPMA_ADMIN_WITH_POLICY: u32 = 1 << 7;
// TPM_ALG_ID (TPM 2.0 Part 2 §6.3).
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;

/// The curves an EK may be on (TPM_ECC_CURVE, TPM 2.0 Part 2 §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Bytes of a coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn der_oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => der::OID_P256,
            Curve::P384 => der::OID_P384,
        }
    }
}

/// The EK's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkKey {
    /// Big-endian modulus without leading zeros, and the public exponent.
    Rsa { modulus: Vec<u8>, exponent: u32 },
    /// Affine coordinates, each left-padded to the curve's size.
    Ecc {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// The TPM named by an EK certificate (TCG EK Credential Profile §3.2.9), copied into the AK
/// certificate where the `tpm` verifier requires it (WebAuthn §8.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    pub manufacturer: String,
    pub model: String,
    pub version: String,
}

/// A checked EK, ready for MakeCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ek {
    pub key: EkKey,
    /// The EK's nameAlg: the hash of OAEP, KDFa and KDFe in MakeCredential (Part 1 §24.4).
    pub name_alg: NameAlg,
    /// AES key size of the EK's symmetric definition (128 or 256).
    pub sym_bits: u16,
    /// Canonical SubjectPublicKeyInfo DER of the key.
    pub spki: Vec<u8>,
    /// SHA-256 of `spki`, lowercase hex: the key of pins and bindings.
    pub hash: String,
    /// From the EK certificate; `None` for a bare pinned EK public area.
    pub identity: Option<TpmIdentity>,
    /// True when a certificate chained to a manufacturer root; false for a bare public area,
    /// which only a pin can make acceptable.
    pub certified: bool,
}

/// Configuration of EK trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EkTrust {
    /// TPM manufacturer roots (DER). Empty: no EK certificate is accepted, only pinned EKs.
    pub roots: Vec<Vec<u8>>,
    /// Accept sha1WithRSAEncryption on EK certificate chains (older vendor PKIs).
    pub allow_sha1: bool,
}

impl EkKey {
    fn spki(&self) -> Vec<u8> {
        match self {
            EkKey::Rsa { modulus, exponent } => der::rsa_spki(modulus, &exponent.to_be_bytes()),
            EkKey::Ecc { curve, x, y } => {
                let mut point = Vec::with_capacity(1 + 2 * curve.coordinate_len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                der::ec_spki(curve.der_oid(), &point)
            }
        }
    }

    /// The TCG default EK templates (EK Credential Profile, Annex B): nameAlg and AES key
    /// size by key.
    fn default_template(&self) -> (NameAlg, u16) {
        match self {
            EkKey::Rsa { modulus, .. } if modulus.len() * 8 <= 2048 => (NameAlg::Sha256, 128),
            EkKey::Rsa { .. } => (NameAlg::Sha384, 256),
            EkKey::Ecc {
                curve: Curve::P256, ..
            } => (NameAlg::Sha256, 128),
            EkKey::Ecc {
                curve: Curve::P384, ..
            } => (NameAlg::Sha384, 256),
        }
    }
}

fn hash_hex(spki: &[u8]) -> String {
    hex::encode(Sha256::digest(spki))
}

/// The EK from whatever the agent sent: a certificate, a public area, or both (then they must
/// carry the same key and the public area's parameters are used). `intermediates` are the
/// certificates the agent sent besides the EK certificate.
pub fn check(
    ek_cert: Option<&[u8]>,
    intermediates: &[Vec<u8>],
    ek_pub: Option<&[u8]>,
    trust: &EkTrust,
    now: SystemTime,
) -> Result<Ek, EnrollError> {
    let from_pub = ek_pub.map(parse_ek_pub).transpose()?;
    let Some(cert_der) = ek_cert else {
        return match from_pub {
            Some((key, name_alg, sym_bits)) => {
                let spki = key.spki();
                Ok(Ek {
                    hash: hash_hex(&spki),
                    spki,
                    key,
                    name_alg,
                    sym_bits,
                    identity: None,
                    certified: false,
                })
            }
            None => refuse(
                Rule::EkMissing,
                "neither ek_cert nor ek_pub was sent (one names the TPM)",
            ),
        };
    };
    let (key, identity) = check_cert(cert_der, intermediates, trust, now)?;
    let (name_alg, sym_bits) = match from_pub {
        Some((pub_key, name_alg, sym_bits)) => {
            if pub_key != key {
                return refuse(Rule::EkPubMismatch, "ek_pub is not the key of ek_cert");
            }
            (name_alg, sym_bits)
        }
        None => key.default_template(),
    };
    let spki = key.spki();
    Ok(Ek {
        hash: hash_hex(&spki),
        spki,
        key,
        name_alg,
        sym_bits,
        identity: Some(identity),
        certified: true,
    })
}

/// The EK certificate: chain, not a CA, key, TPM identity.
fn check_cert(
    der_bytes: &[u8],
    intermediates: &[Vec<u8>],
    trust: &EkTrust,
    now: SystemTime,
) -> Result<(EkKey, TpmIdentity), EnrollError> {
    let cert = match X509Certificate::from_der(der_bytes) {
        Ok(([], cert)) => cert,
        Ok((rest, _)) => {
            return refuse(
                Rule::EkCertParse,
                format!(
                    "ek_cert has {} bytes after the certificate (RFC 5280 §4.1); trim NV padding on the device",
                    rest.len()
                ),
            )
        }
        Err(e) => {
            return refuse(
                Rule::EkCertParse,
                format!("ek_cert is not a DER X.509 certificate (RFC 5280 §4.1): {e}"),
            )
        }
    };
    // An EK certificate is an end-entity certificate: one saying cA could issue "EK
    // certificates" for software keys (RFC 5280 §4.2.1.9).
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            return refuse(
                Rule::EkCertParse,
                "ek_cert is a CA certificate (basicConstraints cA true; RFC 5280 §4.2.1.9)",
            )
        }
        Ok(_) => {}
        Err(e) => {
            return refuse(
                Rule::EkCertParse,
                format!("ek_cert basicConstraints is malformed: {e}"),
            )
        }
    }
    if trust.roots.is_empty() {
        return refuse(
            Rule::EkCertChain,
            "no TPM manufacturer root is configured ([ca.attestation] ek_roots): only EKs the inventory pins can enrol",
        );
    }
    let mut presented: Vec<&[u8]> = vec![der_bytes];
    presented.extend(intermediates.iter().map(Vec::as_slice));
    let policy = ChainPolicy {
        allow_sha1: trust.allow_sha1,
        ..ChainPolicy::default()
    };
    chain::verify_chain("ek_cert", &presented, &[], &trust.roots, now, &policy).map_err(|e| {
        EnrollError::new(
            Rule::EkCertChain,
            format!(
                "{} (chain rule {:?}; TCG EK Credential Profile §2.2)",
                e.detail, e.rule
            ),
        )
    })?;
    let key = cert_key(&cert)?;
    let identity = tpm_identity(&cert)?;
    Ok((key, identity))
}

/// The EK key of a certificate's SubjectPublicKeyInfo.
fn cert_key(cert: &X509Certificate<'_>) -> Result<EkKey, EnrollError> {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    let bits: &[u8] = &spki.subject_public_key.data;
    match alg.as_str() {
        OID_RSA_ENCRYPTION | OID_RSAES_OAEP => {
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1)
            let parsed = der::read_exact(bits, der::TAG_SEQUENCE).and_then(|seq| {
                let (t1, n, rest) = der::read_tlv(seq)?;
                let e = der::read_exact(rest, der::TAG_INTEGER)?;
                (t1 == der::TAG_INTEGER).then_some((n, e))
            });
            let Some((n, e)) = parsed else {
                return refuse(
                    Rule::EkKey,
                    "ek_cert RSA public key is not an RSAPublicKey (RFC 8017 A.1.1)",
                );
            };
            let modulus: Vec<u8> = n.iter().copied().skip_while(|&b| b == 0).collect();
            let exponent = der::integer_u64(e)
                .and_then(|e| u32::try_from(e).ok())
                .filter(|&e| e >= 3 && e % 2 == 1);
            let Some(exponent) = exponent else {
                return refuse(
                    Rule::EkKey,
                    "ek_cert RSA exponent is not an odd 32-bit integer ≥ 3 (a TPM's RSA exponent is a UINT32, TPM 2.0 Part 2 §12.2.3.5)",
                );
            };
            let key_bits = modulus.len() * 8;
            if !(2048..=4096).contains(&key_bits) {
                return refuse(
                    Rule::EkKey,
                    format!("ek_cert RSA key has about {key_bits} bits; 2048 to 4096 are accepted"),
                );
            }
            Ok(EkKey::Rsa { modulus, exponent })
        }
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let curve = match curve.as_deref() {
                Some(OID_P256) => Curve::P256,
                Some(OID_P384) => Curve::P384,
                other => {
                    return refuse(
                        Rule::EkKey,
                        format!(
                            "ek_cert EC key is on curve {other:?}; P-256 and P-384 are accepted"
                        ),
                    )
                }
            };
            let n = curve.coordinate_len();
            // Uncompressed point (SEC 1 §2.3.3), the form RFC 5480 §2.2 requires support for.
            if bits.len() != 1 + 2 * n || bits[0] != 0x04 {
                return refuse(
                    Rule::EkKey,
                    "ek_cert EC public key is not an uncompressed point (RFC 5480 §2.2)",
                );
            }
            Ok(EkKey::Ecc {
                curve,
                x: bits[1..=n].to_vec(),
                y: bits[1 + n..].to_vec(),
            })
        }
        other => refuse(
            Rule::EkKey,
            format!("ek_cert key algorithm {other} is neither RSA nor EC"),
        ),
    }
}

/// The TPM manufacturer, model and version of the EK certificate's SAN directoryName (TCG EK
/// Credential Profile §3.2.9). Vendors write them as one multi-valued RDN or as three RDNs.
pub fn tpm_identity(cert: &X509Certificate<'_>) -> Result<TpmIdentity, EnrollError> {
    let (mut manufacturer, mut model, mut version) = (None, None, None);
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            let GeneralName::DirectoryName(dn) = name else {
                continue;
            };
            for attr in dn.iter_attributes() {
                let slot = match attr.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => &mut manufacturer,
                    OID_TPM_MODEL => &mut model,
                    OID_TPM_VERSION => &mut version,
                    _ => continue,
                };
                let Ok(value) = attr.as_str() else {
                    return refuse(
                        Rule::EkCertTpmIdentity,
                        "ek_cert SAN TPM attribute is not a string (TCG EK Credential Profile §3.2.9)",
                    );
                };
                *slot = Some(value.to_owned());
            }
        }
    }
    match (manufacturer, model, version) {
        (Some(manufacturer), Some(model), Some(version)) => Ok(TpmIdentity {
            manufacturer,
            model,
            version,
        }),
        _ => refuse(
            Rule::EkCertTpmIdentity,
            "ek_cert SAN lacks the TPM manufacturer, model and version directoryName (TCG EK Credential Profile §3.2.9)",
        ),
    }
}

/// An EK public area (TPMT_PUBLIC): parsed with the attestation parser (every lying size is a
/// specific error there), then held to the EK template's shape.
fn parse_ek_pub(buf: &[u8]) -> Result<(EkKey, NameAlg, u16), EnrollError> {
    let pa = tpm::parse_pub_area(buf)
        .map_err(|e| EnrollError::new(Rule::EkPubParse, format!("ek_pub: {}", e.detail)))?;
    // TPM2_ActivateCredential requires keyHandle to be "an asymmetric, restricted decryption
    // key" (TPM 2.0 Part 3 §12.5.1); every TCG EK template also sets fixedTPM, fixedParent and
    // sensitiveDataOrigin (TCG EK Credential Profile, Annex B): an EK that could leave its TPM
    // proves nothing about where the AK is.
    let attrs = pa.object_attributes;
    for (bit, name, want) in [
        (tpm::TPMA_FIXED_TPM, "fixedTPM", true),
        (tpm::TPMA_FIXED_PARENT, "fixedParent", true),
        (tpm::TPMA_SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin", true),
        (tpm::TPMA_RESTRICTED, "restricted", true),
        (TPMA_DECRYPT, "decrypt", true),
        (tpm::TPMA_SIGN_ENCRYPT, "sign", false),
    ] {
        if (attrs & bit != 0) != want {
            return refuse(
                Rule::EkPubAttributes,
                format!(
                    "ek_pub objectAttributes {attrs:#010x}: {name} must be {} for an EK (TPM 2.0 Part 2 §8.3.3.1; Part 3 §12.5.1)",
                    if want { "set" } else { "clear" }
                ),
            );
        }
    }
    let Some(name_alg) = NameAlg::from_tpm(pa.name_alg) else {
        return refuse(
            Rule::EkPubAttributes,
            format!(
                "ek_pub nameAlg {:#06x} is not SHA-256, SHA-384 or SHA-512",
                pa.name_alg
            ),
        );
    };
    let sym_bits = symmetric_aes_cfb_bits(buf)?;
    let key = match pa.key {
        TpmKey::Rsa {
            key_bits,
            exponent,
            modulus,
        } => {
            if !(2048..=4096).contains(&key_bits) {
                return refuse(
                    Rule::EkKey,
                    format!("ek_pub RSA key has {key_bits} bits; 2048 to 4096 are accepted"),
                );
            }
            // 0 means the default exponent 2^16 + 1 (TPM 2.0 Part 2 §12.2.3.5).
            let exponent = if exponent == 0 { 65537 } else { exponent };
            if exponent < 3 || exponent % 2 == 0 {
                return refuse(Rule::EkKey, "ek_pub RSA exponent is not odd and ≥ 3");
            }
            EkKey::Rsa {
                modulus: modulus.into_iter().skip_while(|&b| b == 0).collect(),
                exponent,
            }
        }
        TpmKey::Ecc { curve, x, y } => {
            let curve = match curve {
                tpm::TPM_ECC_NIST_P256 => Curve::P256,
                tpm::TPM_ECC_NIST_P384 => Curve::P384,
                other => {
                    return refuse(
                        Rule::EkKey,
                        format!("ek_pub ECC curve {other:#06x}; P-256 and P-384 are accepted"),
                    )
                }
            };
            let n = curve.coordinate_len();
            if x.len() > n || y.len() > n {
                return refuse(
                    Rule::EkPubParse,
                    format!("ek_pub unique.ecc coordinates are longer than {n} bytes"),
                );
            }
            EkKey::Ecc {
                curve,
                x: left_pad(&x, n),
                y: left_pad(&y, n),
            }
        }
    };
    Ok((key, name_alg, sym_bits))
}

pub(crate) fn left_pad(v: &[u8], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

/// The symmetric definition of a storage key's TPMT_PUBLIC (parameters.symmetric,
/// TPMT_SYM_DEF_OBJECT, TPM 2.0 Part 2 §11.1.7): MakeCredential encrypts the credential with it
/// (Part 1 §24.4), so only AES-128/256 in CFB mode are accepted. `buf` has already parsed
/// as a TPMT_PUBLIC; every read is still bounds-checked.
fn symmetric_aes_cfb_bits(buf: &[u8]) -> Result<u16, EnrollError> {
    let u16_at = |off: usize| -> Option<u16> {
        let b = buf.get(off..off + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    // type(2) nameAlg(2) objectAttributes(4) authPolicy(TPM2B) then the symmetric definition.
    let parsed = u16_at(8).and_then(|policy_len| {
        let at = 10 + usize::from(policy_len);
        Some((u16_at(at)?, u16_at(at + 2), u16_at(at + 4)))
    });
    match parsed {
        Some((TPM_ALG_AES, Some(bits @ (128 | 256)), Some(TPM_ALG_CFB))) => Ok(bits),
        Some((alg, bits, mode)) => refuse(
            Rule::EkPubAttributes,
            format!(
                "ek_pub symmetric is {alg:#06x}/{bits:?}/{mode:?}; an EK's is AES-128 or AES-256 in CFB mode (TCG EK Credential Profile, Annex B; TPM 2.0 Part 1 §24.4)"
            ),
        ),
        None => refuse(Rule::EkPubParse, "ek_pub is truncated before its symmetric definition"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TPMT_PUBLIC of the TCG default RSA 2048 EK template (L-1) around `modulus`.
    pub(crate) fn rsa_ek_pub(attrs: u32, sym: &[u8], modulus: &[u8]) -> Vec<u8> {
        let mut v = tpm::TPM_ALG_RSA.to_be_bytes().to_vec();
        v.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
        v.extend(attrs.to_be_bytes());
        v.extend(32u16.to_be_bytes());
        v.extend([0x83; 32]); // the EK policy digest
        v.extend_from_slice(sym);
        v.extend(tpm::TPM_ALG_NULL.to_be_bytes()); // scheme
        v.extend(((modulus.len() * 8) as u16).to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend((modulus.len() as u16).to_be_bytes());
        v.extend_from_slice(modulus);
        v
    }

    pub(crate) const EK_ATTRS: u32 = 0x000300b2;
    pub(crate) const AES128_CFB: [u8; 6] = [0x00, 0x06, 0x00, 0x80, 0x00, 0x43];

    #[test]
    fn enroll_ek_pub_shape() {
        let m = vec![0xc1; 256];
        let (key, alg, bits) = parse_ek_pub(&rsa_ek_pub(EK_ATTRS, &AES128_CFB, &m)).unwrap();
        assert_eq!((alg, bits), (NameAlg::Sha256, 128));
        assert_eq!(
            key,
            EkKey::Rsa {
                modulus: m.clone(),
                exponent: 65537
            }
        );
        // A signing key is no EK.
        let e = parse_ek_pub(&rsa_ek_pub(0x00050072, &AES128_CFB, &m)).unwrap_err();
        assert_eq!(e.rule, Rule::EkPubAttributes);
        // XOR instead of AES-CFB.
        let e = parse_ek_pub(&rsa_ek_pub(
            EK_ATTRS,
            &[0x00, 0x0a, 0x00, 0x0b, 0x00, 0x10],
            &m,
        ))
        .unwrap_err();
        assert_eq!(e.rule, Rule::EkPubAttributes, "{e}");
        // AES-192.
        let e = parse_ek_pub(&rsa_ek_pub(EK_ATTRS, &[0, 6, 0, 192, 0, 0x43], &m)).unwrap_err();
        assert_eq!(e.rule, Rule::EkPubAttributes);
        // Every truncation is a parse error, never a panic.
        let good = rsa_ek_pub(EK_ATTRS, &AES128_CFB, &m);
        for n in 0..good.len() {
            assert_eq!(parse_ek_pub(&good[..n]).unwrap_err().rule, Rule::EkPubParse);
        }
        // A lying authPolicy size.
        let mut lying = good.clone();
        lying[8] = 0xff;
        let e = parse_ek_pub(&lying).unwrap_err();
        assert_eq!(e.rule, Rule::EkPubParse);
        assert!(e.detail.contains("authPolicy"), "{e}");
    }

    #[test]
    fn enroll_ek_default_templates() {
        let rsa = |bits: usize| EkKey::Rsa {
            modulus: vec![0xff; bits / 8],
            exponent: 65537,
        };
        assert_eq!(rsa(2048).default_template(), (NameAlg::Sha256, 128));
        assert_eq!(rsa(3072).default_template(), (NameAlg::Sha384, 256));
        let p384 = EkKey::Ecc {
            curve: Curve::P384,
            x: vec![1; 48],
            y: vec![2; 48],
        };
        assert_eq!(p384.default_template(), (NameAlg::Sha384, 256));
    }

    #[test]
    fn enroll_ek_missing_and_no_roots() {
        let t = EkTrust::default();
        let now = SystemTime::now();
        assert_eq!(
            check(None, &[], None, &t, now).unwrap_err().rule,
            Rule::EkMissing
        );
        assert_eq!(
            check(Some(b"\x30\x00"), &[], None, &t, now)
                .unwrap_err()
                .rule,
            Rule::EkCertParse
        );
    }
}
