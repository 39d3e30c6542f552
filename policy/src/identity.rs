//! `DeviceIdentity`: what a device certificate says about the device, parsed once per connection.
//!
//! Where the device id comes from, in order of precedence:
//! 1. SAN otherName PermanentIdentifier (RFC 4043 §2),
//! 2. SAN otherName HardwareModuleName (RFC 4108 §5),
//! 3. SAN URI `spiffe://<trust_domain>/device/<id>` (SPIFFE-ID §2).
//!
//! An ambiguous certificate names no device: two different values from the winning source, an
//! unusable value (empty, control characters), or a device SPIFFE URI that names a different
//! device than the winning source. The URI is passed upstream (XFCC `URI=`), so the gateway must
//! never decide on one id while an application reads another.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::der;
use crate::name;

/// OID of the SAN otherName PermanentIdentifier (RFC 4043).
pub const OID_PERMANENT_IDENTIFIER: &str = "1.3.6.1.5.5.7.8.3";
/// OID of the SAN otherName HardwareModuleName (RFC 4108).
pub const OID_HARDWARE_MODULE_NAME: &str = "1.3.6.1.5.5.7.8.4";
/// Portcullis extension: the attestation format the CA verified (`tpm`, `apple`, `step`), as a
/// DER UTF8String. Non-critical.
pub const OID_ATTESTATION_FORMAT: &str = "1.3.6.1.4.1.99999.1.1";
/// Portcullis extension: the device platform the CA recorded (`macos`, …), DER UTF8String.
/// Non-critical.
pub const OID_DEVICE_PLATFORM: &str = "1.3.6.1.4.1.99999.1.2";

/// The arcs of [`OID_ATTESTATION_FORMAT`], as certificate builders (rcgen) want them.
pub const OID_ATTESTATION_FORMAT_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 99999, 1, 1];
/// The arcs of [`OID_DEVICE_PLATFORM`].
pub const OID_DEVICE_PLATFORM_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 99999, 1, 2];

// The same OIDs as DER content octets, compared byte-wise while parsing (a unit test ties each
// to its dotted string).
const PERMANENT_IDENTIFIER_DER: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 8, 3];
const HARDWARE_MODULE_NAME_DER: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 8, 4];
const ATTESTATION_FORMAT_DER: &[u8] = &[0x2b, 6, 1, 4, 1, 0x86, 0x8d, 0x1f, 1, 1];
const DEVICE_PLATFORM_DER: &[u8] = &[0x2b, 6, 1, 4, 1, 0x86, 0x8d, 0x1f, 1, 2];

/// Longest device id accepted, in bytes. Ids travel in headers and audit lines.
pub const MAX_DEVICE_ID_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    PermanentIdentifier,
    HardwareModuleName,
    SpiffeUri,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device's permanent identifier; `None` if the certificate carries none (or an
    /// ambiguous one, see the module documentation).
    pub device_id: Option<String>,
    pub id_source: Option<IdSource>,
    /// Serial number: lowercase hex of the encoded INTEGER without the DER sign octet (a
    /// serial whose first octet is ≥ 0x80 is encoded with a leading 00; that 00 is dropped).
    /// See [`serial_hex`].
    pub serial: String,
    /// SHA-256 of the certificate DER.
    pub fingerprint: [u8; 32],
    /// SHA-256 of the SubjectPublicKeyInfo DER.
    pub spki_sha256: [u8; 32],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// RFC 4514 string.
    pub issuer: String,
    /// RFC 4514 string.
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// Attestation format recorded in the certificate, if any (`tpm`, `apple`, `step`).
    pub attestation: Option<String>,
    /// Platform recorded in the certificate, if any.
    pub platform: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
}

fn malformed(msg: impl Into<String>) -> IdentityError {
    IdentityError::Malformed(msg.into())
}

