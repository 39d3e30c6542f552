//! Certificate verification: chain to the trust anchors, validity with skew, EKU clientAuth,
//! maximum lifetime, device id present.
//!
//! The order of the checks is part of the contract (each failure has its own reason code):
//! 1. anchors configured, leaf parses (`no_trust_anchors`, `malformed`);
//! 2. validity window with `clock_skew` (`not_yet_valid`, `expired`) — RFC 5280 §4.1.2.5;
//! 3. the chain, by webpki: signatures, basicConstraints, EKU clientAuth (`untrusted_issuer`,
//!    `wrong_usage`) — RFC 5280 §6.1, §4.2.1.9, §4.2.1.12;
//! 4. lifetime ≤ `max_lifetime` (`lifetime_too_long`);
//! 5. a device id (`no_device_id`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use x509_parser::prelude::FromDer;

use crate::identity::DeviceIdentity;

/// The signature algorithms a chain may use. RSA keys below 2048 bits are refused by webpki.
static SUPPORTED_SIG_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PKCS1_3072_8192_SHA384,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The trust anchors snapshot (one `ArcSwap<TrustAnchors>` holds it in the gateway).
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    /// Full DER `Name`s (SEQUENCE included) of the anchors' subjects.
    subjects: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("count", &self.anchors.len())
            .finish()
    }
}

impl TrustAnchors {
    /// Parses every CERTIFICATE block of a PEM bundle as a trust anchor (other blocks, such as
    /// keys, are skipped).
    pub fn from_pem(pem: &[u8]) -> Result<Self, VerifyError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VerifyError::Malformed(format!("PEM: {e}")))?;
        Self::from_der_certs(&certs)
    }

    /// Every certificate becomes an anchor; one that does not parse fails the whole set (a
    /// half-loaded trust store is a configuration error, not something to run with).
    pub fn from_der_certs(certs: &[CertificateDer<'_>]) -> Result<Self, VerifyError> {
        let mut anchors = Vec::with_capacity(certs.len());
        let mut subjects = Vec::with_capacity(certs.len());
        for (i, cert) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(cert)
                .map_err(|e| VerifyError::Malformed(format!("trust anchor #{i}: {e}")))?;
            let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
                .map_err(|e| VerifyError::Malformed(format!("trust anchor #{i}: {e}")))?;
            subjects.push(parsed.subject().as_raw().to_vec());
            anchors.push(anchor.to_owned());
        }
        Ok(Self { anchors, subjects })
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Subject DNs (DER) of the anchors, for the TLS CertificateRequest's hint list. Each is a
    /// complete DER `Name`, outer SEQUENCE included.
    pub fn subjects(&self) -> Vec<Vec<u8>> {
        self.subjects.clone()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    pub clock_skew: Duration,
    pub max_lifetime: Duration,
}

/// Why a certificate was refused. `code()` is the stable, machine-readable reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("certificate is malformed: {0}")]
    Malformed(String),
    #[error("certificate does not chain to a trusted root: {0}")]
    UntrustedIssuer(String),
    #[error("certificate expired")]
    Expired,
    #[error("certificate is not yet valid")]
    NotYetValid,
    #[error("certificate lifetime {lifetime_secs}s exceeds the maximum {max_secs}s")]
    LifetimeTooLong { lifetime_secs: u64, max_secs: u64 },
    #[error("certificate is not valid for client authentication (EKU)")]
    WrongUsage,
    #[error("certificate carries no device identifier")]
    NoDeviceId,
    #[error("no trust anchors configured")]
    NoTrustAnchors,
}

impl VerifyError {
    /// Stable snake_case reason code for metrics and audit (`expired`, `untrusted_issuer`, …).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UntrustedIssuer(_) => "untrusted_issuer",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::LifetimeTooLong { .. } => "lifetime_too_long",
            VerifyError::WrongUsage => "wrong_usage",
            VerifyError::NoDeviceId => "no_device_id",
            VerifyError::NoTrustAnchors => "no_trust_anchors",
        }
    }
}

