//! What the agent reads from its own certificate: the device id (SAN otherName
//! PermanentIdentifier, RFC 4043 §2, as the CA issues it), serial and validity, and the ARI
//! certificate identifier (RFC 9773 §4.1).

use std::time::{Duration, SystemTime};

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{AgentError, Result};

const OID_PERMANENT_IDENTIFIER: &str = "1.3.6.1.5.5.7.8.3";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub device_id: Option<String>,
    /// Lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub spki: Vec<u8>,
    /// The ARI CertificateIdentifier: base64url(AKI keyIdentifier) "." base64url(serial DER
    /// contents) (RFC 9773 §4.1), when the certificate has an AKI.
    pub ari_id: Option<String>,
}

fn unix(t: i64) -> SystemTime {
    if t >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Reads a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| AgentError::Invalid(format!("the device certificate does not parse: {e}")))?;
    let mut device_id = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::OtherName(oid, value) = name {
                        if oid.to_id_string() == OID_PERMANENT_IDENTIFIER {
                            device_id = permanent_identifier_value(value);
                        }
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    let serial = cert.raw_serial();
    Ok(CertSummary {
        device_id,
        serial: hex::encode(serial),
        not_before: unix(cert.validity().not_before.timestamp()),
        not_after: unix(cert.validity().not_after.timestamp()),
        spki: cert.public_key().raw.to_vec(),
        ari_id: aki.map(|k| format!("{}.{}", B64.encode(k), B64.encode(serial))),
    })
}

/// `[0] EXPLICIT PermanentIdentifier` → identifierValue (UTF8String).
fn permanent_identifier_value(value: &[u8]) -> Option<String> {
    let inner = strip(value, 0xa0)?;
    let seq = strip(inner, 0x30)?;
    let s = strip(seq.get(..2 + usize::from(*seq.get(1)?))?, 0x0c)?;
    String::from_utf8(s.to_vec()).ok()
}

/// The contents of a short-form (< 128 bytes) DER element with `tag`, or of a long-form one.
fn strip(buf: &[u8], tag: u8) -> Option<&[u8]> {
    if *buf.first()? != tag {
        return None;
    }
    let len = crate::der::element_len(buf)?;
    let header = len - content_len(buf)?;
    buf.get(header..len)
}

fn content_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.get(1)?;
    if first < 0x80 {
        Some(usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        Some(
            buf.get(2..2 + n)?
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b)),
        )
    }
}

/// PEM chain → DER certificates (RFC 7468).
pub fn pem_chain(pem: &str) -> Result<Vec<Vec<u8>>> {
    let certs: std::result::Result<Vec<_>, _> =
        rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| AgentError::Invalid(format!("PEM chain: {e}")))?;
    if certs.is_empty() {
        return Err(AgentError::Invalid("PEM chain: no CERTIFICATE".into()));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, OtherNameValue, SanType};

    #[test]
    fn certificate_summary_reads_device_id_serial_and_ari_id() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serial_number = Some(vec![0x00, 0x8f, 0x01].into());
        params.subject_alt_names = vec![SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 3],
            OtherNameValue::Utf8String("unused".into()),
        ))];
        // rcgen writes otherName values as a bare UTF8String; the CA writes the RFC 4043
        // SEQUENCE. Build the CA's shape by hand.
        params.subject_alt_names.clear();
        let san = crate::der::tlv(
            0x30,
            &crate::der::permanent_identifier_other_name("laptop-7"),
        );
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                san,
            ));
        params.use_authority_key_identifier_extension = true;
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![1, 2, 3, 4]);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let s = summarize(cert.der()).unwrap();
        assert_eq!(s.device_id.as_deref(), Some("laptop-7"));
        assert_eq!(s.serial, "008f01");
        assert_eq!(s.ari_id.as_deref(), Some("AQIDBA.AI8B"));
        assert!(s.not_before < s.not_after);
        let pem = pem_encode("CERTIFICATE", cert.der());
        assert_eq!(pem_chain(&pem).unwrap(), vec![cert.der().to_vec()]);
        assert!(pem_chain("nothing").is_err());
        assert!(summarize(b"\x30\x00").is_err());
    }
}