impl DeviceIdentity {
    /// Parses the leaf certificate. `trust_domain` selects which SPIFFE URIs name a device.
    ///
    /// This does not verify anything (see `verify::verify_client_chain`); it only reads.
    pub fn from_der(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        parse_leaf(der, trust_domain).map(|(identity, _)| identity)
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

/// What verification needs from the leaf beyond the identity, read in the same parse.
pub(crate) struct LeafFacts {
    /// The extendedKeyUsage extension is present and lists id-kp-clientAuth.
    pub client_auth_eku: bool,
}

pub(crate) fn parse_leaf(
    der: &[u8],
    trust_domain: &str,
) -> Result<(DeviceIdentity, LeafFacts), IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data after the certificate"));
    }

    // RFC 5280 §4.2: at most one instance of an extension; x509-parser reports a second SAN
    // (or an unparsable one) as an error, which we pass on.
    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(format!("subjectAltName: {e}")))?;
    let general_names: &[GeneralName<'_>] =
        san.as_ref().map_or(&[], |ext| &ext.value.general_names);

    let subject_der = cert.subject().as_raw();
    let mut candidates = Candidates::default();
    let mut dns_sans = Vec::new();
    let mut uri_sans = Vec::new();
    for name in general_names {
        match name {
            GeneralName::OtherName(oid, value) if oid.as_bytes() == PERMANENT_IDENTIFIER_DER => {
                candidates
                    .permanent
                    .push(permanent_identifier(value, subject_der));
            }
            GeneralName::OtherName(oid, value) if oid.as_bytes() == HARDWARE_MODULE_NAME_DER => {
                candidates.hardware.push(hardware_module_name(value));
            }
            GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
            GeneralName::URI(uri) => {
                if let Some(id) = spiffe_device_id(uri, trust_domain) {
                    candidates.spiffe.push(id);
                }
                uri_sans.push((*uri).to_owned());
            }
            _ => {}
        }
    }
    let (device_id, id_source) = match candidates.choose() {
        Some((id, source)) => (Some(id), Some(source)),
        None => (None, None),
    };

    let validity = cert.validity();
    let not_before = system_time(validity.not_before.timestamp())
        .ok_or_else(|| malformed("notBefore out of range"))?;
    let not_after = system_time(validity.not_after.timestamp())
        .ok_or_else(|| malformed("notAfter out of range"))?;

    let issuer = name::to_rfc4514(cert.issuer().as_raw())
        .ok_or_else(|| malformed("issuer is not a valid Name"))?;
    let subject =
        name::to_rfc4514(subject_der).ok_or_else(|| malformed("subject is not a valid Name"))?;

    let client_auth_eku = cert
        .extended_key_usage()
        .map_err(|e| malformed(format!("extendedKeyUsage: {e}")))?
        .is_some_and(|eku| eku.value.client_auth);

    let identity = DeviceIdentity {
        device_id,
        id_source,
        serial: serial_hex(cert.raw_serial()),
        fingerprint: Sha256::digest(der).into(),
        spki_sha256: Sha256::digest(cert.public_key().raw).into(),
        not_before,
        not_after,
        issuer,
        subject,
        dns_sans,
        uri_sans,
        attestation: utf8_extension(&cert, ATTESTATION_FORMAT_DER),
        platform: utf8_extension(&cert, DEVICE_PLATFORM_DER),
    };
    Ok((identity, LeafFacts { client_auth_eku }))
}

/// Lowercase hex of a certificate serial as encoded, without the DER sign octet.
///
/// Leading zero octets are dropped (keeping one for the serial 0): in DER (X.690 §8.3.2) the only
/// possible leading 00 is the sign octet of a serial whose first octet is ≥ 0x80, so this equals
/// "strip the sign octet" for every well-formed certificate, and it gives the same string for
/// `008a01`, `8a01` and `8A:01` written by a human (see `inventory::normalize_serial`).
pub fn serial_hex(raw: &[u8]) -> String {
    let first_nonzero = raw.iter().position(|&b| b != 0);
    let trimmed = match first_nonzero {
        Some(i) => &raw[i..],
        None if raw.is_empty() => raw,
        None => &raw[raw.len() - 1..],
    };
    hex::encode(trimmed)
}

