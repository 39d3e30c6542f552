//! X.501 Names: the RFC 4514 string form (issuer / subject for logs and identity headers) and
//! attribute look-up (the RFC 4043 serialNumber fallback).
//!
//! x509-parser's `Display` for names is neither in RFC 4514 order nor escaped; these strings end
//! up in upstream headers (XFCC `Subject="…"`), so we format them ourselves and escape every
//! special and control character.

use std::fmt::Write as _;

use crate::der::{self, Tlv};

/// One AttributeTypeAndValue (RFC 5280 §4.1.2.4).
pub(crate) struct Attribute<'a> {
    /// OID content octets.
    pub oid: &'a [u8],
    pub value: Tlv<'a>,
}

/// `Name ::= SEQUENCE OF RelativeDistinguishedName`, `RDN ::= SET OF AttributeTypeAndValue`.
/// Returns the RDNs in encoded order, or `None` if the structure is not a Name.
pub(crate) fn parse(name_der: &[u8]) -> Option<Vec<Vec<Attribute<'_>>>> {
    let mut rdns_der = der::read_only(name_der, der::TAG_SEQUENCE)?;
    let mut rdns = Vec::new();
    while !rdns_der.is_empty() {
        let (rdn, rest) = der::read_tlv(rdns_der)?;
        rdns_der = rest;
        if rdn.tag != der::TAG_SET {
            return None;
        }
        let mut atvs_der = rdn.value;
        let mut rdn_attrs = Vec::new();
        while !atvs_der.is_empty() {
            let (atv, rest) = der::read_tlv(atvs_der)?;
            atvs_der = rest;
            if atv.tag != der::TAG_SEQUENCE {
                return None;
            }
            let (oid, rest) = der::read_tlv(atv.value)?;
            let (value, rest) = der::read_tlv(rest)?;
            if oid.tag != der::TAG_OID || !rest.is_empty() {
                return None;
            }
            rdn_attrs.push(Attribute {
                oid: oid.value,
                value,
            });
        }
        if rdn_attrs.is_empty() {
            return None; // RDN is SET SIZE (1..MAX)
        }
        rdns.push(rdn_attrs);
    }
    Some(rdns)
}

/// The RFC 4514 string of a DER Name: RDNs in reverse order separated by `,` (§2.1), the
/// attributes of a multi-valued RDN joined by `+` (§2.2).
pub(crate) fn to_rfc4514(name_der: &[u8]) -> Option<String> {
    let rdns = parse(name_der)?;
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            write_attribute(&mut out, attr)?;
        }
    }
    Some(out)
}

/// Short names (RFC 4514 §3 table, plus a few registered descriptors common in device
/// certificates); anything else is written as a dotted-decimal OID (§2.3).
const SHORT_NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 4, 3], "CN"),
    (&[0x55, 4, 4], "SN"),
    (&[0x55, 4, 5], "serialNumber"),
    (&[0x55, 4, 6], "C"),
    (&[0x55, 4, 7], "L"),
    (&[0x55, 4, 8], "ST"),
    (&[0x55, 4, 9], "STREET"),
    (&[0x55, 4, 10], "O"),
    (&[0x55, 4, 11], "OU"),
    (&[0x55, 4, 12], "title"),
    (&[0x55, 4, 42], "GN"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 1, 25],
        "DC",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 1, 1],
        "UID",
    ),
];

/// The serialNumber attribute type (X.520, 2.5.4.5).
pub(crate) const OID_SERIAL_NUMBER: &[u8] = &[0x55, 4, 5];

fn write_attribute(out: &mut String, attr: &Attribute<'_>) -> Option<()> {
    let short = SHORT_NAMES
        .iter()
        .find(|(oid, _)| *oid == attr.oid)
        .map(|(_, name)| *name);
    match short {
        Some(name) => out.push_str(name),
        None => out.push_str(&der::oid_to_string(attr.oid)?),
    }
    out.push('=');
    // §2.4: a type without a short name, or a value without a string form, is written as `#`
    // followed by the hex of its BER (here DER) encoding.
    match short.and(decode_string(attr.value)) {
        Some(text) => escape_value(out, &text),
        None => {
            out.push('#');
            out.push_str(&hex::encode(attr.value.raw));
        }
    }
    Some(())
}

