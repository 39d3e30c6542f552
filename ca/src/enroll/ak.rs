//! The attestation key (AK) the agent wants certified: its public area (TPMT_PUBLIC) must
//! describe a key that can only ever sign what its TPM generated and quoted, and that never
//! existed outside that TPM. Its Name (TPM 2.0 Part 1 §16: nameAlg || H_nameAlg(TPMT_PUBLIC))
//! is what MakeCredential binds the credential to, and the Name covers the attributes, so a
//! TPM that activates the credential has that exact public area loaded.

use super::ek::{TPMA_ADMIN_WITH_POLICY, TPMA_DECRYPT};
use super::error::{refuse, EnrollError, Rule};
use super::NameAlg;
use crate::attest::tpm;

/// A checked AK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ak {
    /// The TPMT_PUBLIC as sent (the Name is computed over these bytes).
    pub public: Vec<u8>,
    /// nameAlg || H(public).
    pub name: Vec<u8>,
    /// The key as SubjectPublicKeyInfo DER: the AK certificate's subject key.
    pub spki: Vec<u8>,
    pub object_attributes: u32,
}

/// Parses and checks `ak_pub`. `allow_sha1` admits a SHA-1 nameAlg (`allow_sha1_tpm`).
pub fn check(public: &[u8], allow_sha1: bool) -> Result<Ak, EnrollError> {
    let pa = tpm::parse_pub_area(public)
        .map_err(|e| EnrollError::new(Rule::AkPubParse, format!("ak_pub: {}", e.detail)))?;
    let attrs = pa.object_attributes;
    // TPM 2.0 Part 2 §8.3.3.1: restricted + sign is a key that signs only digests the TPM
    // produced itself (quotes, certifications) — an attestation key. fixedTPM, fixedParent
    // and sensitiveDataOrigin: generated in this TPM and never duplicable out of it
    // (§8.3.3.2 - §8.3.3.4); otherwise the credential proves nothing about where the private
    // key is. adminWithPolicy clear is defensive: ActivateCredential authorizes the AK in the
    // ADMIN role (Part 3 §12.5.1); with adminWithPolicy clear that role needs the AK's
    // authValue, which a TPM has only for an object whose private part is loaded, so a
    // public-only object (TPM2_LoadExternal) naming a software key cannot take part. Real AKs
    // (tpm2_createak, Windows PCP) leave it clear.
    for (bit, name, want) in [
        (tpm::TPMA_RESTRICTED, "restricted", true),
        (tpm::TPMA_SIGN_ENCRYPT, "sign", true),
        (TPMA_DECRYPT, "decrypt", false),
        (tpm::TPMA_FIXED_TPM, "fixedTPM", true),
        (tpm::TPMA_FIXED_PARENT, "fixedParent", true),
        (tpm::TPMA_SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin", true),
        (TPMA_ADMIN_WITH_POLICY, "adminWithPolicy", false),
    ] {
        if (attrs & bit != 0) != want {
            return refuse(
                Rule::AkAttributes,
                format!(
                    "ak_pub objectAttributes {attrs:#010x}: {name} must be {} for an attestation key (TPM 2.0 Part 2 §8.3.3)",
                    if want { "set" } else { "clear" }
                ),
            );
        }
    }
    let name_alg = match NameAlg::from_tpm(pa.name_alg) {
        Some(a) => a,
        None if pa.name_alg == tpm::TPM_ALG_SHA1 && allow_sha1 => NameAlg::Sha1,
        None => {
            return refuse(
                Rule::AkNameAlg,
                format!(
                    "ak_pub nameAlg {:#06x} is not SHA-256, SHA-384 or SHA-512 (SHA-1 only with allow_sha1_tpm)",
                    pa.name_alg
                ),
            )
        }
    };
    let spki = pa
        .spki()
        .map_err(|e| EnrollError::new(Rule::AkKey, format!("ak_pub: {}", e.detail)))?;
    Ok(Ak {
        name: name_alg.name_of(public),
        public: public.to_vec(),
        spki,
        object_attributes: attrs,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The TPMT_PUBLIC tpm2_createak makes (RSA 2048, RSASSA-SHA256, attributes 0x00050072).
    pub(crate) fn rsa_ak_pub(attrs: u32, name_alg: u16, modulus_len: usize) -> Vec<u8> {
        let mut v = tpm::TPM_ALG_RSA.to_be_bytes().to_vec();
        v.extend(name_alg.to_be_bytes());
        v.extend(attrs.to_be_bytes());
        v.extend(0u16.to_be_bytes()); // authPolicy
        v.extend(tpm::TPM_ALG_NULL.to_be_bytes()); // symmetric
        v.extend(tpm::TPM_ALG_RSASSA.to_be_bytes());
        v.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
        v.extend(((modulus_len * 8) as u16).to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend((modulus_len as u16).to_be_bytes());
        v.extend(vec![0xc7; modulus_len]);
        v
    }

    pub(crate) const AK_ATTRS: u32 = 0x0005_0072;

    #[test]
    fn enroll_ak_rules() {
        let good = rsa_ak_pub(AK_ATTRS, tpm::TPM_ALG_SHA256, 256);
        let ak = check(&good, false).unwrap();
        assert_eq!(&ak.name[..2], &[0x00, 0x0b]);
        assert_eq!(ak.name.len(), 34);
        for (attrs, what) in [
            (AK_ATTRS & !tpm::TPMA_RESTRICTED, "restricted"),
            (AK_ATTRS & !tpm::TPMA_FIXED_TPM, "fixedTPM"),
            (AK_ATTRS & !tpm::TPMA_FIXED_PARENT, "fixedParent"),
            (
                AK_ATTRS & !tpm::TPMA_SENSITIVE_DATA_ORIGIN,
                "sensitiveDataOrigin",
            ),
            (AK_ATTRS | TPMA_DECRYPT, "decrypt"),
            (AK_ATTRS | TPMA_ADMIN_WITH_POLICY, "adminWithPolicy"),
        ] {
            let e = check(&rsa_ak_pub(attrs, tpm::TPM_ALG_SHA256, 256), false).unwrap_err();
            assert_eq!(e.rule, Rule::AkAttributes, "{what}");
            assert!(e.detail.contains(what), "{e}");
        }
        let sha1 = rsa_ak_pub(AK_ATTRS, tpm::TPM_ALG_SHA1, 256);
        assert_eq!(check(&sha1, false).unwrap_err().rule, Rule::AkNameAlg);
        assert_eq!(check(&sha1, true).unwrap().name.len(), 22);
        let weak = rsa_ak_pub(AK_ATTRS, tpm::TPM_ALG_SHA256, 128);
        assert_eq!(check(&weak, false).unwrap_err().rule, Rule::AkKey);
        for n in 0..good.len() {
            assert_eq!(check(&good[..n], false).unwrap_err().rule, Rule::AkPubParse);
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(check(&trailing, false).unwrap_err().rule, Rule::AkPubParse);
    }
}
