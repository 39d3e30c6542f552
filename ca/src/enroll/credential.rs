//! TPM2_MakeCredential in software (TCG TPM 2.0 Part 1 §24 "Credential Protection", Part 3
//! §12.6 TPM2_MakeCredential): a secret that only the TPM holding the EK can recover, and only
//! while an object with the AK's Name is loaded in it (TPM2_ActivateCredential, Part 3 §12.5).
//!
//! 1. A random seed, as many bytes as the EK nameAlg's digest, is protected to the EK (Part 1
//!    §24; the secret sharing of Part 1 Annex B (RSA) and Annex C (ECC)): RSA-OAEP with the
//!    nameAlg hash and label "IDENTITY\0" for an RSA EK; for an ECC EK, one-pass
//!    Diffie-Hellman with an ephemeral key and seed = KDFe(nameAlg, Z, "IDENTITY",
//!    Q_ephemeral.x, Q_ek.x) (Part 1 Annex C, KDFe §11.4.10.3).
//! 2. symKey = KDFa(nameAlg, seed, "STORAGE", Name(AK), ε, EK symmetric key bits) and
//!    encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(credential)) (Part 1 §24.4).
//! 3. HMACkey = KDFa(nameAlg, seed, "INTEGRITY", ε, ε, digest bits) and outerHMAC =
//!    HMAC_nameAlg(HMACkey, encIdentity || Name(AK)) (Part 1 §24.5).
//! 4. credentialBlob = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) || encIdentity) and secret =
//!    TPM2B_ENCRYPTED_SECRET(protected seed) (Part 2 §12.4.3, §11.4.33).
//!
//! The hashes are ring's, and so are HMAC, ECDH and randomness; OAEP is the `rsa` crate's
//! (encryption with a public key only: RUSTSEC-2023-0071 concerns private-key operations);
//! AES-CFB is RustCrypto's `aes` + `cfb-mode`.

use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{agreement, digest, hmac};

use super::ek::{Curve, Ek, EkKey};
use crate::attest::tpm;

/// The hash algorithms a Name or a credential can use (TPM_ALG_ID, TPM 2.0 Part 2 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameAlg {
    /// Only ever for an AK's Name with `allow_sha1_tpm`; never for MakeCredential.
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl NameAlg {
    /// SHA-256, SHA-384 and SHA-512. SHA-1 is never returned: callers that allow it say so.
    pub fn from_tpm(id: u16) -> Option<Self> {
        match id {
            tpm::TPM_ALG_SHA256 => Some(Self::Sha256),
            tpm::TPM_ALG_SHA384 => Some(Self::Sha384),
            tpm::TPM_ALG_SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => tpm::TPM_ALG_SHA1,
            Self::Sha256 => tpm::TPM_ALG_SHA256,
            Self::Sha384 => tpm::TPM_ALG_SHA384,
            Self::Sha512 => tpm::TPM_ALG_SHA512,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Self::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha384 => hmac::HMAC_SHA384,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    pub fn digest_len(self) -> usize {
        self.digest_alg().output_len()
    }

    /// The Name of an object whose TPMT_PUBLIC is `public` (TPM 2.0 Part 1 §16):
    /// nameAlg (TPM_ALG_ID, big-endian) || H_nameAlg(public).
    pub fn name_of(self, public: &[u8]) -> Vec<u8> {
        let mut name = self.tpm_id().to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(self.digest_alg(), public).as_ref());
        name
    }
}

/// TPM2B: a UINT16 size, then the bytes (TPM 2.0 Part 2 §10.4). Callers pass at most a few
/// hundred bytes; anything longer than a UINT16 is a bug, reported rather than truncated.
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>, CredentialError> {
    let len = u16::try_from(bytes.len()).map_err(|_| CredentialError("TPM2B over 65535 bytes"))?;
    let mut v = Vec::with_capacity(2 + bytes.len());
    v.extend(len.to_be_bytes());
    v.extend_from_slice(bytes);
    Ok(v)
}

/// KDFa (TPM 2.0 Part 1 §11.4.10.2): SP 800-108 KDF in counter mode with HMAC_hash,
/// K(i) = HMAC(key, [i]_32 || label || 0x00 || contextU || contextV || [bits]_32).
/// `label` is given without its terminating zero, which is always added.
pub fn kdfa(
    hash: NameAlg,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let key = hmac::Key::new(hash.hmac_alg(), key);
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + hash.digest_len());
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    mask_high_bits(&mut out, bits);
    out
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3): SP 800-56A concatenation KDF,
/// K(i) = H([i]_32 || Z || label || 0x00 || partyUInfo || partyVInfo).
pub fn kdfe(
    hash: NameAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + hash.digest_len());
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = digest::Context::new(hash.digest_alg());
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(want);
    mask_high_bits(&mut out, bits);
    out
}

