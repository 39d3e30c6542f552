//! A small certificate path walker (RFC 5280 §6.1, reduced) for attestation PKIs that
//! webpki refuses on purpose: TPM AK certificates carry a *critical* certificatePolicies
//! extension, YubiKey 4 `f9` certificates have no basicConstraints at all, and some vendor
//! chains are signed with SHA-1. Each relaxation is opt-in through [`ChainPolicy`].
//!
//! What it checks, for every certificate from the leaf up to a configured root:
//! - DER parses completely; the inner and outer signature algorithms agree (RFC 5280 §4.1.1.2);
//! - the issuer's subject equals the certificate's issuer (RFC 5280 §6.1.3 (a)(4)) and the
//!   issuer's key verifies its signature (§6.1.3 (a)(1)) with `ring`;
//! - validity at the injected `now` (§6.1.3 (a)(2)), including the root's;
//! - issuers are CAs: basicConstraints cA (§4.2.1.9, §6.1.4 (k)), keyCertSign when keyUsage
//!   is present (§4.2.1.3, §6.1.4 (n)), pathLenConstraint (§6.1.4 (l), (m));
//! - no unknown critical extension (§4.2: "MUST reject the certificate if it encounters a
//!   critical extension it does not recognize").
//!
//! No name constraints, policy processing, revocation or AIA fetching: the roots are narrow,
//! vendor-specific attestation roots, configured per format.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{err, AttestError, Rule};

/// The relaxations a vendor PKI needs. The default is strict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPolicy {
    /// Accept sha1WithRSAEncryption signatures on certificates.
    pub allow_sha1: bool,
    /// Accept a leaf's direct issuer that has no basicConstraints extension at all (YubiKey 4
    /// `f9` device certificates). A present basicConstraints with cA false is still refused.
    pub allow_issuer_without_basic_constraints: bool,
    /// Longest path accepted, leaf and root included.
    pub max_len: usize,
}

impl Default for ChainPolicy {
    fn default() -> Self {
        Self {
            allow_sha1: false,
            allow_issuer_without_basic_constraints: false,
            max_len: 6,
        }
    }
}

// Extensions this walker (or the format verifiers after it) recognise, so that they may be
// critical (RFC 5280 §4.2).
const KNOWN_CRITICAL: &[&str] = &[
    "2.5.29.15", // keyUsage
    "2.5.29.19", // basicConstraints
    "2.5.29.17", // subjectAltName (TPM AK certificates: TCG EK profile §3.2.9)
    "2.5.29.32", // certificatePolicies (TPM AK certificates; not processed, see module doc)
    "2.5.29.37", // extKeyUsage
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.35", // authorityKeyIdentifier
];

/// A parsed certificate kept with its DER.
struct Parsed<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<Parsed<'a>, AttestError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(Parsed { der, cert }),
        Ok((rest, _)) => err(
            Rule::CertParse,
            format!(
                "{what}: {} bytes after the certificate (RFC 5280 §4.1)",
                rest.len()
            ),
        ),
        Err(e) => err(
            Rule::CertParse,
            format!("{what}: not a DER X.509 certificate (RFC 5280 §4.1): {e}"),
        ),
    }
}

/// Parses one DER certificate completely (no trailing bytes).
pub fn parse_certificate<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<X509Certificate<'a>, AttestError> {
    parse(der, what).map(|p| p.cert)
}

