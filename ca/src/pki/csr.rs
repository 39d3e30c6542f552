//! Certificate signing requests (PKCS#10, RFC 2986) and subject public keys.
//!
//! A CSR is checked for what this module can know alone: it parses with no trailing data,
//! its self-signature verifies (proof of possession), its key is of an accepted type and size,
//! and its names are of types we understand. Whether the names are the order's and whether the
//! key differs from the account key are ACME rules (RFC 8555 §7.4, §11.1) checked by finalize.

use std::net::IpAddr;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::acme::jwk::PublicJwk;

/// Smallest RSA modulus for a certified key (NIST SP 800-57 Part 1: 2048 bits through 2030).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus: ring, which verifies on the enforcement points, stops at 8192.
pub const MAX_RSA_BITS: usize = 8192;

/// The accepted subject key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKey {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
    Ed25519,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not valid DER PKCS#10")]
    Parse,
    #[error("CSR has trailing data after the request")]
    TrailingData,
    #[error("CSR signature does not verify with the CSR's own key")]
    Signature,
    #[error("CSR key type is not accepted: {0} (ECDSA P-256/P-384, RSA 2048-8192, Ed25519)")]
    KeyType(String),
    #[error("CSR RSA key of {0} bits is outside {MIN_RSA_BITS}..={MAX_RSA_BITS}")]
    KeySize(usize),
    #[error("CSR requests a subjectAltName of an unsupported type: {0}")]
    UnsupportedName(String),
    #[error("CSR name `{0}` is not valid")]
    BadName(String),
}

/// What a verified CSR asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// The SubjectPublicKeyInfo, DER, exactly as the requester sent it.
    pub spki_der: Vec<u8>,
    pub key: SubjectKey,
    /// The same key as a JWK, to compare with account keys (RFC 8555 §11.1).
    pub jwk: PublicJwk,
    pub common_name: Option<String>,
    /// dNSName SANs, lowercased (DNS names compare case-insensitively, RFC 4343).
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl Csr {
    /// Parses and verifies a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .map_err(|_| CsrError::Parse)?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData);
        }
        // RFC 2986 §3: the signature proves the requester holds the private key.
        req.verify_signature().map_err(|_| CsrError::Signature)?;
        let info = &req.certification_request_info;
        let (key, jwk) = subject_key(&info.subject_pki)?;

        let mut common_name = None;
        for cn in info.subject.iter_common_name() {
            let s = cn
                .as_str()
                .map_err(|_| CsrError::BadName("subject commonName".into()))?;
            if common_name.replace(s.to_ascii_lowercase()).is_some() {
                return Err(CsrError::BadName("more than one commonName".into()));
            }
        }
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Some(exts) = req.requested_extensions() {
            for ext in exts {
                let ParsedExtension::SubjectAlternativeName(san) = ext else {
                    // Other requested extensions (key usage, basic constraints, must-staple…)
                    // are ignored: the template decides them, never the requester.
                    continue;
                };
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                        GeneralName::IPAddress(b) => ip_addresses.push(ip_from_octets(b)?),
                        other => return Err(CsrError::UnsupportedName(format!("{other:?}"))),
                    }
                }
            }
        }
        Ok(Self {
            spki_der: info.subject_pki.raw.to_vec(),
            key,
            jwk,
            common_name,
            dns_names,
            ip_addresses,
        })
    }

    /// Every DNS name the CSR asks for: the SANs plus a commonName that is not an IP address
    /// (RFC 8555 §7.4: names may appear in either).
    pub fn requested_dns_names(&self) -> std::collections::BTreeSet<String> {
        let mut all: std::collections::BTreeSet<String> = self.dns_names.iter().cloned().collect();
        if let Some(cn) = &self.common_name {
            if cn.parse::<IpAddr>().is_err() {
                all.insert(cn.clone());
            }
        }
        all
    }
}

fn ip_from_octets(b: &[u8]) -> Result<IpAddr, CsrError> {
    match b.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(b).map_err(|_| CsrError::Parse)?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(b).map_err(|_| CsrError::Parse)?,
        )),
        _ => Err(CsrError::BadName("IP address SAN of odd length".into())),
    }
}