/// "If bits is not a multiple of 8, the high-order bits of the first octet are zeroed"
/// (Part 1 §11.4.10.2); never the case for the sizes used here, kept for the definition.
fn mask_high_bits(out: &mut [u8], bits: u32) {
    let extra = (8 - bits % 8) % 8;
    if let Some(first) = out.first_mut() {
        *first &= 0xffu8 >> extra;
    }
}

/// MakeCredential could not run: a bug or a failed random source, never the client's input
/// (which the EK and AK checks have already vetted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MakeCredential: {0}")]
pub struct CredentialError(&'static str);

/// What TPM2_MakeCredential returns, marshalled as TPM2_ActivateCredential takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT: size, then TPM2B_DIGEST(outerHMAC) || encIdentity.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: size, then the OAEP ciphertext (RSA EK) or the marshalled
    /// TPMS_ECC_POINT of the ephemeral key (ECC EK).
    pub secret: Vec<u8>,
}

/// TPM2_MakeCredential(EK, credential, Name(AK)).
pub fn make_credential(
    ek: &Ek,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    let hash = ek.name_alg;
    if hash == NameAlg::Sha1 {
        return Err(CredentialError("SHA-1 EK nameAlg"));
    }
    // Part 3 §12.6.1: the credential is a TPM2B_DIGEST no longer than the EK nameAlg's digest.
    if credential.is_empty() || credential.len() > hash.digest_len() {
        return Err(CredentialError("credential size"));
    }
    let rng = SystemRandom::new();
    let (seed, protected) = protect_seed(ek, &rng)?;

    // Part 1 §24.4: the symmetric key, then encIdentity = CFB(symKey, IV 0, TPM2B credential).
    let sym_key = kdfa(
        hash,
        &seed,
        b"STORAGE",
        ak_name,
        &[],
        u32::from(ek.sym_bits),
    );
    let mut enc_identity = tpm2b(credential)?;
    let iv = [0u8; 16];
    match ek.sym_bits {
        128 => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &iv)
            .map_err(|_| CredentialError("AES-128 key size"))?
            .encrypt(&mut enc_identity),
        256 => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&sym_key, &iv)
            .map_err(|_| CredentialError("AES-256 key size"))?
            .encrypt(&mut enc_identity),
        _ => return Err(CredentialError("EK symmetric key size")),
    }

    // Part 1 §24.5: integrity over encIdentity || Name(AK).
    let hmac_key = kdfa(
        hash,
        &seed,
        b"INTEGRITY",
        &[],
        &[],
        (hash.digest_len() * 8) as u32,
    );
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hash.hmac_alg(), &hmac_key));
    mac.update(&enc_identity);
    mac.update(ak_name);
    let outer_hmac = mac.sign();

    let mut id_object = tpm2b(outer_hmac.as_ref())?;
    id_object.extend_from_slice(&enc_identity);
    Ok(MadeCredential {
        credential_blob: tpm2b(&id_object)?,
        secret: tpm2b(&protected)?,
    })
}

