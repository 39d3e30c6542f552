//! The CRL of the issuing CA (RFC 5280 §5): a complete CRL (no deltas), signed by the
//! intermediate, with the extensions §5.2 requires (authorityKeyIdentifier, cRLNumber) and a
//! reasonCode per entry (§5.3.1).
//!
//! rcgen's `CertificateRevocationListParams` writes all of that: a v2 CRL, thisUpdate and
//! nextUpdate (§5.1.2.4–5, nextUpdate always present), entries with reasonCode (it omits the
//! extension for `unspecified`, as §5.3.1 asks), AKI and cRLNumber.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};

use crate::clock::unix_seconds;
use crate::pki::{Authority, PkiError, Serial};
use crate::store::RevokedCert;
use x509_parser::prelude::FromDer;

/// How long a CRL is valid (nextUpdate − thisUpdate). Relying parties that cache the CRL
/// see a quarantine at the latest this late, so it is short; the CRL is re-signed at half
/// of it, and at once on every revocation.
pub const CRL_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// The file name of the intermediate's CRL under `/crl/`.
pub const CRL_FILE: &str = "intermediate.crl";

/// A signed CRL with what it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub der: Vec<u8>,
    /// The cRLNumber (RFC 5280 §5.2.3).
    pub number: u64,
    pub this_update: i64,
    pub next_update: i64,
    /// The entries, ordered by serial: what a regeneration compares against the store.
    pub revoked: Vec<RevokedCert>,
}

impl Crl {
    /// True when it is time to sign a new one although nothing changed: past half of its
    /// validity, so a relying party never holds an expired CRL.
    pub fn is_due(&self, now: SystemTime) -> bool {
        let now = unix_seconds(now);
        now >= self.this_update + (self.next_update - self.this_update) / 2
    }
}

/// The cRLNumber after `previous`: the current time in milliseconds, or one more than
/// `previous` if the clock has not moved on. RFC 5280 §5.2.3 wants numbers that only grow
/// for a given issuer; deriving them from the clock keeps them growing across restarts
/// without a database row (a clock set back by more than the last CRL's age would repeat
/// numbers — the same assumption the certificates' validity already makes).
pub fn next_number(previous: u64, now: SystemTime) -> u64 {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    millis.max(previous.saturating_add(1))
}

