//! The TPM layer against a real software TPM (swtpm, manufactured by swtpm_setup with an EK
//! certificate from a local manufacturer CA).

use std::process::Command;

use portcullis_agent::testing::{require_programs, Swtpm};
use portcullis_agent::tpm::ak::AkAlg;
use portcullis_agent::tpm::ek::EkAlg;
use portcullis_agent::tpm::public::PublicArea;
use portcullis_agent::tpm::{Persistent, Tpm};
use x509_parser::prelude::{FromDer, X509Certificate};

const DEVICE_KEY: Persistent = Persistent(0x8100_0101);
const AK: Persistent = Persistent(0x8100_0102);

fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    portcullis_agent::certificate::pem_chain(pem).expect("PEM certificates")
}

#[test]
fn tpm_ek_certificate_is_the_eks_and_chains_to_the_manufacturer() {
    let Some(swtpm) = Swtpm::start("tpm_ek_certificate") else {
        return;
    };
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let cert = tpm
        .ek_certificate(EkAlg::Rsa2048)
        .unwrap()
        .expect("swtpm_setup --create-ek-cert wrote an RSA EK certificate");
    let (rest, parsed) = X509Certificate::from_der(&cert).unwrap();
    assert!(rest.is_empty(), "NV padding trimmed");
    // The certificate is for the EK the default template recreates (EK Credential Profile §2.1.5).
    let ek = tpm.ek_public(EkAlg::Rsa2048).unwrap();
    assert_eq!(parsed.public_key().raw, ek.spki().unwrap().as_slice());
    // Issued by the test's local manufacturer CA.
    let issuer = pem_to_der(&swtpm.manufacturer_intermediate_pem()).remove(0);
    let (_, issuer) = X509Certificate::from_der(&issuer).unwrap();
    parsed
        .verify_signature(Some(issuer.public_key()))
        .expect("EK certificate signed by the manufacturer CA");
    // swtpm 0.7 makes its ECC EK on P-384: no P-256 EK certificate, and that is not an error.
    assert_eq!(tpm.ek_certificate(EkAlg::EccP256).unwrap(), None);
    assert!(tpm.transient_objects().unwrap().is_empty());
}

#[test]
fn tpm_device_key_is_persistent_non_exportable_and_signs() {
    let Some(swtpm) = Swtpm::start("tpm_device_key") else {
        return;
    };
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let public = tpm.ensure_device_key(DEVICE_KEY).unwrap();
    // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign.
    assert_eq!(public.attributes, 0x0004_0472);
    assert!(tpm.persistent_exists(DEVICE_KEY).unwrap());
    // Same key on the next call and from a new context: it is persistent, not recreated.
    drop(tpm);
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    assert_eq!(tpm.ensure_device_key(DEVICE_KEY).unwrap(), public);
    let err = tpm.create_device_key(DEVICE_KEY).unwrap_err();
    assert!(err.to_string().contains("already holds an object"), "{err}");

    // TPM2_Sign: a DER ECDSA P-256 SHA-256 signature the public key verifies.
    let message = b"certification request info";
    let sig = tpm.sign_sha256(DEVICE_KEY, message).unwrap();
    let point = public.ec_point().unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(message, &sig)
        .expect("TPM signature verifies");
    assert!(tpm.transient_objects().unwrap().is_empty());

    // Evict removes it; the handle can then hold a new, different key.
    tpm.evict(DEVICE_KEY).unwrap();
    assert!(!tpm.persistent_exists(DEVICE_KEY).unwrap());
    let fresh = tpm.create_device_key(DEVICE_KEY).unwrap();
    assert_ne!(fresh.ec_point().unwrap(), point);
    // Handles outside the persistent range are refused before any TPM command.
    assert!(Persistent::new(0x8000_0001).is_err());
    assert_eq!("0x81000101".parse::<Persistent>().unwrap(), DEVICE_KEY);
}

/// tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
/// TPM2B_ENCRYPTED_SECRET (tpm2-tools lib/files.c `files_save_credential`).
fn parse_tpm2_tools_credential(buf: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(&buf[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
    let mut rest = &buf[8..];
    let mut take = || {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let v = rest[2..2 + n].to_vec();
        rest = &rest[2 + n..];
        v
    };
    let id_object = take();
    let secret = take();
    (id_object, secret)
}

/// TPM2_ActivateCredential on the swtpm, against a credential made by a real, independent
/// implementation (`tpm2_makecredential -T none`, tpm2-tools).
#[test]
fn tpm_activate_credential_recovers_what_tpm2_makecredential_made() {
    if !require_programs("tpm_activate_credential", &["tpm2_makecredential"]) {
        return;
    }
    let Some(swtpm) = Swtpm::start("tpm_activate_credential") else {
        return;
    };
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ak = tpm.ensure_ak(EkAlg::Rsa2048, AkAlg::EccP256, AK).unwrap();
    let ek = tpm.ek_public(EkAlg::Rsa2048).unwrap();
    let make = |name: &[u8], secret: &[u8]| {
        let dir = swtpm.dir();
        let mut ek_tpm2b = (ek.bytes.len() as u16).to_be_bytes().to_vec();
        ek_tpm2b.extend(&ek.bytes);
        std::fs::write(dir.join("ek.pub"), ek_tpm2b).unwrap();
        std::fs::write(dir.join("secret"), secret).unwrap();
        let out = Command::new("tpm2_makecredential")
            .args(["-T", "none", "-u"])
            .arg(dir.join("ek.pub"))
            .arg("-s")
            .arg(dir.join("secret"))
            // The Name as hex (tpm2-tools 5 reads -n as a hex string).
            .arg("-n")
            .arg(hex::encode(name))
            .arg("-o")
            .arg(dir.join("cred.out"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tpm2_makecredential: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_tpm2_tools_credential(&std::fs::read(dir.join("cred.out")).unwrap())
    };
    let secret = b"0123456789abcdef0123456789abcdef";
    let (blob, encrypted) = make(&ak.name().unwrap(), secret);
    let recovered = tpm
        .activate_credential(AK, EkAlg::Rsa2048, &blob, &encrypted)
        .unwrap();
    assert_eq!(recovered, secret);
    assert!(tpm.transient_objects().unwrap().is_empty());

    // Made for another object's Name (here the device key's): the TPM refuses, and nothing
    // stays loaded after the failure.
    let device = tpm.ensure_device_key(DEVICE_KEY).unwrap();
    let (blob, encrypted) = make(&device.name().unwrap(), secret);
    let e = tpm
        .activate_credential(AK, EkAlg::Rsa2048, &blob, &encrypted)
        .unwrap_err();
    assert!(e.to_string().contains("TPM2_ActivateCredential"), "{e}");
    assert!(tpm.transient_objects().unwrap().is_empty());
    // Garbage sizes are refused before the TPM sees them.
    assert!(tpm
        .activate_credential(AK, EkAlg::Rsa2048, &[0; 4096], &encrypted)
        .is_err());
    let _ = PublicArea::parse(&ak.bytes).unwrap();
}

/// A TPM without an EK certificate for the chosen EK (swtpm 0.7 certifies no P-256 EK): the
/// enrollment request carries the EK public area instead (for an EK the inventory pins), and
/// credential activation works with the ECC EK too.
#[test]
fn tpm_ecc_ek_without_certificate_sends_ek_pub_and_activates() {
    use base64::Engine as _;
    if !require_programs("tpm_ecc_ek", &["tpm2_makecredential"]) {
        return;
    }
    let Some(swtpm) = Swtpm::start("tpm_ecc_ek") else {
        return;
    };
    let mut cfg = portcullis_agent::TpmKeyConfig::new(swtpm.tcti());
    cfg.ek_alg = EkAlg::EccP256;
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let req = portcullis_agent::enroll::start_request(&mut tpm, &cfg, "dev-ecc", &[]).unwrap();
    assert_eq!(req.ek_cert, None);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let ek_pub = b64.decode(req.ek_pub.as_deref().expect("ek_pub")).unwrap();
    let ek = tpm.ek_public(EkAlg::EccP256).unwrap();
    assert_eq!(
        ek_pub, ek.bytes,
        "the EK public area is deterministic (same template)"
    );
    let ak = PublicArea::parse(&b64.decode(&req.ak_pub).unwrap()).unwrap();
    assert_eq!(ak, tpm.ak_public(cfg.ak_handle).unwrap());

    let dir = swtpm.dir();
    let mut ek_tpm2b = (ek.bytes.len() as u16).to_be_bytes().to_vec();
    ek_tpm2b.extend(&ek.bytes);
    std::fs::write(dir.join("ek-ecc.pub"), ek_tpm2b).unwrap();
    std::fs::write(dir.join("secret-ecc"), b"ecc credential").unwrap();
    let out = Command::new("tpm2_makecredential")
        .args(["-T", "none", "-u"])
        .arg(dir.join("ek-ecc.pub"))
        .arg("-s")
        .arg(dir.join("secret-ecc"))
        .arg("-n")
        .arg(hex::encode(ak.name().unwrap()))
        .arg("-o")
        .arg(dir.join("cred-ecc.out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (blob, secret) =
        parse_tpm2_tools_credential(&std::fs::read(dir.join("cred-ecc.out")).unwrap());
    let got = tpm
        .activate_credential(cfg.ak_handle, EkAlg::EccP256, &blob, &secret)
        .unwrap();
    assert_eq!(got, b"ecc credential");
    assert!(tpm.transient_objects().unwrap().is_empty());
}
