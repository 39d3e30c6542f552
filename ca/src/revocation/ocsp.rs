//! An OCSP responder (RFC 6960) for the certificates of the intermediate.
//!
//! - Requests (§4.1.1) are parsed by a strict DER reader ([`super::der`]); anything that is
//!   not a well-formed `OCSPRequest` is answered `malformedRequest` (§2.3), never a panic.
//! - Responses (§4.2.1) are `id-pkix-ocsp-basic`, signed by a delegated responder
//!   certificate (§4.2.2.2: issued by the CA itself, EKU id-kp-OCSPSigning, with
//!   id-pkix-ocsp-nocheck so clients do not ask about the responder in turn, §4.2.2.2.1).
//!   The responder's key never leaves memory; its certificate is short-lived and re-issued
//!   before it expires ([`Responder::is_due`]).
//! - Status (§2.2): `good` for a certificate we issued and did not revoke, `revoked` with the
//!   time and CRLReason (§4.2.1, RevokedInfo) — certificateHold for a quarantined device —
//!   and `unknown` for a serial we never issued. Released holds are `good` again.
//! - The nonce extension (§4.4.1, RFC 8954) is echoed when the request carries one.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use ring::digest;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::der::{self, Malformed, Reader};
use crate::clock::{from_unix_seconds, unix_seconds};
use crate::pki::{pem, Authority, PkiError, Serial, BACKDATE};
use crate::store::CertStatus;

/// How long a delegated responder certificate lives. Short, because a responder
/// certificate with ocsp-nocheck cannot itself be revoked (RFC 6960 §4.2.2.2.1: "the CA
/// SHOULD issue the responder a certificate with a short lifetime and renew it frequently").
pub const RESPONDER_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a response is valid (nextUpdate − thisUpdate). Responses are signed per request
/// from the store, so a relying party that caches one sees a status change this late at most.
pub const RESPONSE_VALIDITY: Duration = Duration::from_secs(3600);
/// More single requests than this in one OCSPRequest is refused: nothing we know sends more
/// than one, and each costs a lookup.
pub const MAX_REQUESTS: usize = 16;
/// RFC 8954 §2.1: nonces of up to 32 octets must be accepted; longer ones are not echoed.
pub const MAX_NONCE_EXTN_VALUE: usize = 32 + 2;

/// id-pkix-ocsp-basic (RFC 6960 §4.2.1): 1.3.6.1.5.5.7.48.1.1
const OID_OCSP_BASIC: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 48, 1, 1];
/// id-pkix-ocsp-nonce (§4.4.1): 1.3.6.1.5.5.7.48.1.2
const OID_OCSP_NONCE: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 48, 1, 2];
/// id-pkix-ocsp-nocheck (§4.2.2.2.1): 1.3.6.1.5.5.7.48.1.5
const OID_OCSP_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];
/// ecdsa-with-SHA256 (RFC 5758 §3.2), the responder key's algorithm; parameters absent.
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2];
/// CertID hash algorithms (RFC 6960 §4.1.1, RFC 5754): SHA-1 is what OpenSSL and nginx send.
const OID_SHA1: &[u8] = &[0x2b, 14, 3, 2, 26];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 1, 101, 3, 4, 2, 1];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 1, 101, 3, 4, 2, 2];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 1, 101, 3, 4, 2, 3];

/// OCSPResponseStatus (RFC 6960 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    Unauthorized = 6,
}

/// An unsuccessful response: just the status (§4.2.1, responseBytes absent).
pub fn error_response(status: ResponseStatus) -> Vec<u8> {
    der::sequence(&[&der::tlv(der::ENUMERATED, &[status as u8])])
}

/// One CertID of a request (§4.1.1), kept raw so the response can echo it byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId<'a> {
    pub raw: &'a [u8],
    /// The hash algorithm's OID content octets.
    pub hash_algorithm: &'a [u8],
    pub issuer_name_hash: &'a [u8],
    pub issuer_key_hash: &'a [u8],
    /// The serialNumber INTEGER's content octets.
    pub serial: &'a [u8],
}

/// A parsed OCSPRequest: the CertIDs asked about and the nonce extension's value, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub cert_ids: Vec<CertId<'a>>,
    /// The nonce extension's extnValue content octets (echoed verbatim).
    pub nonce: Option<&'a [u8]>,
}