/// Verifies a presented client chain at time `now` and returns the parsed identity.
pub fn verify_client_chain(
    anchors: &TrustAnchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: SystemTime,
    opts: &VerifyOptions,
    trust_domain: &str,
) -> Result<DeviceIdentity, VerifyError> {
    if anchors.is_empty() {
        return Err(VerifyError::NoTrustAnchors);
    }
    let (identity, leaf_facts) = crate::identity::parse_leaf(end_entity.as_ref(), trust_domain)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let leaf = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;

    // RFC 5280 §4.1.2.5, checked here before the chain so that an expired or not-yet-valid
    // certificate gets its own reason, and with the configured tolerance for client clocks.
    let (not_before, not_after) = (identity.not_before, identity.not_after);
    if not_before > not_after {
        return Err(VerifyError::Malformed("notBefore is after notAfter".into()));
    }
    if now
        .checked_add(opts.clock_skew)
        .is_some_and(|t| t < not_before)
    {
        return Err(VerifyError::NotYetValid);
    }
    if not_after
        .checked_add(opts.clock_skew)
        .is_some_and(|t| now > t)
    {
        return Err(VerifyError::Expired);
    }
    // Within the skew-widened window. webpki applies its own, unwidened check, so hand it a
    // time moved into [notBefore, notAfter]: the skew we just granted is not taken back. The
    // intermediates are checked at that same instant, which is at most `clock_skew` from `now`.
    // (`clamp` requires notBefore ≤ notAfter, refused above otherwise.)
    let verify_at = now.clamp(not_before, not_after);
    let verify_at = UnixTime::since_unix_epoch(
        verify_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| VerifyError::Malformed("validity before 1970".into()))?,
    );

    // RFC 5280 §4.2.1.12: `client_auth()` requires id-kp-clientAuth in every certificate of
    // the path that carries an EKU extension. No revocation here: status lives in the
    // inventory snapshot and is checked per request (decision.rs).
    leaf.verify_for_usage(
        SUPPORTED_SIG_ALGS,
        &anchors.anchors,
        intermediates,
        verify_at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(map_webpki_error)?;

    // "EKU clientAuth only" (ARCHITECTURE.md): RFC 5280 reads an absent EKU as "any purpose",
    // which webpki accepts; a device certificate must say clientAuth explicitly.
    if !leaf_facts.client_auth_eku {
        return Err(VerifyError::WrongUsage);
    }

    // A long-lived certificate from the same root must not stand in for a device certificate.
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    if lifetime > opts.max_lifetime {
        return Err(VerifyError::LifetimeTooLong {
            lifetime_secs: lifetime.as_secs(),
            max_secs: opts.max_lifetime.as_secs(),
        });
    }

    if identity.device_id.is_none() {
        return Err(VerifyError::NoDeviceId);
    }
    Ok(identity)
}