/// Verifies `presented` (leaf first, then whatever intermediates the device sent) up to one of
/// `roots`, also using `extra_intermediates` that the verifier supplies itself (YubiKey's
/// Attestation A1/B1 intermediates). Returns the path, leaf first and root last.
///
/// `ctx` prefixes error messages (the format name).
pub fn verify_chain(
    ctx: &str,
    presented: &[&[u8]],
    extra_intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
    policy: &ChainPolicy,
) -> Result<Vec<Vec<u8>>, AttestError> {
    let Some((leaf_der, presented_rest)) = presented.split_first() else {
        return err(Rule::ChainEmpty, format!("{ctx}: no certificate presented"));
    };
    if roots.is_empty() {
        return err(
            Rule::ChainNoIssuer,
            format!("{ctx}: no trust anchor configured"),
        );
    }
    let now = unix_seconds(now);
    let leaf = parse(leaf_der, &format!("{ctx}: x5c[0]"))?;
    let mut intermediates = Vec::new();
    for (i, der) in presented_rest.iter().enumerate() {
        intermediates.push(parse(der, &format!("{ctx}: x5c[{}]", i + 1))?);
    }
    for (i, der) in extra_intermediates.iter().enumerate() {
        intermediates.push(parse(der, &format!("{ctx}: configured intermediate {i}"))?);
    }
    let mut anchors = Vec::new();
    for (i, der) in roots.iter().enumerate() {
        anchors.push(parse(der, &format!("{ctx}: configured root {i}"))?);
    }

    check_validity(ctx, &leaf.cert, now, "x5c[0]")?;
    check_critical(ctx, &leaf.cert, "x5c[0]")?;

    let mut path: Vec<Vec<u8>> = vec![leaf.der.to_vec()];
    let mut used = vec![false; intermediates.len()];
    let mut current = &leaf;
    // Number of non-self-issued intermediates between the current certificate and the leaf.
    let mut depth = 0usize;
    loop {
        if path.len() >= policy.max_len {
            return err(
                Rule::ChainTooLong,
                format!("{ctx}: no root within {} certificates", policy.max_len),
            );
        }
        let issuer_name = current.cert.issuer().as_raw();
        let mut last_err: Option<AttestError> = None;

        // A configured root that issued `current` ends the path (RFC 5280 §6.1.1 (d)).
        for anchor in &anchors {
            if anchor.cert.subject().as_raw() != issuer_name {
                continue;
            }
            match check_signature(ctx, &current.cert, anchor.cert.public_key(), policy) {
                Ok(()) => {
                    check_validity(ctx, &anchor.cert, now, "root")?;
                    path.push(anchor.der.to_vec());
                    return Ok(path);
                }
                Err(e) => last_err = Some(e),
            }
        }

        let mut next = None;
        for (i, cand) in intermediates.iter().enumerate() {
            if used[i] || cand.cert.subject().as_raw() != issuer_name {
                continue;
            }
            match check_signature(ctx, &current.cert, cand.cert.public_key(), policy) {
                Ok(()) => {
                    next = Some(i);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(i) = next else {
            return Err(last_err.unwrap_or_else(|| {
                AttestError::new(
                    Rule::ChainNoIssuer,
                    format!(
                        "{ctx}: no configured root or intermediate issued {:?} (RFC 5280 §6.1)",
                        current.cert.subject().to_string()
                    ),
                )
            }));
        };
        used[i] = true;
        let issuer = &intermediates[i];
        let what = format!("intermediate {:?}", issuer.cert.subject().to_string());
        check_validity(ctx, &issuer.cert, now, &what)?;
        check_critical(ctx, &issuer.cert, &what)?;
        check_is_ca(ctx, &issuer.cert, depth, path.len() == 1, policy, &what)?;
        path.push(issuer.der.to_vec());
        depth += 1;
        current = issuer;
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn check_validity(
    ctx: &str,
    cert: &X509Certificate<'_>,
    now: i64,
    what: &str,
) -> Result<(), AttestError> {
    let v = cert.validity();
    if now < v.not_before.timestamp() {
        return err(
            Rule::ChainNotYetValid,
            format!(
                "{ctx}: {what} is not valid before {} (RFC 5280 §6.1.3 (a)(2))",
                v.not_before
            ),
        );
    }
    if now > v.not_after.timestamp() {
        return err(
            Rule::ChainExpired,
            format!(
                "{ctx}: {what} expired at {} (RFC 5280 §6.1.3 (a)(2))",
                v.not_after
            ),
        );
    }
    Ok(())
}

fn check_critical(ctx: &str, cert: &X509Certificate<'_>, what: &str) -> Result<(), AttestError> {
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if ext.critical && !KNOWN_CRITICAL.contains(&oid.as_str()) {
            return err(
                Rule::ChainUnknownCriticalExtension,
                format!(
                    "{ctx}: {what} has an unrecognised critical extension {oid} (RFC 5280 §4.2)"
                ),
            );
        }
    }
    Ok(())
}

fn check_is_ca(
    ctx: &str,
    cert: &X509Certificate<'_>,
    depth: usize,
    issues_leaf: bool,
    policy: &ChainPolicy,
    what: &str,
) -> Result<(), AttestError> {
    let bc = cert.basic_constraints().map_err(|e| {
        AttestError::new(
            Rule::CertParse,
            format!("{ctx}: {what}: bad basicConstraints: {e}"),
        )
    })?;
    match bc {
        Some(bc) if bc.value.ca => {
            if let Some(max) = bc.value.path_len_constraint {
                if depth > max as usize {
                    return err(
                        Rule::ChainPathLength,
                        format!(
                            "{ctx}: {what} allows {max} intermediates below it, the path has {depth} (RFC 5280 §4.2.1.9, §6.1.4 (m))"
                        ),
                    );
                }
            }
        }
        Some(_) => {
            return err(
                Rule::ChainIssuerNotCa,
                format!("{ctx}: {what} is not a CA (basicConstraints cA false; RFC 5280 §4.2.1.9, §6.1.4 (k))"),
            )
        }
        None if issues_leaf && policy.allow_issuer_without_basic_constraints => {}
        None => {
            return err(
                Rule::ChainIssuerNotCa,
                format!("{ctx}: {what} has no basicConstraints, so it is not a CA (RFC 5280 §4.2.1.9, §6.1.4 (k))"),
            )
        }
    }
    let ku = cert.key_usage().map_err(|e| {
        AttestError::new(Rule::CertParse, format!("{ctx}: {what}: bad keyUsage: {e}"))
    })?;
    if let Some(ku) = ku {
        if !ku.value.key_cert_sign() {
            return err(
                Rule::ChainKeyUsage,
                format!("{ctx}: {what} keyUsage lacks keyCertSign (RFC 5280 §4.2.1.3, §6.1.4 (n))"),
            );
        }
    }
    Ok(())
}

/// The kinds of public key the verifiers handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

/// The kind of an SPKI's key, or `None` for anything else.
pub fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => {
            let modulus =
                super::der::read_exact(&spki.subject_public_key.data, super::der::TAG_SEQUENCE)
                    .and_then(|seq| super::der::read_tlv(seq))
                    .and_then(|(tag, n, _)| (tag == super::der::TAG_INTEGER).then_some(n))?;
            let skip = modulus.iter().take_while(|&&b| b == 0).count();
            let digits = &modulus[skip..];
            let bits = digits
                .first()
                .map_or(0, |&b| digits.len() * 8 - b.leading_zeros() as usize);
            Some(KeyKind::Rsa { bits })
        }
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()?
                .as_oid()
                .ok()?
                .to_id_string();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Some(KeyKind::P256),
                "1.3.132.0.34" => Some(KeyKind::P384),
                _ => None,
            }
        }
        "1.3.101.112" => Some(KeyKind::Ed25519),
        _ => None,
    }
}

