//! TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4) as bytes: its Name and its key as X.509
//! SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
//!
//! The agent ships public areas as the TPM marshalled them (the `tpm` statement's `pubArea`,
//! `ak_pub`/`ek_pub` of the enrollment), so this reads the canonical bytes (Part 1 §18) rather
//! than a library's model of them: what is hashed into a Name here is exactly what was sent.

use sha2::{Digest, Sha256};

use super::{Result, TpmError};
use crate::der;

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSAES: u16 = 0x0015;
pub const TPM_ALG_ECDAA: u16 = 0x001a;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

// TPMA_OBJECT bits (Part 2 §8.3.2).
pub const FIXED_TPM: u32 = 1 << 1;
pub const FIXED_PARENT: u32 = 1 << 4;
pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub const USER_WITH_AUTH: u32 = 1 << 6;
pub const RESTRICTED: u32 = 1 << 16;
pub const DECRYPT: u32 = 1 << 17;
pub const SIGN_ENCRYPT: u32 = 1 << 18;

/// The key in a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Rsa { modulus: Vec<u8>, exponent: u32 },
    Ecc { curve: u16, x: Vec<u8>, y: Vec<u8> },
}

/// The parts of a TPMT_PUBLIC the agent reasons about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    /// The marshalled TPMT_PUBLIC.
    pub bytes: Vec<u8>,
    pub name_alg: u16,
    pub attributes: u32,
    pub key: PublicKey,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(TpmError::Invalid(format!(
                "TPMT_PUBLIC.{field} is truncated (TPM 2.0 Part 2 §12.2.4)"
            )));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self, field: &str) -> Result<&'a [u8]> {
        let n = usize::from(self.u16(field)?);
        self.take(n, field)
    }
}

impl PublicArea {
    /// Parses a marshalled TPMT_PUBLIC of an RSA or ECC key.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        let kind = r.u16("type")?;
        let name_alg = r.u16("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        r.tpm2b("authPolicy")?;
        // TPMT_SYM_DEF_OBJECT (§11.1.7).
        if r.u16("parameters.symmetric.algorithm")? != TPM_ALG_NULL {
            r.u16("parameters.symmetric.keyBits")?;
            r.u16("parameters.symmetric.mode")?;
        }
        let key = match kind {
            TPM_ALG_RSA => {
                // TPMT_RSA_SCHEME (§11.2.4.2).
                let scheme = r.u16("parameters.scheme")?;
                if scheme != TPM_ALG_NULL && scheme != TPM_ALG_RSAES {
                    r.u16("parameters.scheme.hashAlg")?;
                }
                r.u16("parameters.keyBits")?;
                let exponent = r.u32("parameters.exponent")?;
                let modulus = r.tpm2b("unique.rsa")?.to_vec();
                PublicKey::Rsa { modulus, exponent }
            }
            TPM_ALG_ECC => {
                // TPMT_ECC_SCHEME (§11.2.5.6), TPMT_KDF_SCHEME (§11.2.3.3).
                let scheme = r.u16("parameters.scheme")?;
                if scheme != TPM_ALG_NULL {
                    r.u16("parameters.scheme.hashAlg")?;
                    if scheme == TPM_ALG_ECDAA {
                        r.u16("parameters.scheme.count")?;
                    }
                }
                let curve = r.u16("parameters.curveID")?;
                if r.u16("parameters.kdf")? != TPM_ALG_NULL {
                    r.u16("parameters.kdf.hashAlg")?;
                }
                let x = r.tpm2b("unique.ecc.x")?.to_vec();
                let y = r.tpm2b("unique.ecc.y")?.to_vec();
                PublicKey::Ecc { curve, x, y }
            }
            other => {
                return Err(TpmError::Invalid(format!(
                    "TPMT_PUBLIC.type {other:#06x} is not RSA or ECC"
                )))
            }
        };
        if !r.0.is_empty() {
            return Err(TpmError::Invalid(format!(
                "TPMT_PUBLIC has {} trailing bytes",
                r.0.len()
            )));
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            name_alg,
            attributes,
            key,
        })
    }

    /// The object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (TPM 2.0 Part 1 §16). The agent
    /// creates every object with nameAlg SHA-256.
    pub fn name(&self) -> Result<Vec<u8>> {
        if self.name_alg != TPM_ALG_SHA256 {
            return Err(TpmError::Invalid(format!(
                "nameAlg {:#06x} is not SHA-256",
                self.name_alg
            )));
        }
        let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        name.extend(Sha256::digest(&self.bytes));
        Ok(name)
    }

    /// The key as SubjectPublicKeyInfo DER.
    pub fn spki(&self) -> Result<Vec<u8>> {
        match &self.key {
            PublicKey::Rsa { modulus, exponent } => {
                // 0 means the default exponent 2^16 + 1 (Part 2 §12.2.3.5).
                let e = if *exponent == 0 { 65537 } else { *exponent };
                Ok(der::rsa_spki(modulus, &e.to_be_bytes()))
            }
            PublicKey::Ecc { curve, x, y } => {
                let (curve_oid, len) = match *curve {
                    TPM_ECC_NIST_P256 => (der::OID_P256, 32),
                    TPM_ECC_NIST_P384 => (der::OID_P384, 48),
                    other => {
                        return Err(TpmError::Invalid(format!(
                            "ECC curve {other:#06x} is not P-256 or P-384"
                        )))
                    }
                };
                Ok(der::ec_spki(curve_oid, &uncompressed_point(x, y, len)?))
            }
        }
    }

    /// The uncompressed SEC1 point of an ECC key (0x04 || X || Y, each padded to the field).
    pub fn ec_point(&self) -> Result<Vec<u8>> {
        match &self.key {
            PublicKey::Ecc { x, y, curve } => {
                let len = if *curve == TPM_ECC_NIST_P384 { 48 } else { 32 };
                uncompressed_point(x, y, len)
            }
            PublicKey::Rsa { .. } => Err(TpmError::Invalid("not an ECC key".into())),
        }
    }

    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