/// Decodes the DirectoryString-like types; `None` for anything else or invalid encodings.
pub(crate) fn decode_string(value: Tlv<'_>) -> Option<String> {
    let bytes = value.value;
    match value.tag {
        // UTF8String
        0x0c => std::str::from_utf8(bytes).ok().map(str::to_owned),
        // NumericString, PrintableString, IA5String, VisibleString: ASCII subsets.
        0x12 | 0x13 | 0x16 | 0x1a => bytes
            .is_ascii()
            .then(|| String::from_utf8_lossy(bytes).into_owned()),
        // TeletexString: in practice Latin-1.
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            let pairs = bytes.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            let units: Vec<u16> = pairs.map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UCS-4BE.
        0x1c => {
            let quads = bytes.chunks_exact(4);
            if !quads.remainder().is_empty() {
                return None;
            }
            quads
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping, plus hex-escaping of every control character (allowed by §2.4,
/// "other characters may be escaped") so the string is safe in a log line or header.
fn escape_value(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (attribute type OID content, value tag, value bytes)
    type Atv<'a> = (&'a [u8], u8, &'a [u8]);

    /// Builds `SEQUENCE OF SET OF SEQUENCE { OID, value }` from RDNs.
    fn name(rdns: &[&[Atv<'_>]]) -> Vec<u8> {
        fn tlv(tag: u8, v: &[u8]) -> Vec<u8> {
            assert!(v.len() < 128);
            let mut out = vec![tag, v.len() as u8];
            out.extend_from_slice(v);
            out
        }
        let mut seq = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, val) in rdn.iter() {
                let mut atv = tlv(0x06, oid);
                atv.extend(tlv(*tag, val));
                set.extend(tlv(0x30, &atv));
            }
            seq.extend(tlv(0x31, &set));
        }
        tlv(0x30, &seq)
    }

    #[test]
    fn reverse_order_and_multi_valued() {
        let der = name(&[
            &[(&[0x55, 4, 6], 0x13, b"DE")],
            &[(&[0x55, 4, 10], 0x0c, b"Acme")],
            &[
                (&[0x55, 4, 3], 0x0c, b"dev"),
                (&[0x55, 4, 11], 0x0c, b"eng"),
            ],
        ]);
        assert_eq!(to_rfc4514(&der).unwrap(), "CN=dev+OU=eng,O=Acme,C=DE");
    }

    #[test]
    fn escapes_specials_and_controls() {
        let der = name(&[&[(&[0x55, 4, 3], 0x0c, b" a,b+c\"d\\e;<f>\r\n#")]]);
        assert_eq!(
            to_rfc4514(&der).unwrap(),
            "CN=\\ a\\,b\\+c\\\"d\\\\e\\;\\<f\\>\\0D\\0A#"
        );
        let der = name(&[&[(&[0x55, 4, 3], 0x0c, b"#x ")]]);
        assert_eq!(to_rfc4514(&der).unwrap(), "CN=\\#x\\ ");
    }

    #[test]
    fn unknown_types_and_non_strings_are_hex() {
        // 1.2.3.4 = UTF8String "x" → #0c0178; CN as OCTET STRING → #0401ff
        let der = name(&[
            &[(&[0x2a, 3, 4], 0x0c, b"x")],
            &[(&[0x55, 4, 3], 0x04, &[0xff])],
        ]);
        assert_eq!(to_rfc4514(&der).unwrap(), "CN=#0401ff,1.2.3.4=#0c0178");
    }

    #[test]
    fn bmp_string_and_empty_name() {
        let der = name(&[&[(&[0x55, 4, 3], 0x1e, &[0x00, 0x64, 0x00, 0xe9])]]);
        assert_eq!(to_rfc4514(&der).unwrap(), "CN=dé");
        assert_eq!(to_rfc4514(&[0x30, 0x00]).unwrap(), "");
    }

    #[test]
    fn malformed_names_are_refused() {
        assert!(to_rfc4514(&[0x31, 0x00]).is_none());
        assert!(to_rfc4514(&[0x30, 0x02, 0x31, 0x00]).is_none(), "empty RDN");
        assert!(to_rfc4514(&[0x30, 0x03, 0x31, 0x01]).is_none(), "truncated");
    }
}