/// Candidate ids per source; `None` marks a value that is present but unusable.
#[derive(Default)]
struct Candidates {
    permanent: Vec<Option<String>>,
    hardware: Vec<Option<String>>,
    spiffe: Vec<Option<String>>,
}

impl Candidates {
    fn choose(&self) -> Option<(String, IdSource)> {
        let (values, source) = [
            (&self.permanent, IdSource::PermanentIdentifier),
            (&self.hardware, IdSource::HardwareModuleName),
            (&self.spiffe, IdSource::SpiffeUri),
        ]
        .into_iter()
        .find(|(values, _)| !values.is_empty())?;
        let id = single_value(values)?;
        // A device SPIFFE URI must agree with the winning source (module docs).
        if source != IdSource::SpiffeUri
            && self
                .spiffe
                .iter()
                .any(|uri_id| uri_id.as_deref() != Some(id))
        {
            return None;
        }
        Some((id.to_owned(), source))
    }
}

/// The one value all entries agree on, if they do and all are usable.
fn single_value(values: &[Option<String>]) -> Option<&str> {
    let first = values.first()?.as_deref()?;
    values
        .iter()
        .all(|v| v.as_deref() == Some(first))
        .then_some(first)
}

/// A device id we are willing to carry: non-empty, bounded, no control characters (it ends up
/// in headers and log lines).
fn acceptable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DEVICE_ID_LEN && !id.chars().any(char::is_control)
}

/// RFC 4043 §2:
/// `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL,
///                                     assigner OBJECT IDENTIFIER OPTIONAL }`,
/// inside the otherName's `[0] EXPLICIT`. "When the identifierValue field is absent, then the
/// value of the serialNumber attribute … from the deepest RDN of the subject field is used."
fn permanent_identifier(value: &[u8], subject_der: &[u8]) -> Option<String> {
    let explicit = der::read_only(value, der::TAG_CONTEXT_0_CONSTRUCTED)?;
    let mut fields = der::read_only(explicit, der::TAG_SEQUENCE)?;
    let mut identifier = None;
    if let Some((tlv, rest)) = der::read_tlv(fields) {
        if tlv.tag == der::TAG_UTF8_STRING {
            identifier = Some(std::str::from_utf8(tlv.value).ok()?.to_owned());
            fields = rest;
        }
    }
    // The assigner is read only to check the structure; uniqueness per assigner is the CA's
    // business (it is the only assigner we trust).
    if !fields.is_empty() {
        let (assigner, rest) = der::read_tlv(fields)?;
        if assigner.tag != der::TAG_OID || !rest.is_empty() {
            return None;
        }
    }
    let id = match identifier {
        Some(id) => id,
        None => subject_serial_number(subject_der)?,
    };
    acceptable_id(&id).then_some(id)
}

/// The serialNumber attribute of the deepest (last encoded) RDN of the subject.
fn subject_serial_number(subject_der: &[u8]) -> Option<String> {
    let rdns = name::parse(subject_der)?;
    let deepest = rdns.last()?;
    let attr = deepest
        .iter()
        .find(|attr| attr.oid == name::OID_SERIAL_NUMBER)?;
    name::decode_string(attr.value)
}

/// RFC 4108 §5:
/// `HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`.
/// The serial is binary in general; printable ASCII serials are used as they are (that is how
/// they are printed on the device and in the inventory), others as lowercase hex.
fn hardware_module_name(value: &[u8]) -> Option<String> {
    let explicit = der::read_only(value, der::TAG_CONTEXT_0_CONSTRUCTED)?;
    let fields = der::read_only(explicit, der::TAG_SEQUENCE)?;
    let (hw_type, rest) = der::read_tlv(fields)?;
    if hw_type.tag != der::TAG_OID {
        return None;
    }
    let serial = der::read_only(rest, der::TAG_OCTET_STRING)?;
    if serial.is_empty() {
        return None;
    }
    let id = match std::str::from_utf8(serial) {
        Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => s.to_owned(),
        _ => hex::encode(serial),
    };
    acceptable_id(&id).then_some(id)
}

