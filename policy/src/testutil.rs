//! Test certificates: a root (and intermediate) CA and device certificates carrying the SANs and
//! extensions a Portcullis CA emits.
//!
//! rcgen can only write otherName values as UTF8String, but PermanentIdentifier and
//! HardwareModuleName are SEQUENCEs, so the whole subjectAltName is written by hand (below) as a
//! custom extension.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;

use crate::identity::{OID_ATTESTATION_FORMAT_ARCS, OID_DEVICE_PLATFORM_ARCS};

pub const TRUST_DOMAIN: &str = "corp.example";
/// The tests' "now": 2030-03-17T17:46:40Z. Fixed, so nothing depends on the wall clock.
pub const T0_UNIX: u64 = 1_900_000_000;

pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_UNIX)
}

pub fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

impl Ca {
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(cn: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis Test");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

/// A self-signed root, valid ten years around T0.
pub fn ca(cn: &str) -> Ca {
    ca_with(cn, &rcgen::PKCS_ECDSA_P256_SHA256)
}

pub fn ca_with(cn: &str, alg: &'static SignatureAlgorithm) -> Ca {
    let params = ca_params(cn, t0() - hours(24 * 3650), t0() + hours(24 * 3650));
    let key = KeyPair::generate_for(alg).expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        params,
        key,
    }
}

/// An intermediate CA signed by `parent`, valid over `[not_before, not_after]`.
pub fn intermediate(parent: &Ca, cn: &str, not_before: SystemTime, not_after: SystemTime) -> Ca {
    let params = ca_params(cn, not_before, not_after);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &parent.issuer()).expect("signed");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        params,
        key,
    }
}

/// One subjectAltName entry.
#[derive(Debug, Clone)]
pub enum San<'a> {
    /// RFC 4043 PermanentIdentifier; `assigner` adds an assigner OID.
    Permanent {
        value: Option<&'a str>,
        assigner: bool,
    },
    /// RFC 4108 HardwareModuleName with this serial (hwType: a TPM-ish OID).
    Hardware(&'a [u8]),
    /// `spiffe://<td>/device/<id>`.
    Spiffe(&'a str, &'a str),
    Uri(&'a str),
    Dns(&'a str),
    /// otherName with this OID (DER content octets) and this value inside `[0] EXPLICIT`.
    RawOtherName(&'a [u8], Vec<u8>),
}

pub struct DeviceBuilder<'a> {
    issuer: &'a Ca,
    sans: Vec<San<'a>>,
    attestation: Option<&'a str>,
    platform: Option<&'a str>,
    serial: Option<Vec<u8>>,
    subject_serial_number: Option<&'a str>,
    not_before: SystemTime,
    not_after: SystemTime,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    is_ca: bool,
    alg: &'static SignatureAlgorithm,
}

/// A device certificate issued by `issuer`: PermanentIdentifier `dev-1`, the matching SPIFFE URI,
/// a DNS name, EKU clientAuth, valid `[T0 - 1h, T0 + 23h]`.
pub fn device(issuer: &Ca) -> DeviceBuilder<'_> {
    DeviceBuilder {
        issuer,
        sans: vec![
            San::Permanent {
                value: Some("dev-1"),
                assigner: false,
            },
            San::Spiffe(TRUST_DOMAIN, "dev-1"),
            San::Dns("dev-1.corp.example"),
        ],
        attestation: None,
        platform: None,
        serial: None,
        subject_serial_number: None,
        not_before: t0() - hours(1),
        not_after: t0() + hours(23),
        ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
        is_ca: false,
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    }
}

pub struct DeviceCert {
    pub der: CertificateDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl DeviceCert {
    pub fn der(&self) -> &[u8] {
        self.der.as_ref()
    }
}

impl<'a> DeviceBuilder<'a> {
    pub fn sans(mut self, sans: Vec<San<'a>>) -> Self {
        self.sans = sans;
        self
    }
    pub fn attestation(mut self, format: &'a str) -> Self {
        self.attestation = Some(format);
        self
    }
    pub fn platform(mut self, platform: &'a str) -> Self {
        self.platform = Some(platform);
        self
    }
    pub fn serial(mut self, serial: &[u8]) -> Self {
        self.serial = Some(serial.to_vec());
        self
    }
    pub fn subject_serial_number(mut self, value: &'a str) -> Self {
        self.subject_serial_number = Some(value);
        self
    }
    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
    pub fn ekus(mut self, ekus: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.ekus = ekus;
        self
    }
    pub fn ca(mut self) -> Self {
        self.is_ca = true;
        self
    }
    pub fn alg(mut self, alg: &'static SignatureAlgorithm) -> Self {
        self.alg = alg;
        self
    }

    pub fn build(self) -> DeviceCert {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "device");
        if let Some(sn) = self.subject_serial_number {
            dn.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(sn.try_into().expect("printable")),
            );
        }
        params.distinguished_name = dn;
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        params.serial_number = self.serial.map(Into::into);
        params.extended_key_usages = self.ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if !self.sans.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    san_extension(&self.sans),
                ));
        }
        if let Some(format) = self.attestation {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_ATTESTATION_FORMAT_ARCS,
                    utf8_string(format),
                ));
        }
        if let Some(platform) = self.platform {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_DEVICE_PLATFORM_ARCS,
                    utf8_string(platform),
                ));
        }
        let key = KeyPair::generate_for(self.alg).expect("key");
        let cert = params
            .signed_by(&key, &self.issuer.issuer())
            .expect("signed");
        DeviceCert {
            der: cert.der().clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// DER TLV with a definite length (short or long form).
pub fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

pub fn utf8_string(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

const PERMANENT_IDENTIFIER: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 8, 3];
const HARDWARE_MODULE_NAME: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 8, 4];
/// 1.2.840.113549.1.1.1 — any OID will do as the hwType / assigner of a test.
const SOME_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];

fn other_name(oid: &[u8], value: &[u8]) -> Vec<u8> {
    // otherName [0] IMPLICIT SEQUENCE { type-id OID, value [0] EXPLICIT ANY } (RFC 5280 §4.2.1.6)
    let mut inner = tlv(0x06, oid);
    inner.extend(tlv(0xa0, value));
    tlv(0xa0, &inner)
}

/// `SubjectAltName ::= GeneralNames ::= SEQUENCE OF GeneralName`.
pub fn san_extension(sans: &[San<'_>]) -> Vec<u8> {
    let mut names = Vec::new();
    for san in sans {
        let name = match san {
            San::Permanent { value, assigner } => {
                let mut fields = Vec::new();
                if let Some(v) = value {
                    fields.extend(utf8_string(v));
                }
                if *assigner {
                    fields.extend(tlv(0x06, SOME_OID));
                }
                other_name(PERMANENT_IDENTIFIER, &tlv(0x30, &fields))
            }
            San::Hardware(serial) => {
                let mut fields = tlv(0x06, SOME_OID);
                fields.extend(tlv(0x04, serial));
                other_name(HARDWARE_MODULE_NAME, &tlv(0x30, &fields))
            }
            San::Spiffe(td, id) => tlv(0x86, format!("spiffe://{td}/device/{id}").as_bytes()),
            San::Uri(uri) => tlv(0x86, uri.as_bytes()),
            San::Dns(dns) => tlv(0x82, dns.as_bytes()),
            San::RawOtherName(oid, value) => other_name(oid, value),
        };
        names.extend(name);
    }
    tlv(0x30, &names)
}