#[allow(deprecated)] // the context-less variants may still be returned by older paths
fn map_webpki_error(e: webpki::Error) -> VerifyError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => VerifyError::Expired,
        E::CertNotValidYet { .. } => VerifyError::NotYetValid,
        E::RequiredEkuNotFound
        | E::RequiredEkuNotFoundContext(_)
        | E::EmptyEkuExtension
        | E::CaUsedAsEndEntity => VerifyError::WrongUsage,
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::InvalidCertValidity => {
            VerifyError::Malformed(e.to_string())
        }
        // UnknownIssuer, BadSignature, signature algorithm mismatches, path length and name
        // constraint violations, EndEntityUsedAsCa, MaximumPathDepthExceeded, …: the chain does
        // not lead to an anchor we trust.
        other => VerifyError::UntrustedIssuer(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, hours, t0, Ca, TRUST_DOMAIN};
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    const OPTS: VerifyOptions = VerifyOptions {
        clock_skew: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(7 * 24 * 3600),
    };

    fn anchors(ca: &Ca) -> TrustAnchors {
        TrustAnchors::from_der_certs(std::slice::from_ref(&ca.der)).unwrap()
    }

    fn verify_at(
        ca: &Ca,
        cert: &testutil::DeviceCert,
        now: SystemTime,
    ) -> Result<DeviceIdentity, VerifyError> {
        verify_client_chain(&anchors(ca), &cert.der, &[], now, &OPTS, TRUST_DOMAIN)
    }

    #[test]
    fn good_chain_verifies_and_returns_identity() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).build();
        let id = verify_at(&ca, &cert, t0()).unwrap();
        assert_eq!(id.device_id.as_deref(), Some("dev-1"));
    }

    #[test]
    fn chain_through_an_intermediate() {
        let root = testutil::ca("root");
        let inter = testutil::intermediate(&root, "issuing", t0() - hours(100), t0() + hours(100));
        let cert = testutil::device(&inter).build();
        let a = anchors(&root);
        let id = verify_client_chain(
            &a,
            &cert.der,
            std::slice::from_ref(&inter.der),
            t0(),
            &OPTS,
            TRUST_DOMAIN,
        );
        assert_eq!(id.unwrap().device_id.as_deref(), Some("dev-1"));
        // Without the intermediate the chain does not reach the root.
        let err = verify_client_chain(&a, &cert.der, &[], t0(), &OPTS, TRUST_DOMAIN).unwrap_err();
        assert_eq!(err.code(), "untrusted_issuer");
    }

    #[test]
    fn other_ca_is_untrusted() {
        let ca = testutil::ca("root");
        let other = testutil::ca("root"); // same name, different key
        let cert = testutil::device(&other).build();
        let err = verify_at(&ca, &cert, t0()).unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedIssuer(_)), "{err:?}");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).build(); // [t0-1h, t0+23h]
        let skew = OPTS.clock_skew;
        assert_eq!(
            verify_at(&ca, &cert, cert.not_after + skew + Duration::from_secs(1)),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify_at(&ca, &cert, cert.not_before - skew - Duration::from_secs(1)),
            Err(VerifyError::NotYetValid)
        );
    }

    #[test]
    fn within_skew_is_accepted_at_both_ends() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).build();
        let skew = OPTS.clock_skew;
        assert!(verify_at(&ca, &cert, cert.not_after + skew).is_ok());
        assert!(verify_at(&ca, &cert, cert.not_after + Duration::from_secs(1)).is_ok());
        assert!(verify_at(&ca, &cert, cert.not_before - skew).is_ok());
        // With no skew configured the same instants are refused.
        let strict = VerifyOptions {
            clock_skew: Duration::ZERO,
            ..OPTS
        };
        let a = anchors(&ca);
        let late = cert.not_after + Duration::from_secs(1);
        assert_eq!(
            verify_client_chain(&a, &cert.der, &[], late, &strict, TRUST_DOMAIN),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn expired_intermediate_is_expired() {
        let root = testutil::ca("root");
        let inter = testutil::intermediate(&root, "issuing", t0() - hours(100), t0() - hours(2));
        let cert = testutil::device(&inter).build();
        let err = verify_client_chain(
            &anchors(&root),
            &cert.der,
            std::slice::from_ref(&inter.der),
            t0(),
            &OPTS,
            TRUST_DOMAIN,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::Expired);
    }

    #[test]
    fn lifetime_too_long() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .validity(t0() - hours(1), t0() + hours(8 * 24))
            .build();
        let err = verify_at(&ca, &cert, t0()).unwrap_err();
        assert_eq!(
            err,
            VerifyError::LifetimeTooLong {
                lifetime_secs: (8 * 24 + 1) * 3600,
                max_secs: 7 * 24 * 3600
            }
        );
        assert_eq!(err.code(), "lifetime_too_long");
        // Exactly the maximum is fine.
        let cert = testutil::device(&ca)
            .validity(t0() - hours(1), t0() - hours(1) + OPTS.max_lifetime)
            .build();
        assert!(verify_at(&ca, &cert, t0()).is_ok());
    }

    #[test]
    fn server_auth_only_is_wrong_usage() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).ekus(vec![Eku::ServerAuth]).build();
        assert_eq!(verify_at(&ca, &cert, t0()), Err(VerifyError::WrongUsage));
    }

    #[test]
    fn missing_eku_is_wrong_usage() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).ekus(vec![]).build();
        assert_eq!(verify_at(&ca, &cert, t0()), Err(VerifyError::WrongUsage));
        // Both purposes is acceptable: clientAuth is there.
        let cert = testutil::device(&ca)
            .ekus(vec![Eku::ServerAuth, Eku::ClientAuth])
            .build();
        assert!(verify_at(&ca, &cert, t0()).is_ok());
    }

    #[test]
    fn ca_certificate_as_client_is_wrong_usage() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).ca().build();
        assert_eq!(verify_at(&ca, &cert, t0()), Err(VerifyError::WrongUsage));
    }

    #[test]
    fn no_device_id() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .sans(vec![testutil::San::Dns("x.corp.example")])
            .build();
        assert_eq!(verify_at(&ca, &cert, t0()), Err(VerifyError::NoDeviceId));
    }

    #[test]
    fn malformed_der() {
        let ca = testutil::ca("root");
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let err =
            verify_client_chain(&anchors(&ca), &junk, &[], t0(), &OPTS, TRUST_DOMAIN).unwrap_err();
        assert_eq!(err.code(), "malformed");
    }

    #[test]
    fn no_trust_anchors() {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca).build();
        let empty = TrustAnchors::from_der_certs(&[]).unwrap();
        assert!(empty.is_empty());
        let err =
            verify_client_chain(&empty, &cert.der, &[], t0(), &OPTS, TRUST_DOMAIN).unwrap_err();
        assert_eq!(err, VerifyError::NoTrustAnchors);
        assert_eq!(err.code(), "no_trust_anchors");
    }

    #[test]
    fn other_signature_algorithms() {
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let ca = testutil::ca_with("root", alg);
            let cert = testutil::device(&ca).alg(alg).build();
            assert!(verify_at(&ca, &cert, t0()).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn anchors_from_pem_and_subjects() {
        let a = testutil::ca("root-a");
        let b = testutil::ca("root-b");
        let bundle = format!("{}\n{}", a.pem, b.pem);
        let anchors = TrustAnchors::from_pem(bundle.as_bytes()).unwrap();
        assert_eq!(anchors.len(), 2);
        let subjects = anchors.subjects();
        assert_eq!(subjects.len(), 2);
        assert_eq!(subjects[0].first(), Some(&0x30), "a full DER Name");
        assert_eq!(
            crate::name::to_rfc4514(&subjects[1]).as_deref(),
            Some("CN=root-b,O=Portcullis Test")
        );
        // A device of root-b verifies against the bundle.
        let cert = testutil::device(&b).build();
        assert!(verify_client_chain(&anchors, &cert.der, &[], t0(), &OPTS, TRUST_DOMAIN).is_ok());
        // No certificates at all → empty (the caller decides whether that is an error).
        assert!(TrustAnchors::from_pem(b"").unwrap().is_empty());
        // A broken certificate block fails the whole bundle.
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(TrustAnchors::from_pem(broken.as_bytes()).is_err());
    }

    #[test]
    fn codes_are_stable() {
        let all = [
            (VerifyError::Malformed(String::new()), "malformed"),
            (
                VerifyError::UntrustedIssuer(String::new()),
                "untrusted_issuer",
            ),
            (VerifyError::Expired, "expired"),
            (VerifyError::NotYetValid, "not_yet_valid"),
            (
                VerifyError::LifetimeTooLong {
                    lifetime_secs: 2,
                    max_secs: 1,
                },
                "lifetime_too_long",
            ),
            (VerifyError::WrongUsage, "wrong_usage"),
            (VerifyError::NoDeviceId, "no_device_id"),
            (VerifyError::NoTrustAnchors, "no_trust_anchors"),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code);
        }
    }
}
