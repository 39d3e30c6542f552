//! The AK certificate profile of W3C WebAuthn §8.3.1 ("TPM Attestation Statement Certificate
//! Requirements"), one function per requirement so that `inspect` can report each.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::super::{err, AttestError, Rule};

/// tcg-kp-AIKCertificate (TCG EK Credential Profile; WebAuthn §8.3.1).
pub const OID_TCG_KP_AIK_CERTIFICATE: &str = "2.23.133.8.3";
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";

/// The TCG SAN directoryName attributes of an AK certificate (TCG EK Credential Profile
/// §3.2.9; WebAuthn §8.3.1): (manufacturer, model, version).
pub(super) fn tpm_identity(
    cert: &X509Certificate<'_>,
) -> Result<(String, String, String), AttestError> {
    let (mut manufacturer, mut model, mut version) = (None, None, None);
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            let GeneralName::DirectoryName(dn) = name else {
                continue;
            };
            // One multi-valued RDN (Nuvoton) or three RDNs (Intel, ST): both are seen.
            for attr in dn.iter_attributes() {
                let slot = match attr.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => &mut manufacturer,
                    OID_TPM_MODEL => &mut model,
                    OID_TPM_VERSION => &mut version,
                    _ => continue,
                };
                let value = attr.as_str().map_err(|_| {
                    AttestError::new(
                        Rule::TpmAkCertSan,
                        "tpm: AK certificate SAN TPM attribute is not a string (TCG EK Credential Profile §3.2.9)",
                    )
                })?;
                *slot = Some(value.to_owned());
            }
        }
    }
    match (manufacturer, model, version) {
        (Some(a), Some(b), Some(c)) => Ok((a, b, c)),
        _ => err(
            Rule::TpmAkCertSan,
            "tpm: AK certificate SAN lacks the TPM manufacturer, model and version directoryName (WebAuthn §8.3.1; TCG EK Credential Profile §3.2.9)",
        ),
    }
}

/// "Version MUST be set to 3" (X.509 v3 is encoded as 2).
pub(super) fn check_version(cert: &X509Certificate<'_>) -> Result<(), AttestError> {
    if cert.version().0 != 2 {
        return err(
            Rule::TpmAkCertVersion,
            "tpm: AK certificate is not X.509 version 3 (WebAuthn §8.3.1)",
        );
    }
    Ok(())
}

/// "Subject field MUST be set to empty."
pub(super) fn check_subject(cert: &X509Certificate<'_>) -> Result<(), AttestError> {
    if cert.subject().iter_attributes().next().is_some() {
        return err(
            Rule::TpmAkCertSubject,
            "tpm: AK certificate subject is not empty (WebAuthn §8.3.1)",
        );
    }
    Ok(())
}

/// "The Extended Key Usage extension MUST contain the OID 2.23.133.8.3."
pub(super) fn check_eku(cert: &X509Certificate<'_>) -> Result<(), AttestError> {
    let eku = cert.extended_key_usage().map_err(|e| {
        AttestError::new(
            Rule::TpmAkCertEku,
            format!("tpm: AK certificate EKU is malformed: {e}"),
        )
    })?;
    if !eku.is_some_and(|e| {
        e.value
            .other
            .iter()
            .any(|o| o.to_id_string() == OID_TCG_KP_AIK_CERTIFICATE)
    }) {
        return err(
            Rule::TpmAkCertEku,
            "tpm: AK certificate extendedKeyUsage lacks tcg-kp-AIKCertificate 2.23.133.8.3 (WebAuthn §8.3.1)",
        );
    }
    Ok(())
}

/// "The Basic Constraints extension MUST have the CA component set to false."
pub(super) fn check_not_ca(cert: &X509Certificate<'_>) -> Result<(), AttestError> {
    let bc = cert.basic_constraints().map_err(|e| {
        AttestError::new(
            Rule::TpmAkCertCa,
            format!("tpm: AK certificate basicConstraints is malformed: {e}"),
        )
    })?;
    if bc.is_some_and(|b| b.value.ca) {
        return err(
            Rule::TpmAkCertCa,
            "tpm: AK certificate has basicConstraints cA true; it must be false (WebAuthn §8.3.1)",
        );
    }
    Ok(())
}

/// Whether a certificate says it is a TPM AK certificate (EKU 2.23.133.8.3), for telling the
/// format of a bare chain.
pub fn is_ak_certificate(cert: &X509Certificate<'_>) -> bool {
    check_eku(cert).is_ok()
}