/// `Some(Some(id))` for a well-formed device URI of our trust domain, `Some(None)` for a device
/// URI of our trust domain whose id is unusable, `None` for any other URI.
///
/// The id must be one SPIFFE path segment (SPIFFE-ID §2.2: letters, digits, `.`, `-`, `_`; not
/// `.` or `..`), which also rules out `/`, `%`-escapes, queries and fragments.
fn spiffe_device_id(uri: &str, trust_domain: &str) -> Option<Option<String>> {
    if trust_domain.is_empty() {
        return None;
    }
    let id = uri
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/device/")?;
    Some(is_spiffe_device_segment(id).then(|| id.to_owned()))
}

/// Whether `id` can be the last segment of a device SPIFFE URI (SPIFFE-ID §2.2: letters,
/// digits, `.`, `-`, `_`; not `.` or `..`; bounded like every device id). The CA refuses to
/// issue for an id that fails this: the parser above would then see an unusable URI and name
/// no device at all.
pub fn is_spiffe_device_segment(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

// ---------------------------------------------------------------------------------------------
// Encoding: the issuing side of the same names. The CA (`ca::pki`) and the development PKI
// (`portcullis::devpki`) build device certificates with these, so what is written is exactly
// what `parse_leaf` reads. rcgen cannot express these names itself: its `SanType::OtherName`
// holds only a UTF8String, while RFC 4043 and RFC 4108 values are SEQUENCEs.
// ---------------------------------------------------------------------------------------------

/// The device SPIFFE URI `spiffe://<trust_domain>/device/<id>` (ARCHITECTURE.md, identity
/// model); `None` when `id` is not a single SPIFFE path segment ([`is_spiffe_device_segment`])
/// or the trust domain is empty or contains `/`.
pub fn spiffe_device_uri(trust_domain: &str, device_id: &str) -> Option<String> {
    let domain_ok = !trust_domain.is_empty()
        && trust_domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    (domain_ok && is_spiffe_device_segment(device_id))
        .then(|| format!("spiffe://{trust_domain}/device/{device_id}"))
}

/// GeneralName `otherName` (RFC 5280 §4.2.1.6, `[0] IMPLICIT OtherName`, constructed 0xA0)
/// holding a PermanentIdentifier (RFC 4043 §2):
/// `SEQUENCE { identifierValue UTF8String OPTIONAL, assigner OBJECT IDENTIFIER OPTIONAL }`
/// inside the otherName's `[0] EXPLICIT` value. `None` if `assigner` is not a dotted OID.
pub fn encode_permanent_identifier_san(value: &str, assigner: Option<&str>) -> Option<Vec<u8>> {
    let mut fields = tlv(TAG_UTF8, value.as_bytes());
    if let Some(oid) = assigner {
        fields.extend(tlv(TAG_OID, &oid_content(oid)?));
    }
    Some(other_name(PERMANENT_IDENTIFIER_DER, &tlv(TAG_SEQ, &fields)))
}

/// GeneralName `otherName` holding a HardwareModuleName (RFC 4108 §5):
/// `SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`. `None` if `hw_type` is
/// not a dotted OID or the serial is empty (the parser refuses an empty serial).
pub fn encode_hardware_module_name_san(hw_type: &str, serial: &[u8]) -> Option<Vec<u8>> {
    if serial.is_empty() {
        return None;
    }
    let mut fields = tlv(TAG_OID, &oid_content(hw_type)?);
    fields.extend(tlv(TAG_OCTETS, serial));
    Some(other_name(HARDWARE_MODULE_NAME_DER, &tlv(TAG_SEQ, &fields)))
}

/// GeneralName `[6] uniformResourceIdentifier` (IA5String, RFC 5280 §4.2.1.6).
pub fn encode_uri_san(uri: &str) -> Vec<u8> {
    tlv(0x86, uri.as_bytes())
}

/// GeneralName `[2] dNSName` (IA5String).
pub fn encode_dns_san(name: &str) -> Vec<u8> {
    tlv(0x82, name.as_bytes())
}

/// GeneralName `[7] iPAddress`: 4 or 16 octets in network order.
pub fn encode_ip_san(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => tlv(0x87, &v4.octets()),
        std::net::IpAddr::V6(v6) => tlv(0x87, &v6.octets()),
    }
}

