//! Key algorithms the CA can hold, their generation, and the signer trait issuance goes through.

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, SignatureAlgorithm, SigningKey};
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::PkiError;

/// The CA's own key algorithm (root and intermediate). ECDSA P-256 is the default: small,
/// fast, and accepted by every TLS stack the enforcement points and devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    /// The X.509 signature algorithm certificates signed by this key carry.
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
        }
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// A fresh key pair. ECDSA keys come from ring. ring cannot generate RSA keys, so those
    /// come from the RustCrypto `rsa` crate and are handed to ring as PKCS#8: `rsa` is used
    /// for generation only, never to sign (its signing is not constant-time, RUSTSEC-2023-0071).
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        match self.rsa_bits() {
            None => KeyPair::generate_for(self.signature_algorithm())
                .map_err(|e| PkiError::KeyGen(e.to_string())),
            Some(bits) => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                    .map_err(|e| PkiError::KeyGen(e.to_string()))?;
                let pkcs8 = key
                    .to_pkcs8_der()
                    .map_err(|e| PkiError::KeyGen(e.to_string()))?;
                let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
                KeyPair::from_pkcs8_der_and_sign_algo(&der, self.signature_algorithm())
                    .map_err(|e| PkiError::KeyGen(e.to_string()))
            }
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ecdsa-p256" | "ec" | "ecdsa" => Ok(KeyAlgorithm::EcdsaP256),
            "p384" | "p-384" | "ecdsa-p384" => Ok(KeyAlgorithm::EcdsaP384),
            "rsa2048" | "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            "rsa" | "rsa3072" | "rsa-3072" => Ok(KeyAlgorithm::Rsa3072),
            "rsa4096" | "rsa-4096" => Ok(KeyAlgorithm::Rsa4096),
            other => Err(format!(
                "unknown key algorithm `{other}` (p256, p384, rsa2048, rsa3072, rsa4096)"
            )),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "p256",
            KeyAlgorithm::EcdsaP384 => "p384",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
        })
    }
}

/// The issuing CA's key as issuance sees it: rcgen's [`SigningKey`] (sign a TBS, tell the
/// public key and algorithm), nothing more. Issuance, and through it all of the ACME code,
/// only ever holds a `Box<dyn CaSigner>`; the private key bytes never leave the signer.
///
/// Today the signer is an in-memory [`rcgen::KeyPair`] loaded from a 0600 PEM file. An HSM or
/// PKCS#11 token is one more type implementing `SigningKey` (whose `sign` calls `C_Sign`),
/// passed to [`super::Authority::from_parts`]; nothing in `acme/` changes.
pub trait CaSigner: SigningKey + Send + Sync + 'static {}

impl<T: SigningKey + Send + Sync + 'static> CaSigner for T {}

/// Loads a private key from PEM (PKCS#8, or the SEC1/PKCS#1 forms rcgen understands).
pub fn key_from_pem(pem: &str) -> Result<KeyPair, String> {
    KeyPair::from_pem(pem).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn names_parse_and_print() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
        ] {
            assert_eq!(alg.to_string().parse::<KeyAlgorithm>(), Ok(alg));
        }
        assert_eq!("rsa".parse(), Ok(KeyAlgorithm::Rsa3072));
        assert!("dsa".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn generated_keys_sign_and_reload_from_pem() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = alg.generate().unwrap();
            assert_eq!(key.algorithm(), alg.signature_algorithm());
            let again = key_from_pem(&key.serialize_pem()).unwrap();
            assert_eq!(again.der_bytes(), key.der_bytes());
            assert!(!again.sign(b"tbs").unwrap().is_empty());
        }
    }
}
