//! Certificate serial numbers (RFC 5280 §4.1.2.2): positive, at most 20 octets, unique per
//! issuer. Ours carry 128 random bits (CA/B Baseline Requirements §7.1 want at least 64), so
//! they are unpredictable as well as unique; uniqueness is still enforced by the store's
//! UNIQUE column rather than trusted to chance.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use super::PkiError;

/// A serial as the unsigned big-endian magnitude without leading zero octets. In DER the
/// INTEGER gets one 0x00 octet in front when the top bit is set (that is what keeps it
/// positive), so the encoding is at most 17 octets: within RFC 5280's 20.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// 128 random bits. A value whose leading octets happen to be zero is still a valid (shorter)
    /// positive integer; only zero itself, which RFC 5280 forbids, is drawn again.
    pub fn random(rng: &SystemRandom) -> Result<Self, PkiError> {
        loop {
            let mut raw = [0u8; 16];
            rng.fill(&mut raw).map_err(|_| PkiError::Rng)?;
            let s = Self::from_be_bytes(&raw);
            if !s.0.is_empty() {
                return Ok(s);
            }
        }
    }

    /// From the content octets of a DER INTEGER (as `x509-parser`'s `raw_serial` gives them)
    /// or any big-endian magnitude: leading zero octets are dropped.
    pub fn from_be_bytes(b: &[u8]) -> Self {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        Self(b[start..].to_vec())
    }

    /// Parses the lowercase (or uppercase) hex form, with or without colons.
    pub fn from_hex(s: &str) -> Option<Self> {
        let clean: String = s.chars().filter(|&c| c != ':').collect();
        hex::decode(clean).ok().map(|b| Self::from_be_bytes(&b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, two digits per octet: the key of the `certificates` table.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn random_serials_are_positive_short_and_distinct() {
        let rng = SystemRandom::new();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let s = Serial::random(&rng).unwrap();
            assert!(!s.as_bytes().is_empty() && s.as_bytes().len() <= 16);
            assert_ne!(s.as_bytes()[0], 0);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn der_content_and_hex_forms_agree() {
        // 0x00 sign octet in front of a value with the top bit set.
        let s = Serial::from_be_bytes(&[0x00, 0x80, 0x01]);
        assert_eq!(s.to_hex(), "8001");
        assert_eq!(Serial::from_hex("80:01"), Some(s.clone()));
        assert_eq!(Serial::from_hex("008001"), Some(s));
        assert_eq!(Serial::from_hex("zz"), None);
    }
}
