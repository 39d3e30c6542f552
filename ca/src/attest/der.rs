//! Minimal DER (ITU-T X.690 §8, §10) reading and writing for the few structures the verifiers
//! touch by hand: vendor extension values, `otherName` SAN values, and the SubjectPublicKeyInfo
//! (RFC 5280 §4.1.2.7) of a TPM key. Reading never panics: every malformed input is `None`.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// One TLV with a single-byte tag and a definite length (X.690 §8.1.3, §10.1).
/// Returns `(tag, contents, rest)`.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags: none of the structures read here use them
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is the indefinite form, forbidden in DER (X.690 §10.1); cap at 4 length octets.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        // Minimal length encoding (X.690 §10.1).
        if len < 0x80 || rest[0] == 0 {
            return None;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// A TLV that must be the whole of `input` and carry `tag`.
pub(crate) fn read_exact(input: &[u8], tag: u8) -> Option<&[u8]> {
    match read_tlv(input)? {
        (t, contents, []) if t == tag => Some(contents),
        _ => None,
    }
}

/// A non-negative DER INTEGER (X.690 §8.3) that fits a `u64`.
pub(crate) fn integer_u64(contents: &[u8]) -> Option<u64> {
    let (&first, _) = contents.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    if contents.len() > 1 && first == 0 && contents[1] & 0x80 == 0 {
        return None; // non-minimal (X.690 §8.3.2)
    }
    let digits = if first == 0 { &contents[1..] } else { contents };
    if digits.len() > 8 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    )
}

/// Dotted text of an OBJECT IDENTIFIER's contents (X.690 §8.19).
pub(crate) fn oid_to_string(contents: &[u8]) -> Option<String> {
    if contents.is_empty() || contents.last()? & 0x80 != 0 {
        return None;
    }
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut started = false;
    for &b in contents {
        if !started && b == 0x80 {
            return None; // non-minimal sub-identifier
        }
        started = true;
        if acc > (u64::MAX >> 7) {
            return None;
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
            started = false;
        }
    }
    let first = arcs[0];
    let (a, b) = if first < 40 {
        (0, first)
    } else if first < 80 {
        (1, first - 40)
    } else {
        (2, first - 80)
    };
    let mut out = format!("{a}.{b}");
    for arc in &arcs[1..] {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    Some(out)
}

pub(crate) fn write_tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes (leading zeros stripped, a zero
/// octet added when the high bit is set: X.690 §8.3.2).
pub(crate) fn write_unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let digits = &magnitude[skip..];
    let mut contents = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(digits);
    write_tlv(TAG_INTEGER, &contents)
}

// OBJECT IDENTIFIER contents of the SPKI algorithms written here.
/// rsaEncryption 1.2.840.113549.1.1.1 (RFC 3279 §2.3.1).
pub(crate) const OID_RSA_ENCRYPTION: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1).
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 1.3.132.0.34 (RFC 5480 §2.1.1.1).
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// SubjectPublicKeyInfo for an RSA key (RFC 3279 §2.3.1): `RSAPublicKey ::= SEQUENCE { n, e }`.
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut key = write_unsigned_integer(modulus);
    key.extend(write_unsigned_integer(exponent));
    let rsa_public_key = write_tlv(TAG_SEQUENCE, &key);
    let mut alg = write_tlv(TAG_OID, OID_RSA_ENCRYPTION);
    alg.extend(write_tlv(TAG_NULL, &[]));
    spki(&write_tlv(TAG_SEQUENCE, &alg), &rsa_public_key)
}

/// SubjectPublicKeyInfo for an EC key (RFC 5480 §2): the uncompressed point `04 || X || Y`.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = write_tlv(TAG_OID, OID_EC_PUBLIC_KEY);
    alg.extend(write_tlv(TAG_OID, curve_oid));
    spki(&write_tlv(TAG_SEQUENCE, &alg), point)
}

fn spki(algorithm: &[u8], key_bits: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key_bits.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key_bits);
    let mut contents = algorithm.to_vec();
    contents.extend(write_tlv(TAG_BIT_STRING, &bits));
    write_tlv(TAG_SEQUENCE, &contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_der_reads_what_it_writes_and_refuses_bad_lengths() {
        let long = vec![7u8; 300];
        let enc = write_tlv(TAG_OCTET_STRING, &long);
        assert_eq!(read_exact(&enc, TAG_OCTET_STRING), Some(&long[..]));
        // Lying length: longer than the input.
        assert_eq!(read_tlv(&[0x04, 0x05, 1, 2]), None);
        // Indefinite length is not DER.
        assert_eq!(read_tlv(&[0x30, 0x80, 0, 0]), None);
        // Non-minimal long form.
        assert_eq!(read_tlv(&[0x04, 0x81, 0x01, 0xaa]), None);
        // Trailing bytes are refused by read_exact.
        assert_eq!(
            read_exact(&[0x04, 0x01, 0xaa, 0x00], TAG_OCTET_STRING),
            None
        );
        assert_eq!(read_tlv(&[]), None);
    }

    #[test]
    fn attest_der_integers_and_oids() {
        assert_eq!(integer_u64(&[0x5b, 0x1a, 0x2e]), Some(5_970_478));
        assert_eq!(integer_u64(&[0x01, 0xb3, 0xbe, 0xf6]), Some(28_557_046));
        assert_eq!(integer_u64(&[0x00, 0x80]), Some(0x80));
        assert_eq!(integer_u64(&[0x00, 0x01]), None);
        assert_eq!(integer_u64(&[0x80]), None);
        assert_eq!(integer_u64(&[]), None);
        assert_eq!(oid_to_string(OID_P384).as_deref(), Some("1.3.132.0.34"));
        assert_eq!(
            oid_to_string(OID_RSA_ENCRYPTION).as_deref(),
            Some("1.2.840.113549.1.1.1")
        );
        assert_eq!(oid_to_string(&[0x2a, 0x86]), None);
        assert_eq!(
            write_unsigned_integer(&[0x00, 0x00, 0x80]),
            vec![0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(write_unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
    }
}