/// Parses an OCSPRequest (RFC 6960 §4.1.1):
///
/// ```text
/// OCSPRequest ::= SEQUENCE { tbsRequest TBSRequest, optionalSignature [0] EXPLICIT Signature OPTIONAL }
/// TBSRequest  ::= SEQUENCE { version [0] EXPLICIT Version DEFAULT v1,
///                            requestorName [1] EXPLICIT GeneralName OPTIONAL,
///                            requestList SEQUENCE OF Request,
///                            requestExtensions [2] EXPLICIT Extensions OPTIONAL }
/// Request     ::= SEQUENCE { reqCert CertID, singleRequestExtensions [0] EXPLICIT Extensions OPTIONAL }
/// CertID      ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, issuerNameHash OCTET STRING,
///                            issuerKeyHash OCTET STRING, serialNumber CertificateSerialNumber }
/// ```
///
/// A request signature is accepted and not checked: this responder answers anyone
/// (§4.1.2 lets a responder require signatures; none of the clients we serve signs).
pub fn parse_request(input: &[u8]) -> Result<Request<'_>, Malformed> {
    let mut outer = Reader::new(input);
    let request = outer.expect(der::SEQUENCE, "OCSPRequest is not a SEQUENCE")?;
    outer.finish("trailing data after the OCSPRequest")?;
    let mut request = Reader::new(request);
    let tbs = request.expect(der::SEQUENCE, "tbsRequest is not a SEQUENCE")?;
    request.optional(der::context(0))?;
    request.finish("unexpected field after optionalSignature")?;

    let mut tbs = Reader::new(tbs);
    if let Some(version) = tbs.optional(der::context(0))? {
        // Only v1 (0) exists (§4.1.1); DER omits a DEFAULT value, but be lenient about that.
        let mut v = Reader::new(version);
        if v.expect(der::INTEGER, "version is not an INTEGER")? != [0] {
            return Err(Malformed("unsupported OCSP version"));
        }
        v.finish("trailing data in version")?;
    }
    tbs.optional(der::context(1))?;
    let list = tbs.expect(der::SEQUENCE, "requestList is not a SEQUENCE")?;
    let mut nonce = None;
    if let Some(exts) = tbs.optional(der::context(2))? {
        nonce = parse_extensions(exts)?;
    }
    tbs.finish("unexpected field in tbsRequest")?;

    let mut list = Reader::new(list);
    let mut cert_ids = Vec::new();
    while !list.is_empty() {
        if cert_ids.len() == MAX_REQUESTS {
            return Err(Malformed("too many requests"));
        }
        let mut single = Reader::new(list.expect(der::SEQUENCE, "Request is not a SEQUENCE")?);
        let cert_id = single.expect_tlv(der::SEQUENCE, "reqCert is not a SEQUENCE")?;
        if let Some(exts) = single.optional(der::context(0))? {
            // Single-request extensions (e.g. service locator) are understood by nobody
            // here; they are checked for well-formedness and an unknown critical one refused.
            parse_extensions(exts)?;
        }
        single.finish("unexpected field in Request")?;
        cert_ids.push(parse_cert_id(cert_id)?);
    }
    if cert_ids.is_empty() {
        return Err(Malformed("empty requestList"));
    }
    Ok(Request { cert_ids, nonce })
}