/// The seed and its protected form (step 1 of the module doc).
fn protect_seed(ek: &Ek, rng: &SystemRandom) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let hash = ek.name_alg;
    match &ek.key {
        EkKey::Rsa { modulus, exponent } => {
            let mut seed = vec![0u8; hash.digest_len()];
            rng.fill(&mut seed)
                .map_err(|_| CredentialError("no randomness"))?;
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| CredentialError("EK RSA key"))?;
            // Part 1 Annex B: OAEP with the EK nameAlg, label "IDENTITY" with its zero octet.
            const LABEL: &str = "IDENTITY\0";
            let padding = match hash {
                NameAlg::Sha256 => rsa::Oaep::new_with_label::<sha2::Sha256, _>(LABEL),
                NameAlg::Sha384 => rsa::Oaep::new_with_label::<sha2::Sha384, _>(LABEL),
                NameAlg::Sha512 => rsa::Oaep::new_with_label::<sha2::Sha512, _>(LABEL),
                NameAlg::Sha1 => return Err(CredentialError("SHA-1 EK nameAlg")),
            };
            let protected = key
                .encrypt(&mut rsa::rand_core::OsRng, padding, &seed)
                .map_err(|_| CredentialError("RSA-OAEP encryption"))?;
            Ok((seed, protected))
        }
        EkKey::Ecc { curve, x, y } => {
            let alg = match curve {
                Curve::P256 => &agreement::ECDH_P256,
                Curve::P384 => &agreement::ECDH_P384,
            };
            let ephemeral = agreement::EphemeralPrivateKey::generate(alg, rng)
                .map_err(|_| CredentialError("no randomness"))?;
            let q_e = ephemeral
                .compute_public_key()
                .map_err(|_| CredentialError("ECDH public key"))?;
            // Uncompressed points: 0x04 || X || Y, each coordinate the curve's size.
            let n = curve.coordinate_len();
            let q_e = q_e.as_ref();
            if q_e.len() != 1 + 2 * n {
                return Err(CredentialError("ECDH public key size"));
            }
            let (qe_x, qe_y) = (&q_e[1..=n], &q_e[1 + n..]);
            let mut peer = vec![0x04];
            peer.extend_from_slice(x);
            peer.extend_from_slice(y);
            // Z is the x-coordinate of the shared point (Part 1 Annex C; SP 800-56A §5.7.1.2).
            let z = agreement::agree_ephemeral(
                ephemeral,
                &agreement::UnparsedPublicKey::new(alg, &peer),
                |z| z.to_vec(),
            )
            .map_err(|_| CredentialError("ECDH with the EK (not a point on its curve?)"))?;
            let seed = kdfe(
                hash,
                &z,
                b"IDENTITY",
                qe_x,
                x,
                (hash.digest_len() * 8) as u32,
            );
            // TPMS_ECC_POINT (Part 2 §11.2.5.2): TPM2B x, TPM2B y.
            let mut point = tpm2b(qe_x)?;
            point.extend(tpm2b(qe_y)?);
            Ok((seed, point))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A software ActivateCredential for an RSA EK: the inverse of [`make_credential`], written
    /// from the same spec text. The real check is `ca/tests/tpm_enroll.rs` against swtpm.
    fn activate_rsa(
        key: &rsa::RsaPrivateKey,
        ak_name: &[u8],
        made: &MadeCredential,
    ) -> Option<Vec<u8>> {
        let secret = &made.secret[2..];
        let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0");
        let seed = key.decrypt(padding, secret).ok()?;
        let blob = &made.credential_blob[2..];
        let hmac_len = usize::from(u16::from_be_bytes([blob[0], blob[1]]));
        let (outer, enc) = blob[2..].split_at(hmac_len);
        let hmac_key = kdfa(NameAlg::Sha256, &seed, b"INTEGRITY", &[], &[], 256);
        let k = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
        hmac::verify(&k, &[enc, ak_name].concat(), outer).ok()?;
        let sym = kdfa(NameAlg::Sha256, &seed, b"STORAGE", ak_name, &[], 128);
        let mut plain = enc.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&sym, &[0; 16])
            .ok()?
            .decrypt(&mut plain);
        let n = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        Some(plain[2..2 + n].to_vec())
    }

    #[test]
    fn enroll_make_credential_rsa_round_trip() {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = key.to_public_key();
        let ek = Ek {
            key: EkKey::Rsa {
                modulus: public.n().to_bytes_be(),
                exponent: 65537,
            },
            name_alg: NameAlg::Sha256,
            sym_bits: 128,
            spki: vec![],
            hash: String::new(),
            identity: None,
            certified: false,
        };
        let name = NameAlg::Sha256.name_of(b"some TPMT_PUBLIC");
        let made = make_credential(&ek, &name, &[7u8; 32]).unwrap();
        // TPM2B_ID_OBJECT: 2 + (2 + 32 HMAC) + (2 + 32 credential).
        assert_eq!(made.credential_blob.len(), 2 + 34 + 34);
        assert_eq!(made.secret.len(), 2 + 256);
        assert_eq!(activate_rsa(&key, &name, &made), Some(vec![7u8; 32]));
        // Bound to the Name: another AK's Name fails the integrity check.
        let other = NameAlg::Sha256.name_of(b"another TPMT_PUBLIC");
        assert_eq!(activate_rsa(&key, &other, &made), None);
        // Credentials longer than the nameAlg digest are not a TPM2B_DIGEST.
        assert!(make_credential(&ek, &name, &[7u8; 33]).is_err());
    }

    #[test]
    fn enroll_kdfa_counter_and_truncation() {
        // Two HMAC blocks for 512 bits from SHA-256, the first equal to the 256-bit output's
        // prefix only when [bits] matches: [bits] is part of every block.
        let long = kdfa(NameAlg::Sha256, b"k", b"STORAGE", b"u", b"", 512);
        let short = kdfa(NameAlg::Sha256, b"k", b"STORAGE", b"u", b"", 256);
        assert_eq!(long.len(), 64);
        assert_eq!(short.len(), 32);
        assert_ne!(&long[..32], &short[..]);
        assert_eq!(kdfa(NameAlg::Sha256, b"k", b"X", b"", b"", 4)[0] & 0xf0, 0);
        assert_eq!(
            kdfe(NameAlg::Sha384, b"z", b"IDENTITY", b"u", b"v", 384).len(),
            48
        );
    }

    #[test]
    fn enroll_names() {
        let name = NameAlg::Sha384.name_of(b"x");
        assert_eq!(&name[..2], &[0x00, 0x0c]);
        assert_eq!(name.len(), 2 + 48);
        assert_eq!(NameAlg::from_tpm(tpm::TPM_ALG_SHA1), None);
    }
}