/// The subjectAltName extension value: `GeneralNames ::= SEQUENCE SIZE (1..MAX) OF
/// GeneralName` (RFC 5280 §4.2.1.6), from already-encoded GeneralNames.
pub fn encode_subject_alt_names(names: &[Vec<u8>]) -> Vec<u8> {
    tlv(TAG_SEQ, &names.concat())
}

/// The value of a Portcullis UTF8String extension ([`OID_ATTESTATION_FORMAT`],
/// [`OID_DEVICE_PLATFORM`]): one DER UTF8String, which `utf8_extension` reads back.
pub fn encode_utf8_extension(text: &str) -> Vec<u8> {
    tlv(TAG_UTF8, text.as_bytes())
}

const TAG_SEQ: u8 = 0x30;
const TAG_UTF8: u8 = 0x0c;
const TAG_OID: u8 = 0x06;
const TAG_OCTETS: u8 = 0x04;

/// `[0] IMPLICIT OtherName { type-id, [0] EXPLICIT value }` (RFC 5280 §4.2.1.6).
fn other_name(type_id: &[u8], value: &[u8]) -> Vec<u8> {
    let mut body = tlv(TAG_OID, type_id);
    body.extend(tlv(0xa0, value));
    tlv(0xa0, &body)
}

/// Content octets of a dotted OBJECT IDENTIFIER (X.690 §8.19): the first two arcs as
/// `40 * a + b`, every arc base-128 with continuation bits. `None` for anything that is not
/// `0|1|2 . arc (. arc)*` with the second arc below 40 under 0 and 1, or has leading zeros.
pub fn oid_content(dotted: &str) -> Option<Vec<u8>> {
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|a| {
            let ok = !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (a == "0" || !a.starts_with('0'));
            ok.then(|| a.parse::<u64>().ok()).flatten()
        })
        .collect::<Option<_>>()?;
    let (&first, &second) = (arcs.first()?, arcs.get(1)?);
    if first > 2 || (first < 2 && second >= 40) {
        return None;
    }
    let mut out = Vec::new();
    let head = first.checked_mul(40)?.checked_add(second)?;
    for arc in std::iter::once(head).chain(arcs[2..].iter().copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    Some(out)
}

/// One DER TLV with a definite length (X.690 §8.1.3).
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// A Portcullis extension holding one DER UTF8String. Absent, duplicated or malformed → `None`
/// (criteria reading it then fail, which is the safe side).
fn utf8_extension(cert: &X509Certificate<'_>, oid: &[u8]) -> Option<String> {
    let mut matching = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.as_bytes() == oid);
    let ext = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    let text = std::str::from_utf8(der::read_only(ext.value, der::TAG_UTF8_STRING)?).ok()?;
    acceptable_id(text).then(|| text.to_owned())
}