/// Classifies a SubjectPublicKeyInfo and converts it to a JWK.
pub fn subject_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(SubjectKey, PublicJwk), CsrError> {
    let alg = &spki.algorithm.algorithm;
    let key_bits = spki.subject_public_key.data.as_ref();
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::KeyType("EC key without a named curve".into()))?;
        let (kind, len) = if curve == OID_EC_P256 {
            (SubjectKey::EcdsaP256, 32)
        } else if curve == OID_NIST_EC_P384 {
            (SubjectKey::EcdsaP384, 48)
        } else {
            return Err(CsrError::KeyType(format!("EC curve {curve}")));
        };
        // Uncompressed point only (SEC 1 §2.3.3): 0x04 || x || y.
        if key_bits.len() != 1 + 2 * len || key_bits[0] != 0x04 {
            return Err(CsrError::KeyType("EC point is not uncompressed".into()));
        }
        let (x, y) = (key_bits[1..1 + len].to_vec(), key_bits[1 + len..].to_vec());
        let jwk = if len == 32 {
            PublicJwk::P256 { x, y }
        } else {
            PublicJwk::P384 { x, y }
        };
        Ok((kind, jwk))
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::KeyType("unparsable RSA key".into()));
        };
        let n = trim(rsa.modulus);
        let bits = match n.first() {
            Some(b) => n.len() * 8 - b.leading_zeros() as usize,
            None => 0,
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::KeySize(bits));
        }
        let jwk = PublicJwk::Rsa {
            n: n.to_vec(),
            e: trim(rsa.exponent).to_vec(),
        };
        Ok((SubjectKey::Rsa { bits }, jwk))
    } else if *alg == OID_SIG_ED25519 {
        if key_bits.len() != 32 {
            return Err(CsrError::KeyType("Ed25519 key of the wrong length".into()));
        }
        Ok((
            SubjectKey::Ed25519,
            PublicJwk::Ed25519 {
                x: key_bits.to_vec(),
            },
        ))
    } else {
        Err(CsrError::KeyType(alg.to_id_string()))
    }
}

/// The JWK form of a DER SubjectPublicKeyInfo, if it is an accepted key type.
pub fn jwk_of_spki_der(der: &[u8]) -> Option<PublicJwk> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    subject_key(&spki).ok().map(|(_, jwk)| jwk)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyAlgorithm;
    use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};

    fn csr(key: &KeyPair, sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn a_good_csr_yields_its_key_and_names() {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let der = csr(&key, &["A.example.com", "10.0.0.1"], Some("a.example.com"));
        let c = Csr::from_der(&der).unwrap();
        assert_eq!(c.key, SubjectKey::EcdsaP256);
        assert_eq!(c.dns_names, vec!["a.example.com"]);
        assert_eq!(c.ip_addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.requested_dns_names().len(), 1);
        assert_eq!(c.spki_der, key.subject_public_key_info());
        assert_eq!(jwk_of_spki_der(&c.spki_der), Some(c.jwk.clone()));
        let PublicJwk::P256 { x, y } = &c.jwk else {
            panic!()
        };
        assert_eq!(&key.public_key_raw()[1..33], x.as_slice());
        assert_eq!(&key.public_key_raw()[33..], y.as_slice());
    }

    #[test]
    fn p384_and_rsa_keys_are_classified() {
        let key = KeyAlgorithm::EcdsaP384.generate().unwrap();
        let c = Csr::from_der(&csr(&key, &["a.example"], None)).unwrap();
        assert_eq!(c.key, SubjectKey::EcdsaP384);
        let key = KeyAlgorithm::Rsa2048.generate().unwrap();
        let c = Csr::from_der(&csr(&key, &["a.example"], None)).unwrap();
        assert_eq!(c.key, SubjectKey::Rsa { bits: 2048 });
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let mut der = csr(&key, &["a.example.com"], None);
        // Flip a byte inside the DNS name: the structure stays valid, the signature does not.
        let pos = der.windows(9).position(|w| w == b"a.example").unwrap();
        der[pos] = b'b';
        assert_eq!(Csr::from_der(&der), Err(CsrError::Signature));
        assert_eq!(Csr::from_der(b"garbage"), Err(CsrError::Parse));
        let mut trailing = csr(&key, &["a.example.com"], None);
        trailing.push(0);
        assert_eq!(Csr::from_der(&trailing), Err(CsrError::TrailingData));
    }
}