fn uncompressed_point(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>> {
    if x.len() > len || y.len() > len {
        return Err(TpmError::Invalid(format!(
            "ECC point coordinates longer than {len} bytes"
        )));
    }
    let mut p = vec![0x04];
    p.extend(std::iter::repeat_n(0, len - x.len()));
    p.extend_from_slice(x);
    p.extend(std::iter::repeat_n(0, len - y.len()));
    p.extend_from_slice(y);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpm2b(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn ecc_public(x: &[u8], y: &[u8]) -> Vec<u8> {
        let mut v = TPM_ALG_ECC.to_be_bytes().to_vec();
        v.extend(TPM_ALG_SHA256.to_be_bytes());
        v.extend((FIXED_TPM | SIGN_ENCRYPT).to_be_bytes());
        v.extend(tpm2b(&[]));
        v.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
        v.extend(0x0018u16.to_be_bytes()); // ECDSA
        v.extend(TPM_ALG_SHA256.to_be_bytes());
        v.extend(TPM_ECC_NIST_P256.to_be_bytes());
        v.extend(TPM_ALG_NULL.to_be_bytes()); // kdf
        v.extend(tpm2b(x));
        v.extend(tpm2b(y));
        v
    }

    #[test]
    fn tpm_public_ecc_name_spki_and_truncation() {
        let bytes = ecc_public(&[1; 31], &[2; 32]);
        let p = PublicArea::parse(&bytes).unwrap();
        assert!(p.has(FIXED_TPM | SIGN_ENCRYPT));
        assert!(!p.has(RESTRICTED));
        let name = p.name().unwrap();
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(&name[2..], Sha256::digest(&bytes).as_slice());
        let point = p.ec_point().unwrap();
        assert_eq!(point.len(), 65);
        assert_eq!(point[1], 0, "x left-padded");
        let spki = p.spki().unwrap();
        assert!(spki.ends_with(&point));
        for n in 0..bytes.len() {
            assert!(PublicArea::parse(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(PublicArea::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
    }
}
