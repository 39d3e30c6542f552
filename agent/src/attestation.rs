//! The `attObj` the agent sends for `device-attest-01` (draft-ietf-acme-device-attest §5:
//! `{"attObj": base64url(CBOR{fmt, attStmt})}`, the attestation object of WebAuthn §6.5 without
//! authData).
//!
//! - `tpm` (WebAuthn §8.3): `attStmt = {ver: "2.0", alg, x5c: [AK cert, intermediates…], sig,
//!   certInfo, pubArea}`, with `sig` the TPMT_SIGNATURE from TPM2_Certify.
//! - [`FMT_SOFTWARE`] (dev only, see [`software_att_obj`]): a key that is NOT in hardware,
//!   marked as such in its format name so that no verifier can mistake it for an attestation.

use ciborium::value::Value;

use crate::tpm::certify::Certification;

/// WebAuthn §8.3.
pub const FMT_TPM: &str = "tpm";

/// The format of the dev-only software key mode. Nothing is attested: a CA may accept it only
/// behind an explicit "allow unattested devices" switch, and must mark certificates so issued.
///
/// `attStmt = {alg: -7 (ES256), sig: bytes, pub: bytes, unattested: true}` where `pub` is the
/// key's SubjectPublicKeyInfo DER (P-256) and `sig` is a DER ECDSA-SHA256 signature by that key
/// over the ACME key authorization (proof of possession only, like WebAuthn §8.2 "packed"
/// self attestation). The device identifier is the order's: nothing vouches for it.
pub const FMT_SOFTWARE: &str = "portcullis-software-unattested";

/// CBOR `{fmt, attStmt}` (WebAuthn §6.5.4; text keys, as draft-ietf-acme-device-attest §5).
fn att_obj(fmt: &str, stmt: Vec<(&str, Value)>) -> Vec<u8> {
    let stmt = stmt
        .into_iter()
        .map(|(k, v)| (Value::Text(k.into()), v))
        .collect();
    let obj = Value::Map(vec![
        (Value::Text("fmt".into()), Value::Text(fmt.into())),
        (Value::Text("attStmt".into()), Value::Map(stmt)),
    ]);
    let mut out = Vec::new();
    // Serialising a Value into a Vec cannot fail.
    ciborium::ser::into_writer(&obj, &mut out).expect("CBOR into a Vec");
    out
}

/// The `tpm` attestation object for a TPM2_Certify output and the AK certificate chain
/// (`x5c[0]` the AK certificate, then intermediates, no root).
pub fn tpm_att_obj(cert: &Certification, x5c: &[Vec<u8>]) -> Vec<u8> {
    att_obj(
        FMT_TPM,
        vec![
            ("ver", Value::Text("2.0".into())),
            ("alg", Value::Integer(cert.alg.into())),
            (
                "x5c",
                Value::Array(x5c.iter().map(|c| Value::Bytes(c.clone())).collect()),
            ),
            ("sig", Value::Bytes(cert.signature.clone())),
            ("certInfo", Value::Bytes(cert.cert_info.clone())),
            ("pubArea", Value::Bytes(cert.pub_area.clone())),
        ],
    )
}

/// The dev-only software attestation object ([`FMT_SOFTWARE`]).
pub fn software_att_obj(spki: &[u8], sig_over_key_authorization: &[u8]) -> Vec<u8> {
    att_obj(
        FMT_SOFTWARE,
        vec![
            ("alg", Value::Integer((-7).into())),
            ("sig", Value::Bytes(sig_over_key_authorization.to_vec())),
            ("pub", Value::Bytes(spki.to_vec())),
            ("unattested", Value::Bool(true)),
        ],
    )
}