fn parse_cert_id(tlv: der::Tlv<'_>) -> Result<CertId<'_>, Malformed> {
    let mut r = Reader::new(tlv.content);
    let mut alg = Reader::new(r.expect(der::SEQUENCE, "hashAlgorithm is not a SEQUENCE")?);
    let hash_algorithm = alg.expect(der::OID, "hashAlgorithm has no OID")?;
    // Parameters: absent or NULL for the SHA family (RFC 5754 §2).
    if let Some(params) = alg.optional(der::NULL)? {
        if !params.is_empty() {
            return Err(Malformed("NULL with content"));
        }
    }
    alg.finish("unexpected hashAlgorithm parameters")?;
    let issuer_name_hash = r.expect(der::OCTET_STRING, "issuerNameHash is not an OCTET STRING")?;
    let issuer_key_hash = r.expect(der::OCTET_STRING, "issuerKeyHash is not an OCTET STRING")?;
    let serial = r.expect(der::INTEGER, "serialNumber is not an INTEGER")?;
    if serial.is_empty() {
        return Err(Malformed("empty serialNumber"));
    }
    r.finish("unexpected field in CertID")?;
    Ok(CertId {
        raw: tlv.raw,
        hash_algorithm,
        issuer_name_hash,
        issuer_key_hash,
        serial,
    })
}

/// `Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension` (RFC 5280 §4.1); returns the nonce's
/// extnValue. An unrecognised critical extension cannot be honoured, so it is refused
/// (RFC 5280 §4.2 semantics, which RFC 6960 §4.4 extensions follow).
fn parse_extensions(explicit: &[u8]) -> Result<Option<&[u8]>, Malformed> {
    let mut outer = Reader::new(explicit);
    let seq = outer.expect(der::SEQUENCE, "Extensions is not a SEQUENCE")?;
    outer.finish("trailing data after Extensions")?;
    let mut exts = Reader::new(seq);
    let mut nonce = None;
    while !exts.is_empty() {
        let mut ext = Reader::new(exts.expect(der::SEQUENCE, "Extension is not a SEQUENCE")?);
        let oid = ext.expect(der::OID, "extnID is not an OID")?;
        let critical = match ext.optional(der::BOOLEAN)? {
            None => false,
            Some([0x00]) => false,
            Some([0xff]) => true,
            Some(_) => return Err(Malformed("critical is not a DER BOOLEAN")),
        };
        let value = ext.expect(der::OCTET_STRING, "extnValue is not an OCTET STRING")?;
        ext.finish("unexpected field in Extension")?;
        if oid == OID_OCSP_NONCE {
            if nonce.is_some() {
                return Err(Malformed("two nonce extensions"));
            }
            nonce = Some(value);
        } else if critical {
            return Err(Malformed("unsupported critical extension"));
        }
    }
    Ok(nonce)
}

/// The answer for one CertID (RFC 6960 §2.2, §4.2.1 CertStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked { at: i64, reason: Option<i64> },
    Unknown,
}

impl Status {
    /// From the store's row; `None`: never issued by us.
    pub fn of(row: Option<&CertStatus>) -> Self {
        match row {
            None => Status::Unknown,
            Some(CertStatus {
                revoked_at: Some(at),
                reason,
                ..
            }) => Status::Revoked {
                at: *at,
                reason: *reason,
            },
            Some(_) => Status::Good,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            // good [0] IMPLICIT NULL; unknown [2] IMPLICIT UnknownInfo (NULL).
            Status::Good => der::tlv(der::context_primitive(0), &[]),
            Status::Unknown => der::tlv(der::context_primitive(2), &[]),
            // revoked [1] IMPLICIT RevokedInfo ::= SEQUENCE { revocationTime GeneralizedTime,
            //   revocationReason [0] EXPLICIT CRLReason OPTIONAL }
            Status::Revoked { at, reason } => {
                let time = der::generalized_time(*at);
                // RFC 5280 §5.3.1: unspecified (0) is better left out than written.
                match reason.filter(|r| (1..=10).contains(r) && *r != 7) {
                    Some(r) => {
                        let reason =
                            der::tlv(der::context(0), &der::tlv(der::ENUMERATED, &[r as u8]));
                        der::constructed(der::context(1), &[&time, &reason])
                    }
                    None => der::constructed(der::context(1), &[&time]),
                }
            }
        }
    }
}

/// The issuer hashes of a CertID (§4.1.1: issuerNameHash over the DER of the issuer's
/// subject Name, issuerKeyHash over its subjectPublicKey BIT STRING value) for each hash
/// algorithm a request may use.
#[derive(Debug, Clone)]
pub struct IssuerHashes {
    by_algorithm: Vec<(&'static [u8], Vec<u8>, Vec<u8>)>,
}

impl IssuerHashes {
    pub fn of(intermediate_der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(intermediate_der).map_err(|e| PkiError::Invalid {
                what: "intermediate certificate".into(),
                detail: e.to_string(),
            })?;
        let name = cert.subject().as_raw();
        let key = &cert.public_key().subject_public_key.data;
        let algs: [(&'static [u8], &'static digest::Algorithm); 4] = [
            (OID_SHA1, &digest::SHA1_FOR_LEGACY_USE_ONLY),
            (OID_SHA256, &digest::SHA256),
            (OID_SHA384, &digest::SHA384),
            (OID_SHA512, &digest::SHA512),
        ];
        Ok(Self {
            by_algorithm: algs
                .iter()
                .map(|(oid, alg)| {
                    (
                        *oid,
                        digest::digest(alg, name).as_ref().to_vec(),
                        digest::digest(alg, key).as_ref().to_vec(),
                    )
                })
                .collect(),
        })
    }

