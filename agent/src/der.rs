//! The few DER encodings the agent builds by hand (X.690 §8, §10): SubjectPublicKeyInfo
//! for TPM keys (RFC 5280 §4.1.2.7, RFC 3279 §2.3, RFC 5480 §2), ECDSA-Sig-Value (RFC 3279
//! §2.2.3) and the SAN otherName of a device identifier (RFC 4043 §2).

pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = contents.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes (minimal, X.690 §8.3.2).
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let mut m: &[u8] = magnitude;
    while m.len() > 1 && m[0] == 0 {
        m = &m[1..];
    }
    let mut v = Vec::with_capacity(m.len() + 1);
    if m.is_empty() {
        v.push(0);
    } else {
        if m[0] & 0x80 != 0 {
            v.push(0);
        }
        v.extend_from_slice(m);
    }
    tlv(0x02, &v)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(bytes);
    tlv(0x03, &v)
}

pub fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = [tlv(0x06, OID_EC_PUBLIC_KEY), tlv(0x06, curve_oid)].concat();
    tlv(0x30, &[tlv(0x30, &alg), bit_string(point)].concat())
}

pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let alg = [tlv(0x06, OID_RSA_ENCRYPTION), vec![0x05, 0x00]].concat();
    let key = tlv(0x30, &[uint(modulus), uint(exponent)].concat());
    tlv(0x30, &[tlv(0x30, &alg), bit_string(&key)].concat())
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279 §2.2.3).
pub fn ecdsa_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
    tlv(0x30, &[uint(r), uint(s)].concat())
}

/// An OBJECT IDENTIFIER from its arcs (X.690 §8.19).
#[cfg(any(test, feature = "testing"))]
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut chunk = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    };
    match arcs {
        [a, b, rest @ ..] => {
            push(a * 40 + b);
            for &r in rest {
                push(r);
            }
        }
        [a] => push(a * 40),
        [] => {}
    }
    tlv(0x06, &body)
}

/// A SAN `otherName` PermanentIdentifier with `identifierValue` only (RFC 4043 §2;
/// RFC 5280 §4.2.1.6 `otherName [0] IMPLICIT OtherName`, `value [0] EXPLICIT`).
#[cfg(any(test, feature = "testing"))]
pub fn permanent_identifier_other_name(value: &str) -> Vec<u8> {
    let pid = tlv(0x30, &tlv(0x0c, value.as_bytes()));
    tlv(
        0xa0,
        &[oid(&[1, 3, 6, 1, 5, 5, 7, 8, 3]), tlv(0xa0, &pid)].concat(),
    )
}

/// The length of the DER element at the start of `buf` (header + contents), if well formed.
/// EK certificates in NV may carry padding after the certificate (TCG EK Credential Profile
/// §2.2.1.5 allows the index to be larger than the certificate).
pub fn element_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let len = buf
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some(2 + n + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(element_len(&long), Some(304));
        assert_eq!(uint(&[0, 0, 0x80]), vec![0x02, 2, 0, 0x80]);
        assert_eq!(uint(&[0, 0]), vec![0x02, 1, 0]);
        assert_eq!(uint(&[]), vec![0x02, 1, 0]);
        assert_eq!(element_len(&[0x30]), None);
        assert_eq!(
            oid(&[2, 23, 133, 8, 3]),
            vec![0x06, 5, 0x67, 0x81, 0x05, 0x08, 0x03]
        );
        assert_eq!(oid(&[1, 2, 840, 10045, 3, 1, 7])[2..], *OID_P256);
        assert_eq!(element_len(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }
}
