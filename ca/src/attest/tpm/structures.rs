//! TPM 2.0 structures read from a `tpm` statement (TCG TPM 2.0 Part 2): TPMS_ATTEST
//! (`certInfo`) and TPMT_PUBLIC (`pubArea`), with canonical big-endian marshalling (Part 1 §18).
//!
//! Outside input: every size is bounded by the structure's own maximum before anything is
//! read, every short read names the structure and field, and nothing here panics.

use super::super::{der, err, AttestError, Rule};

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

/// A big-endian reader over a TPM structure (TPM 2.0 Part 1 §18 canonical marshalling) that
/// turns every short read into an error naming the structure and field.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    rule: Rule,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], rule: Rule, what: &'static str) -> Self {
        Self { buf, rule, what }
    }

    pub(super) fn fail<T>(&self, field: &str, why: &str) -> Result<T, AttestError> {
        err(
            self.rule,
            format!("tpm: {}.{field} {why} (TPM 2.0 Part 2)", self.what),
        )
    }

    pub(super) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], AttestError> {
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

    pub(super) fn u16(&mut self, field: &str) -> Result<u16, AttestError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, field: &str) -> Result<u32, AttestError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self, field: &str) -> Result<u64, AttestError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: UINT16 size then that many bytes, with the structure's maximum size.
    pub(super) fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8], AttestError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return self.fail(field, &format!("size {size} exceeds its maximum {max}"));
        }
        self.take(size, field)
    }

    pub(super) fn finish(&self) -> Result<(), AttestError> {
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
pub(super) const MAX_RSA: usize = 512;
pub(super) const MAX_ECC_PARAM: usize = 66;

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
                // keyBits only declares the size: a modulus with leading zero octets is a
                // smaller key under a larger label, so its real size is what is held to the rule.
                let skip = modulus.iter().take_while(|&&b| b == 0).count();
                let significant = modulus.get(skip).map_or(0, |&b| {
                    (modulus.len() - skip) * 8 - b.leading_zeros() as usize
                });
                if significant < 2048 {
                    return err(
                        Rule::TpmKeyStrength,
                        format!(
                            "tpm: attested RSA modulus has {significant} significant bits (keyBits says {key_bits}), fewer than 2048"
                        ),
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

#[cfg(test)]
mod tests {
    use super::super::super::chain::{self, KeyKind};
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
        // A 1024-bit modulus zero-padded to 256 octets under keyBits 2048: its real size counts.
        let mut padded = parse_pub_area(&good).unwrap();
        if let TpmKey::Rsa { modulus, .. } = &mut padded.key {
            modulus[..128].fill(0);
        }
        let e = padded.spki().unwrap_err();
        assert_eq!(e.rule, Rule::TpmKeyStrength);
        assert!(e.detail.contains("1024 significant bits"), "{e}");
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