/// Seconds since the epoch (possibly negative) as a `SystemTime`, without overflow panics.
pub(crate) fn system_time(unix: i64) -> Option<SystemTime> {
    if unix >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(unix.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(unix.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, DeviceCert, San};

    const TD: &str = "corp.example";

    fn parse(cert: &DeviceCert) -> DeviceIdentity {
        DeviceIdentity::from_der(cert.der(), TD).expect("parses")
    }

    #[test]
    fn oid_constants_agree() {
        for (der, dotted) in [
            (PERMANENT_IDENTIFIER_DER, OID_PERMANENT_IDENTIFIER),
            (HARDWARE_MODULE_NAME_DER, OID_HARDWARE_MODULE_NAME),
            (ATTESTATION_FORMAT_DER, OID_ATTESTATION_FORMAT),
            (DEVICE_PLATFORM_DER, OID_DEVICE_PLATFORM),
        ] {
            assert_eq!(der::oid_to_string(der).as_deref(), Some(dotted));
        }
        for (arcs, dotted) in [
            (OID_ATTESTATION_FORMAT_ARCS, OID_ATTESTATION_FORMAT),
            (OID_DEVICE_PLATFORM_ARCS, OID_DEVICE_PLATFORM),
        ] {
            let s: Vec<String> = arcs.iter().map(u64::to_string).collect();
            assert_eq!(s.join("."), dotted);
        }
    }

    #[test]
    fn permanent_identifier_wins_and_fields_are_read() {
        let ca = testutil::ca("Portcullis Test Root");
        let cert = testutil::device(&ca)
            .sans(vec![
                San::Permanent {
                    value: Some("SN-1234"),
                    assigner: true,
                },
                San::Spiffe(TD, "SN-1234"),
                San::Dns("laptop.corp.example"),
            ])
            .attestation("tpm")
            .platform("macos")
            .serial(&[0x8a, 0x01])
            .build();
        let id = parse(&cert);
        assert_eq!(id.device_id.as_deref(), Some("SN-1234"));
        assert_eq!(id.id_source, Some(IdSource::PermanentIdentifier));
        assert_eq!(id.serial, "8a01", "sign octet dropped");
        assert_eq!(id.attestation.as_deref(), Some("tpm"));
        assert_eq!(id.platform.as_deref(), Some("macos"));
        assert_eq!(id.dns_sans, vec!["laptop.corp.example"]);
        assert_eq!(id.uri_sans, vec!["spiffe://corp.example/device/SN-1234"]);
        assert_eq!(id.issuer, "CN=Portcullis Test Root,O=Portcullis Test");
        assert_eq!(id.subject, "CN=device");
        assert_eq!(id.fingerprint, <[u8; 32]>::from(Sha256::digest(cert.der())));
        assert_eq!(id.fingerprint_hex().len(), 64);
        assert_ne!(id.spki_sha256, id.fingerprint);
        assert_eq!(id.not_before, cert.not_before);
        assert_eq!(id.not_after, cert.not_after);
    }

    #[test]
    fn permanent_identifier_without_value_uses_subject_serial_number() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .sans(vec![San::Permanent {
                value: None,
                assigner: true,
            }])
            .subject_serial_number("SER-77")
            .build();
        let id = parse(&cert);
        assert_eq!(id.device_id.as_deref(), Some("SER-77"));
        assert_eq!(id.id_source, Some(IdSource::PermanentIdentifier));

        // …and without a serialNumber there is no id.
        let cert = testutil::device(&ca)
            .sans(vec![San::Permanent {
                value: None,
                assigner: false,
            }])
            .build();
        assert_eq!(parse(&cert).device_id, None);
    }

    #[test]
    fn hardware_module_name_printable_and_binary() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .sans(vec![San::Hardware(b"TPM-0042")])
            .build();
        let id = parse(&cert);
        assert_eq!(id.device_id.as_deref(), Some("TPM-0042"));
        assert_eq!(id.id_source, Some(IdSource::HardwareModuleName));

        let cert = testutil::device(&ca)
            .sans(vec![San::Hardware(&[0x00, 0xff, 0x10])])
            .build();
        assert_eq!(parse(&cert).device_id.as_deref(), Some("00ff10"));

        // A space is not "printable" for us: hex.
        let cert = testutil::device(&ca)
            .sans(vec![San::Hardware(b"a b")])
            .build();
        assert_eq!(parse(&cert).device_id.as_deref(), Some("612062"));
    }

    #[test]
    fn permanent_identifier_beats_hardware_module_name() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .sans(vec![
                San::Hardware(b"HW-1"),
                San::Permanent {
                    value: Some("PI-1"),
                    assigner: false,
                },
            ])
            .build();
        let id = parse(&cert);
        assert_eq!(id.device_id.as_deref(), Some("PI-1"));
        assert_eq!(id.id_source, Some(IdSource::PermanentIdentifier));
    }

    #[test]
    fn spiffe_uri_only_for_our_trust_domain() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .sans(vec![San::Spiffe(TD, "dev-9")])
            .build();
        let id = parse(&cert);
        assert_eq!(id.device_id.as_deref(), Some("dev-9"));
        assert_eq!(id.id_source, Some(IdSource::SpiffeUri));

        let other = DeviceIdentity::from_der(cert.der(), "other.example").unwrap();
        assert_eq!(other.device_id, None);
        assert_eq!(other.uri_sans, vec!["spiffe://corp.example/device/dev-9"]);

        // A longer trust domain that merely starts with ours does not count.
        let cert = testutil::device(&ca)
            .sans(vec![San::Spiffe("corp.example.evil", "dev-9")])
            .build();
        assert_eq!(parse(&cert).device_id, None);
    }

    #[test]
    fn spiffe_uri_rejects_bad_ids() {
        let ca = testutil::ca("root");
        for bad in ["", "a/b", "..", "a%2Fb", "a?x=1", "a#f"] {
            let cert = testutil::device(&ca)
                .sans(vec![San::Spiffe(TD, bad)])
                .build();
            assert_eq!(parse(&cert).device_id, None, "{bad:?}");
        }
        // A non-device path of our trust domain is simply not an id.
        let cert = testutil::device(&ca)
            .sans(vec![San::Uri("spiffe://corp.example/workload/x")])
            .build();
        assert_eq!(parse(&cert).device_id, None);
    }

    #[test]
    fn ambiguous_identities_name_no_device() {
        let ca = testutil::ca("root");
        let two = testutil::device(&ca)
            .sans(vec![
                San::Permanent {
                    value: Some("A"),
                    assigner: false,
                },
                San::Permanent {
                    value: Some("B"),
                    assigner: false,
                },
            ])
            .build();
        assert_eq!(parse(&two).device_id, None);

        let disagreeing_uri = testutil::device(&ca)
            .sans(vec![
                San::Permanent {
                    value: Some("A"),
                    assigner: false,
                },
                San::Spiffe(TD, "B"),
            ])
            .build();
        assert_eq!(parse(&disagreeing_uri).device_id, None);

        let same_twice = testutil::device(&ca)
            .sans(vec![
                San::Permanent {
                    value: Some("A"),
                    assigner: false,
                },
                San::Permanent {
                    value: Some("A"),
                    assigner: true,
                },
            ])
            .build();
        assert_eq!(parse(&same_twice).device_id.as_deref(), Some("A"));

        let control = testutil::device(&ca)
            .sans(vec![San::Permanent {
                value: Some("A\r\nX-Evil: 1"),
                assigner: false,
            }])
            .build();
        assert_eq!(parse(&control).device_id, None);
    }

    #[test]
    fn malformed_other_names_are_not_ids() {
        let ca = testutil::ca("root");
        // otherName PermanentIdentifier whose value is a bare UTF8String (no SEQUENCE).
        let cert = testutil::device(&ca)
            .sans(vec![San::RawOtherName(
                PERMANENT_IDENTIFIER_DER,
                vec![0x0c, 0x01, b'x'],
            )])
            .build();
        assert_eq!(parse(&cert).device_id, None);
        // HardwareModuleName missing its serial.
        let cert = testutil::device(&ca)
            .sans(vec![San::RawOtherName(
                HARDWARE_MODULE_NAME_DER,
                vec![0x30, 0x03, 0x06, 0x01, 0x2a],
            )])
            .build();
        assert_eq!(parse(&cert).device_id, None);
    }

    #[test]
    fn no_sans_no_id() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).sans(vec![]).build();
        let id = parse(&cert);
        assert_eq!((id.device_id, id.id_source), (None, None));
        assert_eq!(id.attestation, None);
    }

    #[test]
    fn malformed_der_is_an_error_not_a_panic() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).build();
        let der = cert.der();
        assert!(matches!(
            DeviceIdentity::from_der(&[], TD),
            Err(IdentityError::Malformed(_))
        ));
        assert!(DeviceIdentity::from_der(b"not a certificate", TD).is_err());
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert!(DeviceIdentity::from_der(&trailing, TD).is_err());
        // Every truncation and a sweep of single-byte corruptions: errors or parses, never panics.
        for len in 0..der.len() {
            assert!(DeviceIdentity::from_der(&der[..len], TD).is_err());
        }
        for i in 0..der.len() {
            let mut bad = der.to_vec();
            bad[i] ^= 0xff;
            let _ = DeviceIdentity::from_der(&bad, TD);
        }
    }

    #[test]
    fn encoders_round_trip_through_the_parser() {
        // DER of the whole SAN, checked by parsing a certificate carrying it.
        assert_eq!(
            oid_content(OID_PERMANENT_IDENTIFIER).as_deref(),
            Some(PERMANENT_IDENTIFIER_DER)
        );
        assert_eq!(
            oid_content(OID_ATTESTATION_FORMAT).as_deref(),
            Some(ATTESTATION_FORMAT_DER)
        );
        for bad in ["", "1", "3.1", "1.40", "1.02", "1..2", "1.a"] {
            assert_eq!(oid_content(bad), None, "{bad}");
        }
        assert_eq!(oid_content("2.999").unwrap(), vec![0x88, 0x37]);
        let pi = encode_permanent_identifier_san("SN-1", Some("1.3.6.1.4.1.311")).unwrap();
        assert!(encode_permanent_identifier_san("SN-1", Some("x")).is_none());
        let hw = encode_hardware_module_name_san("1.3.6.1.4.1.41482", b"HW-9").unwrap();
        assert!(encode_hardware_module_name_san("1.3.6.1.4.1.41482", b"").is_none());
        let uri = spiffe_device_uri(TD, "SN-1").unwrap();
        assert_eq!(uri, "spiffe://corp.example/device/SN-1");
        assert_eq!(spiffe_device_uri(TD, "a/b"), None);
        assert_eq!(spiffe_device_uri("a/b", "x"), None);
        let ca = testutil::ca("root");
        for (names, want, source) in [
            (
                vec![pi.clone(), encode_uri_san(&uri)],
                "SN-1",
                IdSource::PermanentIdentifier,
            ),
            (vec![hw], "HW-9", IdSource::HardwareModuleName),
        ] {
            let mut params = rcgen::CertificateParams::default();
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    encode_subject_alt_names(&names),
                ));
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca.issuer()).unwrap();
            let id = DeviceIdentity::from_der(cert.der(), TD).unwrap();
            assert_eq!(id.device_id.as_deref(), Some(want));
            assert_eq!(id.id_source, Some(source));
        }
        assert_eq!(encode_utf8_extension("step"), b"\x0c\x04step".to_vec());
        assert_eq!(
            encode_ip_san("10.0.0.1".parse().unwrap()),
            vec![0x87, 4, 10, 0, 0, 1]
        );
        assert_eq!(encode_dns_san("a"), vec![0x82, 1, b'a']);
    }

    #[test]
    fn serial_hex_forms() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x0a, 0x1b]), "0a1b");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
    }

    #[test]
    fn system_time_handles_extremes() {
        assert_eq!(system_time(0), Some(UNIX_EPOCH));
        assert_eq!(
            system_time(-1),
            UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        // Year 9999 (GeneralizedTime's "no well-defined expiration", RFC 5280 §4.1.2.5).
        assert!(system_time(253_402_300_799).is_some());
    }
}
