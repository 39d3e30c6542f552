//! A deliberately tiny DER reader for the few structures x509-parser hands us as raw bytes
//! (otherName values, custom extension values, Name attributes).
//!
//! Every function returns `None` on anything unexpected instead of panicking: these bytes come
//! from a certificate, i.e. from outside. Only definite lengths are accepted (X.690 §10.1: DER
//! uses the definite form only).

/// Universal tags we read.
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
/// `[0]` constructed, context-specific: the EXPLICIT wrapper of an otherName value
/// (RFC 5280 §4.2.1.6, `value [0] EXPLICIT ANY DEFINED BY type-id`).
pub(crate) const TAG_CONTEXT_0_CONSTRUCTED: u8 = 0xa0;

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    /// The first identifier octet (class, constructed bit and, for low tag numbers, the number).
    pub tag: u8,
    /// The value octets.
    pub value: &'a [u8],
    /// The whole element, identifier and length octets included.
    pub raw: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and what follows.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, mut rest) = input.split_first()?;
    let mut header_len = 1usize;
    if tag & 0x1f == 0x1f {
        // High tag number form (X.690 §8.1.2.4): skip the continuation octets.
        loop {
            let (&b, r) = rest.split_first()?;
            rest = r;
            header_len += 1;
            if b & 0x80 == 0 {
                break;
            }
            if header_len > 6 {
                return None;
            }
        }
    }
    let (&first, r) = rest.split_first()?;
    rest = r;
    header_len += 1;
    let len = if first & 0x80 == 0 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is the indefinite form, forbidden in DER; more than 4 length octets is absurd here.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, r) = rest.split_at(n);
        rest = r;
        header_len += n;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let total = header_len.checked_add(len)?;
    let raw = input.get(..total)?;
    let (value, rest) = rest.split_at(len);
    Some((Tlv { tag, value, raw }, rest))
}

/// Reads exactly one element of the expected tag, with nothing after it.
pub(crate) fn read_only(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (tlv, rest) = read_tlv(input)?;
    (tlv.tag == tag && rest.is_empty()).then_some(tlv.value)
}

/// Dotted-decimal form of an OID's content octets (X.690 §8.19).
pub(crate) fn oid_to_string(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut in_arc = false;
    for &b in content {
        if !in_arc && b == 0x80 {
            return None; // non-minimal encoding
        }
        acc = acc.checked_mul(128)?.checked_add(u64::from(b & 0x7f))?;
        in_arc = true;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                // The first subidentifier packs the first two arcs: 40 * X + Y.
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
            in_arc = false;
        }
    }
    if in_arc || arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let (tlv, rest) = read_tlv(&[0x04, 0x02, 0xaa, 0xbb, 0xff]).unwrap();
        assert_eq!(
            (tlv.tag, tlv.value, rest),
            (0x04, &[0xaa, 0xbb][..], &[0xff][..])
        );
        assert_eq!(tlv.raw, &[0x04, 0x02, 0xaa, 0xbb]);

        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(0x11, 0x80));
        let (tlv, rest) = read_tlv(&long).unwrap();
        assert_eq!(tlv.value.len(), 0x80);
        assert!(rest.is_empty());
    }

    #[test]
    fn refuses_truncated_indefinite_and_oversized() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x04]).is_none());
        assert!(read_tlv(&[0x04, 0x03, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(read_tlv(&[0x04, 0x85, 1, 0, 0, 0, 0]).is_none());
        assert!(read_tlv(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(
            read_only(&[0x04, 0x00, 0x00], 0x04).is_none(),
            "trailing data"
        );
        assert!(read_only(&[0x04, 0x00], 0x0c).is_none(), "wrong tag");
    }

    #[test]
    fn oid_strings() {
        // 1.3.6.1.5.5.7.8.3
        assert_eq!(
            oid_to_string(&[0x2b, 6, 1, 5, 5, 7, 8, 3]).as_deref(),
            Some("1.3.6.1.5.5.7.8.3")
        );
        // 2.5.4.3 and a multi-octet arc (99999 = 0x86 0x8d 0x1f)
        assert_eq!(oid_to_string(&[0x55, 4, 3]).as_deref(), Some("2.5.4.3"));
        assert_eq!(
            oid_to_string(&[0x2b, 6, 1, 4, 1, 0x86, 0x8d, 0x1f, 1, 1]).as_deref(),
            Some("1.3.6.1.4.1.99999.1.1")
        );
        assert!(oid_to_string(&[0x2b, 0x86]).is_none(), "truncated arc");
        assert!(oid_to_string(&[]).is_none());
    }
}