    /// True when `id` names our intermediate as the issuer.
    pub fn matches(&self, id: &CertId<'_>) -> bool {
        self.by_algorithm.iter().any(|(oid, name, key)| {
            *oid == id.hash_algorithm && name == id.issuer_name_hash && key == id.issuer_key_hash
        })
    }
}

/// The store key of a CertID's serial: the lowercase hex of the positive magnitude, or
/// `None` for a negative INTEGER, which no serial of ours is (RFC 5280 §4.1.2.2).
pub fn serial_key(serial: &[u8]) -> Option<String> {
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    Some(Serial::from_be_bytes(serial).to_hex())
}

/// The delegated responder: its key (memory only) and certificate.
pub struct Responder {
    key: KeyPair,
    pub cert_der: Vec<u8>,
    pub serial: Serial,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// ResponderID byKey (§4.2.1): SHA-1 of the responder's subjectPublicKey value.
    key_hash: Vec<u8>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A fresh P-256 key and a certificate for it from the intermediate: EKU OCSPSigning,
    /// digitalSignature, id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2, §4.2.2.2.1).
    pub fn issue(pki: &Authority, ca_name: &str, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::KeyGen(e.to_string()))?;
        let serial = Serial::random(&ring::rand::SystemRandom::new())?;
        let not_before = now - BACKDATE;
        let not_after = pki.clamp_not_after(now + RESPONDER_LIFETIME);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{ca_name} OCSP Responder"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        // id-pkix-ocsp-nocheck: extnValue is NULL (§4.2.2.2.1).
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            OID_OCSP_NOCHECK,
            vec![der::NULL, 0],
        )];
        params.use_authority_key_identifier_extension = true;
        params.not_before = odt(unix_seconds(not_before));
        params.not_after = odt(unix_seconds(not_after));
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        let cert = params
            .signed_by(&key, pki.issuer())
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        let spki = key.subject_public_key_info();
        let key_hash = spki_key_hash(&spki)?;
        Ok(Self {
            key,
            cert_der: cert.der().to_vec(),
            serial,
            not_before: from_unix_seconds(unix_seconds(not_before)),
            not_after: from_unix_seconds(unix_seconds(not_after)),
            key_hash,
        })
    }

    /// Re-issue at two thirds of the lifetime, like every certificate here, so a responder
    /// certificate never expires under a relying party whose clock runs ahead.
    pub fn is_due(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        now >= self.not_before + life * 2 / 3
    }

    pub fn pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert_der)
    }

    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// A signed `successful` OCSPResponse (§4.2.1) for `answers`, carrying the responder
    /// certificate and the intermediate (so a client that trusts only the root can build
    /// the responder's chain).
    pub fn sign(
        &self,
        answers: &[(&[u8], Status)],
        nonce: Option<&[u8]>,
        intermediate_der: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, PkiError> {
        let produced = unix_seconds(now);
        // nextUpdate never beyond the responder certificate's own life.
        let next = unix_seconds((now + RESPONSE_VALIDITY).min(self.not_after)).max(produced);
        let this_update = der::generalized_time(produced);
        let next_update = der::tlv(der::context(0), &der::generalized_time(next));
        let mut singles = Vec::with_capacity(answers.len());
        for (cert_id, status) in answers {
            singles.push(der::sequence(&[
                cert_id,
                &status.encode(),
                &this_update,
                &next_update,
            ]));
        }
        let singles: Vec<&[u8]> = singles.iter().map(Vec::as_slice).collect();
        let responses = der::sequence(&singles);
        // ResponderID byKey [2] EXPLICIT KeyHash: smaller than byName and what RFC 5019 §2.2.3
        // recommends.
        let responder_id = der::tlv(
            der::context(2),
            &der::tlv(der::OCTET_STRING, &self.key_hash),
        );
        let produced_at = der::generalized_time(produced);
        let extensions = nonce.map(|value| {
            let ext = der::sequence(&[
                &der::tlv(der::OID, OID_OCSP_NONCE),
                &der::tlv(der::OCTET_STRING, value),
            ]);
            der::tlv(der::context(1), &der::sequence(&[&ext]))
        });
        let mut tbs_parts: Vec<&[u8]> = vec![&responder_id, &produced_at, &responses];
        if let Some(e) = &extensions {
            tbs_parts.push(e);
        }
        let tbs = der::sequence(&tbs_parts);
        let signature = self
            .key
            .sign(&tbs)
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(&signature);
        let alg = der::sequence(&[&der::tlv(der::OID, OID_ECDSA_SHA256)]);
        let certs = der::tlv(
            der::context(0),
            &der::sequence(&[&self.cert_der, intermediate_der]),
        );
        let basic = der::sequence(&[&tbs, &alg, &der::tlv(der::BIT_STRING, &bits), &certs]);
        let response_bytes = der::sequence(&[
            &der::tlv(der::OID, OID_OCSP_BASIC),
            &der::tlv(der::OCTET_STRING, &basic),
        ]);
        Ok(der::sequence(&[
            &der::tlv(der::ENUMERATED, &[ResponseStatus::Successful as u8]),
            &der::tlv(der::context(0), &response_bytes),
        ]))
    }
}