/// RFC 5280 §5.3.1 CRLReason from the store's code; codes §5.3.1 does not define are
/// written without a reason (as `unspecified`).
fn reason(code: Option<i64>) -> Option<RevocationReason> {
    Some(match code? {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

fn odt(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Signs a CRL listing `revoked` with the intermediate.
pub fn build(
    pki: &Authority,
    revoked: Vec<RevokedCert>,
    number: u64,
    now: SystemTime,
) -> Result<Crl, PkiError> {
    let this_update = unix_seconds(now);
    let next_update = unix_seconds(now + CRL_LIFETIME);
    let mut entries = Vec::with_capacity(revoked.len());
    for r in &revoked {
        // Serials in the store are ours (lowercase hex); one that is not would be corruption,
        // and leaving it out of the CRL silently would hide a revocation.
        let serial = Serial::from_hex(&r.serial).ok_or_else(|| PkiError::Invalid {
            what: "revoked certificate".into(),
            detail: format!("serial `{}` is not hex", r.serial),
        })?;
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial.as_bytes()),
            revocation_time: odt(r.revoked_at),
            reason_code: reason(r.reason),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: odt(this_update),
        next_update: odt(next_update),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        // The AKI must equal the intermediate's subjectKeyIdentifier (§5.2.1), whatever
        // method produced it; rcgen would otherwise derive its own from the key.
        key_identifier_method: KeyIdMethod::PreSpecified(pki.key_identifier().to_vec()),
    };
    let crl = params
        .signed_by(pki.issuer())
        .map_err(|e| PkiError::Sign(e.to_string()))?;
    Ok(Crl {
        der: crl.der().to_vec(),
        number,
        this_update,
        next_update,
        revoked,
    })
}

/// An empty CRL of the root (an "ARL": no intermediate revoked), valid for `lifetime`.
///
/// Relying parties that check revocation for every CA of the chain (OpenSSL's
/// X509_V_FLAG_CRL_CHECK_ALL, which nginx's `ssl_crl` sets) need one beside the
/// intermediate's CRL. It is signed with the root key from `paths.root_key`, which the CA
/// service itself never loads: this is for an operator's command run with access to it
/// (the root stays offline in spirit), and for tests.
pub fn root_arl(
    paths: &crate::pki::CaPaths,
    number: u64,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Vec<u8>, PkiError> {
    let invalid = |what: &str, detail: String| PkiError::Invalid {
        what: what.into(),
        detail,
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|source| PkiError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let key =
        crate::pki::key_from_pem(&read(&paths.root_key)?).map_err(|e| invalid("root key", e))?;
    let root_der = crate::pki::pem::decode_first(&read(&paths.root_cert)?, "CERTIFICATE")
        .map_err(|e| invalid("root certificate", e.to_string()))?;
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der)
        .map_err(|e| invalid("root certificate", e.to_string()))?;
    let ski = root
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| invalid("root certificate", "no subjectKeyIdentifier".into()))?;
    let issuer = rcgen::Issuer::from_ca_cert_der(&root_der.as_slice().into(), key)
        .map_err(|e| invalid("root certificate", e.to_string()))?;
    let params = CertificateRevocationListParams {
        this_update: odt(unix_seconds(now)),
        next_update: odt(unix_seconds(now + lifetime)),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::PreSpecified(ski),
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| PkiError::Sign(e.to_string()))?;
    Ok(crl.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaPaths, InitOptions, LifetimePolicy};
    use x509_parser::revocation_list::CertificateRevocationList;

    #[test]
    fn numbers_only_grow() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(next_number(0, t), 10_000);
        assert_eq!(next_number(10_000, t), 10_001);
        assert_eq!(next_number(u64::MAX, t), u64::MAX);
    }

    #[test]
    fn a_crl_lists_entries_with_reasons_and_verifies_against_the_intermediate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("pki"));
        let now = SystemTime::now();
        Authority::init(&paths, &InitOptions::default(), now).unwrap();
        let pki = Authority::load(&paths, LifetimePolicy::default()).unwrap();
        let revoked = vec![
            RevokedCert {
                serial: "0a".into(),
                revoked_at: unix_seconds(now),
                reason: Some(6),
            },
            RevokedCert {
                serial: "80ff".into(),
                revoked_at: unix_seconds(now),
                reason: Some(5),
            },
            RevokedCert {
                serial: "0b".into(),
                revoked_at: unix_seconds(now),
                reason: Some(0),
            },
        ];
        let crl = build(&pki, revoked, 42, now).unwrap();
        assert!(!crl.is_due(now));
        assert!(crl.is_due(now + CRL_LIFETIME / 2));
        let (rest, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
        assert!(rest.is_empty());
        let (_, int) =
            x509_parser::certificate::X509Certificate::from_der(pki.intermediate_der()).unwrap();
        parsed.verify_signature(int.public_key()).unwrap();
        assert_eq!(parsed.issuer(), int.subject());
        assert_eq!(
            parsed.crl_number().map(|n| n.to_u64_digits()),
            Some(vec![42])
        );
        let entries: Vec<_> = parsed.iter_revoked_certificates().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].raw_serial(), &[0x00, 0x80, 0xff]);
        let reasons: Vec<_> = entries
            .iter()
            .map(|e| e.reason_code().map(|(_, r)| r.0))
            .collect();
        assert_eq!(reasons, vec![Some(6), Some(5), None]);
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert_eq!(aki.as_deref(), Some(pki.key_identifier()));

        let arl = root_arl(&paths, 1, now, Duration::from_secs(3600)).unwrap();
        let (_, arl) = CertificateRevocationList::from_der(&arl).unwrap();
        let root_der = crate::pki::pem::decode_first(pki.root_pem(), "CERTIFICATE").unwrap();
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der).unwrap();
        arl.verify_signature(root.public_key()).unwrap();
        assert_eq!(arl.iter_revoked_certificates().count(), 0);
    }
}
