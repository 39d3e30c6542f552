//! The little DER (X.690) an OCSP responder needs: a strict, bounds-checked reader for the
//! requests relying parties send, and a writer for the responses we sign.
//!
//! The reader accepts DER only (X.690 §10): definite lengths in their shortest form, single
//! octet tags. Anything else is malformed. It never indexes past its input and never panics:
//! every read returns `Err(Malformed)` instead, because its input comes from the network.

use std::fmt;

/// Universal tags (X.690 §8) and the context tags OCSP uses.
pub const BOOLEAN: u8 = 0x01;
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const ENUMERATED: u8 = 0x0a;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const SEQUENCE: u8 = 0x30;

/// `[n]` constructed (EXPLICIT tagging, or IMPLICIT over a constructed type).
pub const fn context(n: u8) -> u8 {
    0xa0 | n
}

/// `[n]` primitive (IMPLICIT over a primitive type, e.g. CertStatus `good [0] IMPLICIT NULL`).
pub const fn context_primitive(n: u8) -> u8 {
    0x80 | n
}

/// Why a DER input was refused; the text is for logs, never for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// Reads TLVs from a byte slice, front to back.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

/// One TLV: its tag, its content octets and the whole encoding (tag and length included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next TLV, whatever its tag.
    pub fn any(&mut self) -> Result<Tlv<'a>, Malformed> {
        let input = self.rest;
        let (&tag, after_tag) = input.split_first().ok_or(Malformed("truncated: no tag"))?;
        // High tag numbers (X.690 §8.1.2.4) appear nowhere in OCSP.
        if tag & 0x1f == 0x1f {
            return Err(Malformed("multi-octet tag"));
        }
        let (&first, mut after_len) = after_tag
            .split_first()
            .ok_or(Malformed("truncated: no length"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            // Indefinite length is BER, not DER (X.690 §10.1).
            return Err(Malformed("indefinite length"));
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return Err(Malformed("length longer than 4 octets"));
            }
            if after_len.len() < n {
                return Err(Malformed("truncated length"));
            }
            let (octets, rest) = after_len.split_at(n);
            after_len = rest;
            if octets[0] == 0 {
                return Err(Malformed("length with a leading zero octet"));
            }
            let len = octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            // X.690 §10.1: the shortest form; a long form for < 128 is not DER.
            if len < 0x80 {
                return Err(Malformed("length not in its shortest form"));
            }
            len
        };
        if after_len.len() < len {
            return Err(Malformed("content shorter than its length"));
        }
        let (content, rest) = after_len.split_at(len);
        let header = input.len() - after_len.len();
        self.rest = rest;
        Ok(Tlv {
            tag,
            content,
            raw: &input[..header + len],
        })
    }

    /// The next TLV, which must carry `tag`; its content.
    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
        Ok(self.expect_tlv(tag, what)?.content)
    }

    pub fn expect_tlv(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, Malformed> {
        match self.peek_tag() {
            Some(t) if t == tag => self.any(),
            _ => Err(Malformed(what)),
        }
    }

    /// The content of the next TLV if it carries `tag` (an OPTIONAL or DEFAULT field).
    pub fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, Malformed> {
        if self.peek_tag() == Some(tag) {
            Ok(Some(self.any()?.content))
        } else {
            Ok(None)
        }
    }

    /// Everything must have been read: trailing octets in a SEQUENCE are not DER.
    pub fn finish(&self, what: &'static str) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed(what))
        }
    }
}

/// Appends the DER length octets of `len` (X.690 §8.1.3, shortest form).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// One TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A constructed TLV over already-encoded parts.
pub fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    push_len(&mut out, len);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    constructed(SEQUENCE, parts)
}

/// A non-negative INTEGER from a big-endian magnitude (X.690 §8.3: a 0x00 octet keeps a
/// value with its top bit set positive; zero is one 0x00 octet).
pub fn unsigned_integer(tag: u8, magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude.iter().position(|&b| b != 0);
    let m = match start {
        Some(i) => &magnitude[i..],
        None => &[][..],
    };
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(tag, &content)
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2: UTC, seconds, no fraction), as
/// RFC 6960 uses it for producedAt, thisUpdate, nextUpdate and revocationTime.
pub fn generalized_time(unix: i64) -> Vec<u8> {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(GENERALIZED_TIME, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_shortest_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536] {
            let content = vec![7u8; len];
            let enc = tlv(OCTET_STRING, &content);
            let mut r = Reader::new(&enc);
            let t = r.any().unwrap();
            assert_eq!(
                (t.tag, t.content.len(), t.raw.len()),
                (OCTET_STRING, len, enc.len())
            );
            assert!(r.is_empty());
        }
    }

    #[test]
    fn non_der_and_truncated_inputs_are_refused() {
        for (bad, why) in [
            (&[][..], "truncated: no tag"),
            (&[0x30][..], "truncated: no length"),
            (&[0x30, 0x80, 0, 0][..], "indefinite length"),
            (
                &[0x30, 0x81, 0x05, 1, 2, 3, 4, 5][..],
                "length not in its shortest form",
            ),
            (
                &[0x30, 0x82, 0x00, 0x80][..],
                "length with a leading zero octet",
            ),
            (
                &[0x30, 0x85, 1, 1, 1, 1, 1][..],
                "length longer than 4 octets",
            ),
            (&[0x30, 0x82, 0x01][..], "truncated length"),
            (&[0x30, 0x03, 1, 2][..], "content shorter than its length"),
            (&[0x1f, 0x01, 0x00][..], "multi-octet tag"),
            (
                &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
                "content shorter than its length",
            ),
        ] {
            assert_eq!(
                Reader::new(bad).any().unwrap_err(),
                Malformed(why),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn integers_stay_positive() {
        assert_eq!(unsigned_integer(INTEGER, &[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(INTEGER, &[0, 0, 0x7f]), vec![2, 1, 0x7f]);
        assert_eq!(unsigned_integer(INTEGER, &[]), vec![2, 1, 0]);
    }

    #[test]
    fn generalized_time_is_utc_seconds() {
        assert_eq!(generalized_time(0)[2..], *b"19700101000000Z");
        assert_eq!(generalized_time(1_700_000_000)[2..], *b"20231114221320Z");
    }
}