/// SHA-1 over the subjectPublicKey BIT STRING value of an SPKI (RFC 6960 §4.2.1 KeyHash).
fn spki_key_hash(spki: &[u8]) -> Result<Vec<u8>, PkiError> {
    let bad = |d: Malformed| PkiError::Invalid {
        what: "responder key".into(),
        detail: d.to_string(),
    };
    let mut outer = Reader::new(spki);
    let mut r = Reader::new(outer.expect(der::SEQUENCE, "SPKI").map_err(bad)?);
    r.expect(der::SEQUENCE, "algorithm").map_err(bad)?;
    let bits = r.expect(der::BIT_STRING, "subjectPublicKey").map_err(bad)?;
    let value = bits.get(1..).unwrap_or_default();
    Ok(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, value)
        .as_ref()
        .to_vec())
}

fn odt(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CertID for (SHA-1, name hash, key hash, serial).
    fn cert_id(serial: &[u8]) -> Vec<u8> {
        der::sequence(&[
            &der::sequence(&[&der::tlv(der::OID, OID_SHA1), &der::tlv(der::NULL, &[])]),
            &der::tlv(der::OCTET_STRING, &[1; 20]),
            &der::tlv(der::OCTET_STRING, &[2; 20]),
            &der::tlv(der::INTEGER, serial),
        ])
    }

    fn request(ids: &[Vec<u8>], exts: Option<Vec<u8>>) -> Vec<u8> {
        let singles: Vec<Vec<u8>> = ids.iter().map(|id| der::sequence(&[id])).collect();
        let singles: Vec<&[u8]> = singles.iter().map(Vec::as_slice).collect();
        let list = der::sequence(&singles);
        let tbs = match &exts {
            Some(e) => der::sequence(&[&list, &der::tlv(der::context(2), e)]),
            None => der::sequence(&[&list]),
        };
        der::sequence(&[&tbs])
    }

    fn nonce_ext(value: &[u8], critical: bool) -> Vec<u8> {
        let crit = der::tlv(der::BOOLEAN, &[0xff]);
        let mut parts: Vec<&[u8]> = vec![&[0x06, 9, 0x2b, 6, 1, 5, 5, 7, 48, 1, 2]];
        if critical {
            parts.push(&crit);
        }
        let v = der::tlv(der::OCTET_STRING, value);
        parts.push(&v);
        der::sequence(&[&der::sequence(&parts)])
    }

    #[test]
    fn a_well_formed_request_parses_with_its_nonce() {
        let nonce = der::tlv(der::OCTET_STRING, &[9; 16]);
        let id = cert_id(&[0x00, 0x80, 0x01]);
        let req = request(std::slice::from_ref(&id), Some(nonce_ext(&nonce, false)));
        let parsed = parse_request(&req).unwrap();
        assert_eq!(parsed.cert_ids.len(), 1);
        assert_eq!(parsed.cert_ids[0].raw, id.as_slice());
        assert_eq!(parsed.cert_ids[0].serial, &[0x00, 0x80, 0x01]);
        assert_eq!(parsed.cert_ids[0].hash_algorithm, OID_SHA1);
        assert_eq!(parsed.nonce, Some(nonce.as_slice()));
        assert_eq!(
            serial_key(parsed.cert_ids[0].serial).as_deref(),
            Some("8001")
        );
        assert_eq!(serial_key(&[0xff]), None, "negative");
    }

    #[test]
    fn malformed_requests_are_refused_not_panicked_on() {
        let good = request(&[cert_id(&[1])], None);
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "OCSPRequest is not a SEQUENCE"),
            (vec![0x30, 0x00], "tbsRequest is not a SEQUENCE"),
            (
                der::sequence(&[&der::sequence(&[])]),
                "requestList is not a SEQUENCE",
            ),
            (request(&[], None), "empty requestList"),
            (
                request(&[der::tlv(der::INTEGER, &[1])], None),
                "reqCert is not a SEQUENCE",
            ),
            (
                request(
                    &[der::sequence(&[&der::sequence(&[&der::tlv(
                        der::OID,
                        OID_SHA1,
                    )])])],
                    None,
                ),
                "issuerNameHash is not an OCTET STRING",
            ),
            (request(&[cert_id(&[])], None), "empty serialNumber"),
            (
                request(&vec![cert_id(&[1]); MAX_REQUESTS + 1], None),
                "too many requests",
            ),
            (
                request(
                    &[cert_id(&[1])],
                    Some(nonce_ext(&[1], true).into_iter().chain([0]).collect()),
                ),
                "trailing data after Extensions",
            ),
            (
                request(
                    &[cert_id(&[1])],
                    Some({
                        let other = der::sequence(&[
                            &der::tlv(der::OID, &[0x2a, 3]),
                            &der::tlv(der::BOOLEAN, &[0xff]),
                            &der::tlv(der::OCTET_STRING, &[]),
                        ]);
                        der::sequence(&[&other])
                    }),
                ),
                "unsupported critical extension",
            ),
            (
                request(
                    &[cert_id(&[1])],
                    Some({
                        let bad = der::sequence(&[
                            &der::tlv(der::OID, OID_OCSP_NONCE),
                            &der::tlv(der::BOOLEAN, &[0x01]),
                            &der::tlv(der::OCTET_STRING, &[]),
                        ]);
                        der::sequence(&[&bad])
                    }),
                ),
                "critical is not a DER BOOLEAN",
            ),
        ];
        let mut trailing = good.clone();
        trailing.push(0);
        cases.push((trailing, "trailing data after the OCSPRequest"));
        // Every truncation of a good request is refused.
        for cut in 0..good.len() {
            assert!(parse_request(&good[..cut]).is_err(), "cut at {cut}");
        }
        for (input, why) in cases {
            assert_eq!(
                parse_request(&input).unwrap_err(),
                Malformed(why),
                "{input:02x?}"
            );
        }
        assert!(parse_request(&good).is_ok());
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic fuzz: mutate a good request byte by byte.
        let good = request(&[cert_id(&[1, 2, 3])], Some(nonce_ext(&[4; 18], false)));
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            let mut m = good.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % m.len();
                m[i] = (x >> 8) as u8;
            }
            let _ = parse_request(&m);
        }
    }

    #[test]
    fn revoked_status_carries_time_and_reason() {
        let s = Status::Revoked {
            at: 0,
            reason: Some(6),
        }
        .encode();
        assert_eq!(s[0], 0xa1);
        assert!(s.ends_with(&[0xa0, 3, der::ENUMERATED, 1, 6]));
        let s = Status::Revoked {
            at: 0,
            reason: Some(0),
        }
        .encode();
        assert_eq!(s.len(), 2 + 17, "unspecified is left out");
        assert_eq!(Status::Good.encode(), vec![0x80, 0]);
        assert_eq!(Status::Unknown.encode(), vec![0x82, 0]);
        assert_eq!(
            error_response(ResponseStatus::MalformedRequest),
            vec![0x30, 3, 0x0a, 1, 1]
        );
    }
}