/// The kind of the key of a SubjectPublicKeyInfo given as DER (RFC 5280 §4.1.2.7), or `None`
/// if it does not parse completely or is of another kind.
pub fn spki_key_kind(der: &[u8]) -> Option<KeyKind> {
    match SubjectPublicKeyInfo::from_der(der) {
        Ok(([], spki)) => key_kind(&spki),
        _ => None,
    }
}

/// Verifies `sig` over `msg` with the key of `spki` under `alg`.
pub(crate) fn verify_with(
    spki: &SubjectPublicKeyInfo<'_>,
    alg: &'static dyn VerificationAlgorithm,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(msg, sig)
        .is_ok()
}

fn check_signature(
    ctx: &str,
    cert: &X509Certificate<'_>,
    issuer_key: &SubjectPublicKeyInfo<'_>,
    policy: &ChainPolicy,
) -> Result<(), AttestError> {
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if outer.algorithm != inner.algorithm
        || outer.parameters.as_ref().map(|p| p.as_bytes())
            != inner.parameters.as_ref().map(|p| p.as_bytes())
    {
        return err(
            Rule::ChainSignature,
            format!("{ctx}: signatureAlgorithm differs from tbsCertificate.signature (RFC 5280 §4.1.1.2)"),
        );
    }
    let oid = outer.algorithm.to_id_string();
    let kind = key_kind(issuer_key);
    let alg: &'static dyn VerificationAlgorithm = match (oid.as_str(), kind) {
        // RFC 4055 §5 / RFC 8017 PKCS #1 v1.5.
        ("1.2.840.113549.1.1.5", Some(KeyKind::Rsa { .. })) => {
            if !policy.allow_sha1 {
                return err(
                    Rule::ChainSha1NotAllowed,
                    format!("{ctx}: sha1WithRSAEncryption signature and SHA-1 is not allowed for this format"),
                );
            }
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        ("1.2.840.113549.1.1.11", Some(KeyKind::Rsa { .. })) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        ("1.2.840.113549.1.1.12", Some(KeyKind::Rsa { .. })) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        ("1.2.840.113549.1.1.13", Some(KeyKind::Rsa { .. })) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        // RFC 5758 §3.2 ECDSA.
        ("1.2.840.10045.4.3.2", Some(KeyKind::P256)) => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", Some(KeyKind::P384)) => &signature::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", Some(KeyKind::P256)) => &signature::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", Some(KeyKind::P384)) => &signature::ECDSA_P384_SHA384_ASN1,
        // RFC 8410 §6.
        ("1.3.101.112", Some(KeyKind::Ed25519)) => &signature::ED25519,
        _ => {
            return err(
                Rule::ChainUnsupportedAlgorithm,
                format!(
                    "{ctx}: signature algorithm {oid} with issuer key {kind:?} is not supported"
                ),
            )
        }
    };
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    if verify_with(issuer_key, alg, tbs, &cert.signature_value.data) {
        Ok(())
    } else {
        err(
            Rule::ChainSignature,
            format!(
                "{ctx}: signature on {:?} does not verify under its issuer's key (RFC 5280 §6.1.3 (a)(1))",
                cert.subject().to_string()
            ),
        )
    }
}
