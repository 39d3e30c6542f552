//! The attestation verifiers against real vendor data (tests/data/attest, see PROVENANCE.md
//! there) and against synthetic statements built here under test roots, with one mutation per
//! rule, each refused with that rule named.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciborium::value::Value;
use portcullis_ca::attest::apple::AppleVerifier;
use portcullis_ca::attest::chain::{self, ChainPolicy};
use portcullis_ca::attest::step::{self, StepVerifier};
use portcullis_ca::attest::tpm::{self, TpmVerifier};
use portcullis_ca::attest::{
    attobj, pem_certificates, AttObj, AttStmt, AttestError, AttestationFormat, DeviceIdentifier,
    Rule, Verifiers,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SigningKey,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

// ---------------------------------------------------------------------------------------------
// Helpers

fn data_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/attest")
        .join(rel)
}

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(data_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn pem(rel: &str) -> Vec<Vec<u8>> {
    let certs = pem_certificates(&String::from_utf8(data(rel)).unwrap()).unwrap();
    assert!(!certs.is_empty(), "{rel} holds no certificate");
    certs
}

fn one_pem(rel: &str) -> Vec<u8> {
    let mut c = pem(rel);
    assert_eq!(c.len(), 1, "{rel}");
    c.remove(0)
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[track_caller]
fn assert_rule<T: std::fmt::Debug>(r: Result<T, AttestError>, rule: Rule) -> AttestError {
    match r {
        Ok(v) => panic!("expected {rule:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.rule, rule, "wrong rule; message: {e}");
            assert!(!e.detail.is_empty());
            e
        }
    }
}

fn set(att: &AttObj, key: &str, value: Value) -> AttObj {
    let mut entries: Vec<(String, Value)> = att
        .att_stmt
        .entries()
        .iter()
        .filter(|(k, _)| k != key)
        .cloned()
        .collect();
    entries.push((key.to_owned(), value));
    AttObj {
        fmt: att.fmt.clone(),
        att_stmt: AttStmt::from_entries(entries),
        auth_data: att.auth_data.clone(),
    }
}

fn remove(att: &AttObj, key: &str) -> AttObj {
    AttObj {
        fmt: att.fmt.clone(),
        att_stmt: AttStmt::from_entries(
            att.att_stmt
                .entries()
                .iter()
                .filter(|(k, _)| k != key)
                .cloned()
                .collect(),
        ),
        auth_data: att.auth_data.clone(),
    }
}

fn stmt_bytes(att: &AttObj, key: &str) -> Vec<u8> {
    match att.att_stmt.get(key) {
        Some(Value::Bytes(b)) => b.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn x5c_value(certs: &[&[u8]]) -> Value {
    Value::Array(certs.iter().map(|c| Value::Bytes(c.to_vec())).collect())
}

/// The key of a SubjectPublicKeyInfo, owned.
#[derive(Debug)]
enum Key {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
        bits: usize,
    },
    Ec(Vec<u8>),
    Other,
}

fn spki_key(spki: &[u8]) -> Key {
    let (rest, s) = SubjectPublicKeyInfo::from_der(spki).unwrap();
    assert!(rest.is_empty());
    match s.parsed().unwrap() {
        PublicKey::RSA(r) => Key::Rsa {
            modulus: r.modulus.to_vec(),
            exponent: r.exponent.to_vec(),
            bits: r.key_size(),
        },
        PublicKey::EC(p) => Key::Ec(p.data().to_vec()),
        _ => Key::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// TPM: the six real Windows Hello attestations

const TPM_NOW: u64 = 1_700_000_000; // 2023-11-14, inside every AK chain's validity

struct TpmVector {
    dir: &'static str,
    manufacturer: &'static str,
    model: &'static str,
    ecc: bool,
}

const TPM_VECTORS: &[TpmVector] = &[
    TpmVector {
        dir: "webauthn-rs-winhello-intel-rsa",
        manufacturer: "id:494E5443",
        model: "SPT",
        ecc: false,
    },
    TpmVector {
        dir: "webauthn-rs-aseigler-nuvoton-ecc",
        manufacturer: "id:4E544300",
        model: "NPCT75x",
        ecc: true,
    },
    TpmVector {
        dir: "py_webauthn-surface-pro-4-intel-rsa",
        manufacturer: "id:494E5443",
        model: "ICL",
        ecc: false,
    },
    TpmVector {
        dir: "py_webauthn-dell-xps-13-nuvoton-rsa",
        manufacturer: "id:4E544300",
        model: "NPCT6xx",
        ecc: false,
    },
    TpmVector {
        dir: "py_webauthn-lenovo-carbon-x1-stm-rsa",
        manufacturer: "id:53544D20",
        model: "ST33HTPHAHC0",
        ecc: false,
    },
    TpmVector {
        dir: "py_webauthn-webauthn-io-nuvoton-ecc",
        manufacturer: "id:4E544300",
        model: "NPCT75x",
        ecc: true,
    },
];

/// The attestation object and its WebAuthn attToBeSigned = authData || SHA-256(clientDataJSON).
fn tpm_vector(dir: &str) -> (AttObj, Vec<u8>) {
    let att = attobj::parse(&data(&format!("tpm/{dir}/attestationObject.cbor"))).unwrap();
    let mut tbs = att
        .auth_data
        .clone()
        .expect("WebAuthn vectors carry authData");
    tbs.extend(sha256(&data(&format!("tpm/{dir}/clientDataJSON.json"))));
    (att, tbs)
}

fn tpm_sha1() -> TpmVerifier {
    let mut v = TpmVerifier::with_default_roots();
    v.allow_sha1 = true;
    v
}

/// The credential public key of WebAuthn authData (§6.5.1, §6.5.2): a COSE_Key.
fn cose_credential_key(auth_data: &[u8]) -> Vec<(i128, Value)> {
    let cred_len = u16::from_be_bytes([auth_data[53], auth_data[54]]) as usize;
    let cose = &auth_data[55 + cred_len..];
    let v: Value = ciborium::de::from_reader(cose).unwrap();
    let Value::Map(m) = v else {
        panic!("COSE key is not a map")
    };
    m.into_iter()
        .map(|(k, v)| (i128::from(k.as_integer().unwrap()), v))
        .collect()
}

fn cose_bytes(key: &[(i128, Value)], label: i128) -> Vec<u8> {
    key.iter()
        .find(|(k, _)| *k == label)
        .and_then(|(_, v)| v.as_bytes().cloned())
        .unwrap()
}

#[test]
fn attest_tpm_real_vectors_verify() {
    let v = tpm_sha1();
    for vec in TPM_VECTORS {
        let (att, tbs) = tpm_vector(vec.dir);
        // The base64url copy decodes to the same object.
        let b64 =
            String::from_utf8(data(&format!("tpm/{}/attestationObject.b64url", vec.dir))).unwrap();
        assert_eq!(
            attobj::from_base64url(b64.trim()).unwrap(),
            att,
            "{}",
            vec.dir
        );
        assert_eq!(att.fmt, "tpm");

        let ok = v
            .verify(&att, &tbs, at(TPM_NOW))
            .unwrap_or_else(|e| panic!("{}: {e}", vec.dir));
        assert_eq!(ok.format, "tpm");
        assert_eq!(ok.details.platform, "TPM 2.0");
        assert_eq!(
            ok.details.manufacturer.as_deref(),
            Some(vec.manufacturer),
            "{}",
            vec.dir
        );
        assert_eq!(ok.details.model.as_deref(), Some(vec.model), "{}", vec.dir);
        assert_eq!(
            ok.details.extra.get("tpm.alg").map(String::as_str),
            Some("RS1")
        );
        assert_eq!(ok.chain.len(), 3, "AK, intermediate, Microsoft root");
        assert_eq!(ok.chain[2], one_pem("tpm/microsoft-tpm-root-ca-2014.pem"));
        assert!(
            ok.identifiers.is_empty(),
            "Windows AK certificates carry no device identifier"
        );

        // The attested key derived from pubArea equals the credential key in authData.
        let cose = cose_credential_key(att.auth_data.as_ref().unwrap());
        match spki_key(&ok.public_key_spki) {
            Key::Rsa {
                modulus,
                exponent,
                bits,
            } => {
                assert!(!vec.ecc, "{}", vec.dir);
                assert_eq!(bits, 2048);
                let strip = |b: &[u8]| {
                    b.iter()
                        .skip_while(|&&x| x == 0)
                        .copied()
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    strip(&modulus),
                    strip(&cose_bytes(&cose, -1)),
                    "{}",
                    vec.dir
                );
                assert_eq!(
                    strip(&exponent),
                    strip(&cose_bytes(&cose, -2)),
                    "{}",
                    vec.dir
                );
            }
            Key::Ec(point) => {
                assert!(vec.ecc, "{}", vec.dir);
                let mut want = vec![4];
                want.extend(cose_bytes(&cose, -2));
                want.extend(cose_bytes(&cose, -3));
                assert_eq!(point, want, "{}", vec.dir);
            }
            other => panic!("{}: unexpected key {other:?}", vec.dir),
        }
    }
}

#[test]
fn attest_tpm_real_vectors_need_sha1_allowed() {
    let strict = TpmVerifier::with_default_roots();
    for vec in TPM_VECTORS {
        let (att, tbs) = tpm_vector(vec.dir);
        let e = assert_rule(strict.verify(&att, &tbs, at(TPM_NOW)), Rule::TpmAlgorithm);
        assert!(e.detail.contains("SHA-1"), "{e}");
    }
}

#[test]
fn attest_tpm_real_vector_mutations_name_the_rule() {
    let v = tpm_sha1();
    let now = at(TPM_NOW);
    let (att, tbs) = tpm_vector("webauthn-rs-aseigler-nuvoton-ecc");
    v.verify(&att, &tbs, now).unwrap();
    let cert_info = stmt_bytes(&att, "certInfo");
    let pub_area = stmt_bytes(&att, "pubArea");
    let sig = stmt_bytes(&att, "sig");

    // A flipped byte in certInfo.clockInfo: the AK signature no longer verifies.
    let mut ci = cert_info.clone();
    let clock_offset = 4 + 2 + 2 + 34 + 2 + 20;
    ci[clock_offset] ^= 0x01;
    assert_rule(
        v.verify(&set(&att, "certInfo", Value::Bytes(ci)), &tbs, now),
        Rule::TpmSignature,
    );

    // Wrong magic, wrong type.
    let mut ci = cert_info.clone();
    ci[0] = 0x00;
    let e = assert_rule(
        v.verify(&set(&att, "certInfo", Value::Bytes(ci)), &tbs, now),
        Rule::TpmMagic,
    );
    assert!(e.detail.contains("TPM_GENERATED_VALUE"), "{e}");
    let mut ci = cert_info.clone();
    ci[5] = 0x18; // TPM_ST_ATTEST_QUOTE
    assert_rule(
        v.verify(&set(&att, "certInfo", Value::Bytes(ci)), &tbs, now),
        Rule::TpmType,
    );

    // Truncated certInfo; lying TPM2B size.
    let ci = cert_info[..cert_info.len() - 3].to_vec();
    assert_rule(
        v.verify(&set(&att, "certInfo", Value::Bytes(ci)), &tbs, now),
        Rule::TpmCertInfoParse,
    );
    let mut ci = cert_info.clone();
    ci[6] = 0x40; // qualifiedSigner size 0x4022
    assert_rule(
        v.verify(&set(&att, "certInfo", Value::Bytes(ci)), &tbs, now),
        Rule::TpmCertInfoParse,
    );

    // Bad signature.
    let mut s = sig.clone();
    let last = s.len() - 1;
    s[last] ^= 0x80;
    assert_rule(
        v.verify(&set(&att, "sig", Value::Bytes(s)), &tbs, now),
        Rule::TpmSignature,
    );

    // Another key authorization (wrong nonce): extraData does not match.
    let mut other = tbs.clone();
    other[40] ^= 1;
    let e = assert_rule(v.verify(&att, &other, now), Rule::TpmExtraData);
    assert!(e.detail.contains("extraData"), "{e}");
    assert_rule(v.verify(&att, b"token.thumbprint", now), Rule::TpmExtraData);

    // pubArea: a flipped bit in the key (unique.ecc.y) breaks the Name match.
    let mut pa = pub_area.clone();
    let last = pa.len() - 1;
    pa[last] ^= 1;
    assert_rule(
        v.verify(&set(&att, "pubArea", Value::Bytes(pa)), &tbs, now),
        Rule::TpmName,
    );

    // pubArea.objectAttributes (bytes 4..8): restricted set; fixedTPM cleared.
    let mut pa = pub_area.clone();
    pa[5] |= 0x01; // bit 16
    let e = assert_rule(
        v.verify(&set(&att, "pubArea", Value::Bytes(pa)), &tbs, now),
        Rule::TpmObjectAttributes,
    );
    assert!(e.detail.contains("restricted"), "{e}");
    let mut pa = pub_area.clone();
    pa[7] &= !0x02;
    let e = assert_rule(
        v.verify(&set(&att, "pubArea", Value::Bytes(pa)), &tbs, now),
        Rule::TpmObjectAttributes,
    );
    assert!(e.detail.contains("fixedTPM"), "{e}");
    let mut pa = pub_area.clone();
    pa[7] &= !0x20;
    let e = assert_rule(
        v.verify(&set(&att, "pubArea", Value::Bytes(pa)), &tbs, now),
        Rule::TpmObjectAttributes,
    );
    assert!(e.detail.contains("sensitiveDataOrigin"), "{e}");
    // Truncated pubArea.
    let pa = pub_area[..pub_area.len() - 1].to_vec();
    assert_rule(
        v.verify(&set(&att, "pubArea", Value::Bytes(pa)), &tbs, now),
        Rule::TpmPubAreaParse,
    );

    // The object says it is another format.
    let other_fmt = AttObj {
        fmt: "packed".into(),
        ..att.clone()
    };
    assert_rule(v.verify(&other_fmt, &tbs, now), Rule::UnknownFormat);
    // ver, alg, missing fields.
    assert_rule(
        v.verify(&set(&att, "ver", Value::Text("1.2".into())), &tbs, now),
        Rule::TpmVersion,
    );
    assert_rule(
        v.verify(&set(&att, "alg", Value::Integer((-1).into())), &tbs, now),
        Rule::TpmAlgorithm,
    );
    // RS256 over a signature made with SHA-1: does not verify.
    assert_rule(
        v.verify(&set(&att, "alg", Value::Integer((-257).into())), &tbs, now),
        Rule::TpmSignature,
    );
    assert_rule(
        v.verify(&remove(&att, "certInfo"), &tbs, now),
        Rule::StatementField,
    );
    assert_rule(
        v.verify(&remove(&att, "x5c"), &tbs, now),
        Rule::StatementField,
    );

    // Time: after the AK's notAfter (2027-06-03), before the intermediate's notBefore.
    assert_rule(v.verify(&att, &tbs, at(1_830_000_000)), Rule::ChainExpired);
    assert_rule(
        v.verify(&att, &tbs, at(1_600_000_000)),
        Rule::ChainNotYetValid,
    );
    // The expired Intel chain fails at the current time.
    let (intel, intel_tbs) = tpm_vector("webauthn-rs-winhello-intel-rsa");
    assert_rule(
        v.verify(&intel, &intel_tbs, at(1_763_900_000)),
        Rule::ChainExpired,
    );

    // Chain: intermediate missing; untrusted root.
    let x5c = att.att_stmt.x5c("tpm").unwrap();
    let only_ak = set(&att, "x5c", x5c_value(&x5c[..1]));
    assert_rule(v.verify(&only_ak, &tbs, now), Rule::ChainNoIssuer);
    let mut apple_root = tpm_sha1();
    apple_root.roots = pem("apple/apple-enterprise-attestation-root-ca.pem");
    assert_rule(apple_root.verify(&att, &tbs, now), Rule::ChainNoIssuer);
    // The AK certificate presented twice in place of its issuer.
    let twice = set(&att, "x5c", x5c_value(&[x5c[0], x5c[0]]));
    assert_rule(v.verify(&twice, &tbs, now), Rule::ChainNoIssuer);
    // Garbage in x5c.
    let garbage = set(&att, "x5c", x5c_value(&[x5c[0], b"\x30\x03\x02\x01\x00"]));
    assert_rule(v.verify(&garbage, &tbs, now), Rule::CertParse);

    // An AK certificate that is not an AK certificate: the intermediate presented as x5c[0]
    // with the root, so the chain holds but the profile does not.
    let int_as_ak = set(&att, "x5c", x5c_value(&x5c[1..]));
    assert_rule(v.verify(&int_as_ak, &tbs, now), Rule::TpmAkCertSubject);
}

#[test]
fn attest_tpm_real_structures_from_go_attestation() {
    use base64::Engine as _;
    let json: serde_json::Value =
        serde_json::from_slice(&data("tpm/go-attestation/windows_gcp_shielded_vm.json")).unwrap();
    let b64 = |p: &str| {
        let s = json.pointer(p).and_then(|v| v.as_str()).unwrap();
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    // The AK's own TPMT_PUBLIC: RSA-2048, restricted signing key.
    let ak = tpm::parse_pub_area(&b64("/AK/Public")).unwrap();
    assert_eq!(ak.name_alg, tpm::TPM_ALG_SHA256);
    assert_eq!(ak.object_attributes, 0x0005_0472);
    assert_ne!(ak.object_attributes & tpm::TPMA_RESTRICTED, 0);
    match &ak.key {
        tpm::TpmKey::Rsa {
            key_bits,
            exponent,
            modulus,
        } => {
            assert_eq!((*key_bits, *exponent, modulus.len()), (2048, 0, 256));
        }
        other => panic!("{other:?}"),
    }
    let spki = ak.spki().unwrap();
    assert!(matches!(spki_key(&spki), Key::Rsa { bits: 2048, .. }));
    // A creation attestation and a quote are TPMS_ATTEST of other types: refused by name.
    let e = assert_rule(
        tpm::parse_cert_info(&b64("/AK/CreateAttestation")),
        Rule::TpmType,
    );
    assert!(e.detail.contains("0x801a"), "{e}");
    let e = assert_rule(tpm::parse_cert_info(&b64("/Quote/Quote")), Rule::TpmType);
    assert!(e.detail.contains("0x8018"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic PKIs (rcgen) for the success paths that need a private key

struct TestCa {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn ca_params(cn: &str, bc: IsCa) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn(cn);
    p.is_ca = bc;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn test_root(cn: &str) -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p = ca_params(cn, IsCa::Ca(BasicConstraints::Unconstrained));
    let der = p.self_signed(&key).unwrap().der().to_vec();
    TestCa {
        der,
        issuer: Issuer::new(p, key),
    }
}

fn test_sub(cn: &str, bc: IsCa, parent: &TestCa) -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    test_sub_with(ca_params(cn, bc), key, parent)
}

fn test_sub_with(p: CertificateParams, key: KeyPair, parent: &TestCa) -> TestCa {
    let der = p.signed_by(&key, &parent.issuer).unwrap().der().to_vec();
    TestCa {
        der,
        issuer: Issuer::new(p, key),
    }
}

fn leaf_params(cn: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = cn.map(dn).unwrap_or_default();
    p
}

fn ext(oid: &[u64], content: Vec<u8>, critical: bool) -> CustomExtension {
    let mut e = CustomExtension::from_oid_content(oid, content);
    e.set_criticality(critical);
    e
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        out.push(0x82);
        out.extend((content.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

// ---------------------------------------------------------------------------------------------
// TPM: synthetic ACME-shaped statements (ES256 AK, SHA-256 extraData = SHA-256(keyAuthorization))

const KA: &[u8] =
    b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

/// The TCG directoryName SAN of an AK certificate: manufacturer, model, version as three RDNs.
fn tcg_san() -> Vec<u8> {
    let attr = |last: u8, v: &str| {
        let mut c = der_tlv(0x06, &[0x67, 0x81, 0x05, 0x02, last]);
        c.extend(der_tlv(0x0c, v.as_bytes()));
        der_tlv(0x31, &der_tlv(0x30, &c))
    };
    let mut name = attr(1, "id:54455354");
    name.extend(attr(2, "SYNTH"));
    name.extend(attr(3, "id:00010002"));
    der_tlv(0x30, &der_tlv(0xa4, &der_tlv(0x30, &name)))
}

fn ak_params() -> CertificateParams {
    let mut p = leaf_params(None);
    p.custom_extensions
        .push(ext(&[2, 5, 29, 17], tcg_san(), true));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 3])];
    p.is_ca = IsCa::ExplicitNoCa;
    p
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// TPMT_PUBLIC of an ECC P-256 signing key (TPM 2.0 Part 2 §12.2.4).
fn ecc_pub_area(attrs: u32, point: &[u8]) -> Vec<u8> {
    assert_eq!(point.len(), 65);
    let mut v = tpm::TPM_ALG_ECC.to_be_bytes().to_vec();
    v.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
    v.extend(attrs.to_be_bytes());
    v.extend(tpm2b(&[]));
    v.extend(tpm::TPM_ALG_NULL.to_be_bytes()); // symmetric
    v.extend(tpm::TPM_ALG_ECDSA.to_be_bytes()); // scheme
    v.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
    v.extend(tpm::TPM_ECC_NIST_P256.to_be_bytes());
    v.extend(tpm::TPM_ALG_NULL.to_be_bytes()); // kdf
    v.extend(tpm2b(&point[1..33]));
    v.extend(tpm2b(&point[33..]));
    v
}

fn cert_info(magic: u32, ty: u16, extra: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    v.extend(ty.to_be_bytes());
    let mut signer = vec![0x00, 0x0b];
    signer.extend([0x11; 32]);
    v.extend(tpm2b(&signer));
    v.extend(tpm2b(extra));
    v.extend(1234u64.to_be_bytes()); // clock
    v.extend(1u32.to_be_bytes()); // resetCount
    v.extend(0u32.to_be_bytes()); // restartCount
    v.push(1); // safe
    v.extend(0x0001_0002_0003_0004u64.to_be_bytes()); // firmwareVersion
    v.extend(tpm2b(name));
    v.extend(tpm2b(&[]));
    v
}

fn tpm_name(pub_area: &[u8]) -> Vec<u8> {
    let mut n = vec![0x00, 0x0b];
    n.extend(sha256(pub_area));
    n
}

struct SynthTpm {
    root: TestCa,
    intermediate: TestCa,
    ak: KeyPair,
    ak_der: Vec<u8>,
    key: KeyPair,
}

impl SynthTpm {
    fn new() -> Self {
        Self::with_ak_params(ak_params())
    }

    fn with_ak_params(p: CertificateParams) -> Self {
        Self::with_ak(
            p,
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        )
    }

    fn with_ak(p: CertificateParams, ak: KeyPair) -> Self {
        let root = test_root("Test TPM Root");
        let intermediate = test_sub(
            "Test TPM Intermediate",
            IsCa::Ca(BasicConstraints::Constrained(0)),
            &root,
        );
        let ak_der = p
            .signed_by(&ak, &intermediate.issuer)
            .unwrap()
            .der()
            .to_vec();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            root,
            intermediate,
            ak,
            ak_der,
            key,
        }
    }

    fn verifier(&self) -> TpmVerifier {
        TpmVerifier::with_roots(vec![self.root.der.clone()])
    }

    fn pub_area(&self, attrs: u32) -> Vec<u8> {
        ecc_pub_area(attrs, self.key.public_key_raw())
    }

    /// A statement over `cert_info` and `pub_area`, signed by the AK (DER ECDSA).
    fn att(&self, cert_info: Vec<u8>, pub_area: Vec<u8>) -> AttObj {
        let sig = self.ak.sign(&cert_info).unwrap();
        AttObj {
            fmt: "tpm".into(),
            att_stmt: AttStmt::from_entries(vec![
                ("ver".into(), Value::Text("2.0".into())),
                ("alg".into(), Value::Integer((-7).into())),
                (
                    "x5c".into(),
                    x5c_value(&[&self.ak_der, &self.intermediate.der]),
                ),
                ("sig".into(), Value::Bytes(sig)),
                ("certInfo".into(), Value::Bytes(cert_info)),
                ("pubArea".into(), Value::Bytes(pub_area)),
            ]),
            auth_data: None,
        }
    }

    fn good(&self) -> AttObj {
        let pa = self.pub_area(0x0004_0072);
        let ci = cert_info(
            tpm::TPM_GENERATED_VALUE,
            tpm::TPM_ST_ATTEST_CERTIFY,
            &sha256(KA),
            &tpm_name(&pa),
        );
        self.att(ci, pa)
    }
}

#[test]
fn attest_tpm_synthetic_acme_statement_verifies() {
    let s = SynthTpm::new();
    let att = s.good();
    // Through CBOR and base64url as the ACME client sends it.
    let wire = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(attobj::to_cbor(&att))
    };
    let att = attobj::from_base64url(&wire).unwrap();
    let ok = s.verifier().verify(&att, KA, SystemTime::now()).unwrap();
    assert_eq!(ok.public_key_spki, s.key.subject_public_key_info());
    assert_eq!(ok.details.manufacturer.as_deref(), Some("id:54455354"));
    assert_eq!(ok.details.model.as_deref(), Some("SYNTH"));
    assert_eq!(
        ok.details.extra.get("tpm.version").map(String::as_str),
        Some("id:00010002")
    );
    assert_eq!(
        ok.details.firmware_version.as_deref(),
        Some("0x0001000200030004")
    );
    assert_eq!(
        ok.chain,
        vec![
            s.ak_der.clone(),
            s.intermediate.der.clone(),
            s.root.der.clone()
        ]
    );
    // Through the dispatcher too.
    let mut all = Verifiers::default();
    all.register(std::sync::Arc::new(s.verifier()));
    assert_eq!(all.verify(&att, KA, SystemTime::now()).unwrap(), ok);
    // SHA-1 is not needed for this one, and not allowed by default.
    assert!(!s.verifier().allow_sha1);
}

#[test]
fn attest_tpm_synthetic_tpmt_signature_encoding_verifies() {
    let s = SynthTpm::new();
    let good = s.good();
    let ci = stmt_bytes(&good, "certInfo");
    // TPMT_SIGNATURE { ECDSA, SHA256, r, s } (TPM 2.0 Part 2 §11.3.4), as TPM2_Certify returns it.
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &s.ak.serialize_der(),
        &rng,
    )
    .unwrap();
    let fixed = kp.sign(&rng, &ci).unwrap();
    let mut tpmt = tpm::TPM_ALG_ECDSA.to_be_bytes().to_vec();
    tpmt.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
    tpmt.extend(tpm2b(&fixed.as_ref()[..32]));
    tpmt.extend(tpm2b(&fixed.as_ref()[32..]));
    let att = set(&good, "sig", Value::Bytes(tpmt.clone()));
    s.verifier().verify(&att, KA, SystemTime::now()).unwrap();
    // The same structure claiming SHA-384 is refused; a wrong sigAlg too.
    let mut bad = tpmt.clone();
    bad[3] = 0x0c;
    assert_rule(
        s.verifier()
            .verify(&set(&good, "sig", Value::Bytes(bad)), KA, SystemTime::now()),
        Rule::TpmSignature,
    );
    let mut bad = tpmt.clone();
    bad[1] = 0x14;
    assert_rule(
        s.verifier()
            .verify(&set(&good, "sig", Value::Bytes(bad)), KA, SystemTime::now()),
        Rule::TpmSignature,
    );
    // Truncated TPMT_SIGNATURE.
    let bad = tpmt[..tpmt.len() - 2].to_vec();
    assert_rule(
        s.verifier()
            .verify(&set(&good, "sig", Value::Bytes(bad)), KA, SystemTime::now()),
        Rule::TpmSignature,
    );
}

#[test]
fn attest_tpm_synthetic_rsa_ak_pkcs1_and_pss() {
    let s = SynthTpm::with_ak(ak_params(), rsa_key());
    let v = s.verifier();
    let now = SystemTime::now();
    let good = s.good();
    let ci = stmt_bytes(&good, "certInfo");
    let rng = ring::rand::SystemRandom::new();
    let ring_key = ring::signature::RsaKeyPair::from_pkcs8(&s.ak.serialize_der()).unwrap();
    let sign = |padding: &'static dyn ring::signature::RsaEncoding| {
        let mut sig = vec![0; ring_key.public().modulus_len()];
        ring_key.sign(padding, &rng, &ci, &mut sig).unwrap();
        sig
    };
    let rs256 = sign(&ring::signature::RSA_PKCS1_SHA256);
    let ps256 = sign(&ring::signature::RSA_PSS_SHA256);
    let with = |alg: i64, sig: Vec<u8>| {
        set(
            &set(&good, "alg", Value::Integer(alg.into())),
            "sig",
            Value::Bytes(sig),
        )
    };
    // RS256 and PS256, raw.
    v.verify(&with(-257, rs256.clone()), KA, now).unwrap();
    v.verify(&with(-37, ps256.clone()), KA, now).unwrap();
    // RS256 as a TPMT_SIGNATURE { RSASSA, SHA256, sig }; PS256 as { RSAPSS, SHA256, sig }.
    let tpmt = |alg: u16, sig: &[u8]| {
        let mut t = alg.to_be_bytes().to_vec();
        t.extend(tpm::TPM_ALG_SHA256.to_be_bytes());
        t.extend(tpm2b(sig));
        t
    };
    v.verify(&with(-257, tpmt(tpm::TPM_ALG_RSASSA, &rs256)), KA, now)
        .unwrap();
    v.verify(&with(-37, tpmt(tpm::TPM_ALG_RSAPSS, &ps256)), KA, now)
        .unwrap();
    // A PSS signature declared as PKCS#1 v1.5 and the reverse; a TPMT whose sigAlg disagrees.
    assert_rule(
        v.verify(&with(-257, ps256.clone()), KA, now),
        Rule::TpmSignature,
    );
    assert_rule(
        v.verify(&with(-37, rs256.clone()), KA, now),
        Rule::TpmSignature,
    );
    assert_rule(
        v.verify(&with(-37, tpmt(tpm::TPM_ALG_RSASSA, &ps256)), KA, now),
        Rule::TpmSignature,
    );
    // ES256 with an RSA AK.
    assert_rule(v.verify(&with(-7, rs256), KA, now), Rule::TpmAlgorithm);
    // RS384 over a SHA-256 signature.
    assert_rule(v.verify(&with(-258, ps256), KA, now), Rule::TpmSignature);
}

#[test]
fn attest_tpm_synthetic_each_rule() {
    let s = SynthTpm::new();
    let v = s.verifier();
    let now = SystemTime::now();
    let pa = s.pub_area(0x0004_0072);
    let name = tpm_name(&pa);
    let extra = sha256(KA);

    // Re-signed mutations: each isolates one rule.
    let ci = cert_info(0xff54_4348, tpm::TPM_ST_ATTEST_CERTIFY, &extra, &name);
    assert_rule(v.verify(&s.att(ci, pa.clone()), KA, now), Rule::TpmMagic);
    let ci = cert_info(tpm::TPM_GENERATED_VALUE, 0x8014, &extra, &name);
    assert_rule(v.verify(&s.att(ci, pa.clone()), KA, now), Rule::TpmType);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &extra,
        &name[..33],
    );
    assert_rule(v.verify(&s.att(ci, pa.clone()), KA, now), Rule::TpmName);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &sha256(b"other.ka"),
        &name,
    );
    assert_rule(
        v.verify(&s.att(ci, pa.clone()), KA, now),
        Rule::TpmExtraData,
    );
    // extraData hashed with SHA-1 under an ES256 statement.
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, KA);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        sha1.as_ref(),
        &name,
    );
    assert_rule(
        v.verify(&s.att(ci, pa.clone()), KA, now),
        Rule::TpmExtraData,
    );
    // A restricted key (an AK-like key) and a key that is not fixedParent.
    let restricted = s.pub_area(0x0005_0072);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &extra,
        &tpm_name(&restricted),
    );
    assert_rule(
        v.verify(&s.att(ci, restricted), KA, now),
        Rule::TpmObjectAttributes,
    );
    let movable = s.pub_area(0x0004_0062);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &extra,
        &tpm_name(&movable),
    );
    let e = assert_rule(
        v.verify(&s.att(ci, movable), KA, now),
        Rule::TpmObjectAttributes,
    );
    assert!(e.detail.contains("fixedParent"), "{e}");
    // A decrypt-only key.
    let decrypt = s.pub_area(0x0002_0072);
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &extra,
        &tpm_name(&decrypt),
    );
    assert_rule(
        v.verify(&s.att(ci, decrypt), KA, now),
        Rule::TpmObjectAttributes,
    );
    // A P-521 key (curve 0x0005).
    let mut p521 = pa.clone();
    p521[17] = 0x05;
    let ci = cert_info(
        tpm::TPM_GENERATED_VALUE,
        tpm::TPM_ST_ATTEST_CERTIFY,
        &extra,
        &tpm_name(&p521),
    );
    assert_rule(v.verify(&s.att(ci, p521), KA, now), Rule::TpmKeyStrength);
    // A signature by another key.
    let good = s.good();
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = other.sign(&stmt_bytes(&good, "certInfo")).unwrap();
    assert_rule(
        v.verify(&set(&good, "sig", Value::Bytes(forged)), KA, now),
        Rule::TpmSignature,
    );
    // ES256 statement declared as RS256 with an EC AK.
    assert_rule(
        v.verify(&set(&good, "alg", Value::Integer((-257).into())), KA, now),
        Rule::TpmAlgorithm,
    );
    // Untrusted root.
    let other_root = TpmVerifier::with_roots(vec![test_root("Another TPM Root").der]);
    assert_rule(other_root.verify(&good, KA, now), Rule::ChainNoIssuer);
    // Default roots (Microsoft) do not know this PKI.
    assert_rule(
        TpmVerifier::with_default_roots().verify(&good, KA, now),
        Rule::ChainNoIssuer,
    );
}

#[test]
fn attest_tpm_synthetic_ak_profile_rules() {
    let now = SystemTime::now();
    // Wrong EKU (clientAuth instead of tcg-kp-AIKCertificate).
    let mut p = ak_params();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let s = SynthTpm::with_ak_params(p);
    let e = assert_rule(s.verifier().verify(&s.good(), KA, now), Rule::TpmAkCertEku);
    assert!(e.detail.contains("2.23.133.8.3"), "{e}");
    // No EKU at all.
    let mut p = ak_params();
    p.extended_key_usages = vec![];
    let s = SynthTpm::with_ak_params(p);
    assert_rule(s.verifier().verify(&s.good(), KA, now), Rule::TpmAkCertEku);
    // A subject.
    let mut p = ak_params();
    p.distinguished_name = dn("not empty");
    let s = SynthTpm::with_ak_params(p);
    assert_rule(
        s.verifier().verify(&s.good(), KA, now),
        Rule::TpmAkCertSubject,
    );
    // No TCG SAN.
    let mut p = ak_params();
    p.custom_extensions.clear();
    let s = SynthTpm::with_ak_params(p);
    assert_rule(s.verifier().verify(&s.good(), KA, now), Rule::TpmAkCertSan);
    // An AK certificate that says it is a CA.
    let mut p = ak_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let s = SynthTpm::with_ak_params(p);
    assert_rule(s.verifier().verify(&s.good(), KA, now), Rule::TpmAkCertCa);
    // Expired AK certificate at `now`.
    let mut p = ak_params();
    p.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
    p.not_after = time::macros::datetime!(2021-01-01 0:00 UTC);
    let s = SynthTpm::with_ak_params(p);
    assert_rule(s.verifier().verify(&s.good(), KA, now), Rule::ChainExpired);
    s.verifier()
        .verify(&s.good(), KA, at(1_600_000_000))
        .unwrap();
}

#[test]
fn attest_tpm_ak_permanent_identifier_is_reported() {
    // An AK certificate from the open enrollment CA carries the device's PermanentIdentifier
    // (RFC 4043) beside the TCG directoryName.
    let mut p = ak_params();
    let mut pid = der_tlv(0x0c, b"device-42");
    pid.extend(der_tlv(0x06, &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37])); // 1.3.6.1.4.1.311
    let other_name = {
        let mut c = der_tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03]);
        c.extend(der_tlv(0xa0, &der_tlv(0x30, &pid)));
        der_tlv(0xa0, &c)
    };
    let mut names = other_name;
    let dir = tcg_san();
    names.extend_from_slice(&dir[2..]); // the directoryName GeneralName of tcg_san()
    p.custom_extensions = vec![ext(&[2, 5, 29, 17], der_tlv(0x30, &names), true)];
    let s = SynthTpm::with_ak_params(p);
    let ok = s
        .verifier()
        .verify(&s.good(), KA, SystemTime::now())
        .unwrap();
    assert_eq!(ok.identifiers.len(), 1);
    assert_eq!(ok.identifiers[0].acme_value(), "device-42/1.3.6.1.4.1.311");
    assert_eq!(ok.identifiers[0].acme_type(), "permanent-identifier");
}

// ---------------------------------------------------------------------------------------------
// Apple

const DARKBLOOM_AT: u64 = 1_777_939_200; // 2026-05-05
const DARKBLOOM_TOKEN: &str =
    "qKxKds4zZk81flmOxcOmQVYSL0xkeg88tLBfXd7ghhJ/QYjW5ZKBAzASJ0TPwseWv38jW61NESGDtGsJqdzJ9Q==";
const NANOCA_AT: u64 = 1_752_969_600; // 2025-07-20

fn apple_att(certs: &[&[u8]]) -> AttObj {
    AttObj {
        fmt: "apple".into(),
        att_stmt: AttStmt::from_entries(vec![("x5c".into(), x5c_value(certs))]),
        auth_data: None,
    }
}

#[test]
fn attest_apple_real_leaf_verifies_with_known_token() {
    let leaf = one_pem("apple/darkbloom-f99b7905-leaf-WRPWFW61H9.pem");
    let sub = one_pem("apple/apple-enterprise-attestation-sub-ca-1.pem");
    let root = one_pem("apple/apple-enterprise-attestation-root-ca.pem");
    let v = AppleVerifier::with_default_roots();
    assert_eq!(
        v.roots,
        vec![root.clone()],
        "the embedded root is the published one"
    );
    let att = apple_att(&[&leaf, &sub]);
    // Token alone, and as the token part of a key authorization.
    let ok = v
        .verify(&att, DARKBLOOM_TOKEN.as_bytes(), at(DARKBLOOM_AT))
        .unwrap();
    let ka = format!("{DARKBLOOM_TOKEN}.thumbprint");
    assert_eq!(v.verify(&att, ka.as_bytes(), at(DARKBLOOM_AT)).unwrap(), ok);
    assert_eq!(ok.chain, vec![leaf.clone(), sub.clone(), root]);
    let ids: Vec<String> = ok
        .identifiers
        .iter()
        .map(DeviceIdentifier::acme_value)
        .collect();
    assert_eq!(ids, ["WRPWFW61H9", "00006021-0014182A11C0201E"]);
    assert_eq!(ok.details.os_version.as_deref(), Some("26.2"));
    assert_eq!(ok.details.sep_os_version.as_deref(), Some("26.2"));
    assert_eq!(ok.details.model.as_deref(), Some("J416cAP"));
    assert!(matches!(spki_key(&ok.public_key_spki), Key::Ec(p) if p.len() == 97));

    // Wrong token.
    assert_rule(
        v.verify(&att, b"another-token.thumb", at(DARKBLOOM_AT)),
        Rule::AppleFreshnessMismatch,
    );
    // Before the leaf's notBefore (2026-04-28); after its notAfter (2026-07-28).
    assert_rule(
        v.verify(&att, DARKBLOOM_TOKEN.as_bytes(), at(1_746_316_800)),
        Rule::ChainNotYetValid,
    );
    assert_rule(
        v.verify(&att, DARKBLOOM_TOKEN.as_bytes(), at(1_790_000_000)),
        Rule::ChainExpired,
    );
    // Without Sub CA 1 there is no path.
    assert_rule(
        v.verify(
            &apple_att(&[&leaf]),
            DARKBLOOM_TOKEN.as_bytes(),
            at(DARKBLOOM_AT),
        ),
        Rule::ChainNoIssuer,
    );
    // A flipped bit in the leaf's signature.
    let mut bad = leaf.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_rule(
        v.verify(
            &apple_att(&[&bad, &sub]),
            DARKBLOOM_TOKEN.as_bytes(),
            at(DARKBLOOM_AT),
        ),
        Rule::ChainSignature,
    );
}

#[test]
fn attest_apple_second_real_leaf_chains_and_parses() {
    // nanoca's leaf: the chain is good at 2025-07-20, the nonce preimage is unknown, so the
    // statement is refused at the freshness rule, after chain and parse have passed.
    let leaf = one_pem("apple/nanoca-leaf-TMWFWWWP67.pem");
    let sub = one_pem("apple/apple-enterprise-attestation-sub-ca-1.pem");
    let v = AppleVerifier::with_default_roots();
    let att = apple_att(&[&leaf, &sub]);
    assert_rule(
        v.verify(&att, b"unknown", at(NANOCA_AT)),
        Rule::AppleFreshnessMismatch,
    );
    let path = chain::verify_chain(
        "apple",
        &[&leaf, &sub],
        &[],
        &v.roots,
        at(NANOCA_AT),
        &ChainPolicy::default(),
    )
    .unwrap();
    assert_eq!(path.len(), 3);
    // Today it is expired.
    assert_rule(
        v.verify(&att, b"unknown", at(1_763_900_000)),
        Rule::ChainExpired,
    );
}

struct SynthApple {
    root: TestCa,
    sub: TestCa,
}

impl SynthApple {
    fn new() -> Self {
        let root = test_root("Test Apple Root");
        let sub = test_sub(
            "Test Apple Sub CA",
            IsCa::Ca(BasicConstraints::Constrained(0)),
            &root,
        );
        Self { root, sub }
    }

    fn leaf(&self, exts: Vec<CustomExtension>) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut p = leaf_params(Some("attestation leaf"));
        p.custom_extensions = exts;
        (
            p.signed_by(&key, &self.sub.issuer).unwrap().der().to_vec(),
            key,
        )
    }

    fn verifier(&self) -> AppleVerifier {
        AppleVerifier::with_roots(vec![self.root.der.clone()])
    }
}

const APPLE_NONCE: &[u64] = &[1, 2, 840, 113635, 100, 8, 11, 1];
const APPLE_SERIAL: &[u64] = &[1, 2, 840, 113635, 100, 8, 9, 1];
const APPLE_UDID: &[u64] = &[1, 2, 840, 113635, 100, 8, 9, 2];
const APPLE_OS: &[u64] = &[1, 2, 840, 113635, 100, 8, 10, 1];

#[test]
fn attest_apple_synthetic_freshness_and_identifiers() {
    let s = SynthApple::new();
    let v = s.verifier();
    let now = SystemTime::now();
    let token = b"Jb0bR1ZQnX8Jmx-fUF0eN3Q";
    let ka = [&token[..], b".account-thumbprint"].concat();
    let nonce = |t: &[u8]| ext(APPLE_NONCE, sha256(t), false);

    let (leaf, key) = s.leaf(vec![
        nonce(token),
        ext(APPLE_SERIAL, b"C02XK0ABJGH5".to_vec(), false),
        ext(APPLE_OS, b"15.1".to_vec(), false),
    ]);
    let ok = v
        .verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now)
        .unwrap();
    assert_eq!(ok.identifiers.len(), 1);
    assert_eq!(ok.identifiers[0].acme_value(), "C02XK0ABJGH5");
    assert_eq!(ok.details.os_version.as_deref(), Some("15.1"));
    assert_eq!(ok.public_key_spki, key.subject_public_key_info());

    // Missing freshness code: refused (step-ca would accept).
    let (leaf, _) = s.leaf(vec![ext(APPLE_SERIAL, b"C02XK0ABJGH5".to_vec(), false)]);
    let e = assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::AppleFreshnessMissing,
    );
    assert!(e.detail.contains("1.2.840.113635.100.8.11.1"), "{e}");
    // A freshness code for another token (a replayed attestation).
    let (leaf, _) = s.leaf(vec![
        nonce(b"old-token"),
        ext(APPLE_UDID, b"00008030-0001".to_vec(), false),
    ]);
    assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::AppleFreshnessMismatch,
    );
    // The code over the whole key authorization instead of the token.
    let (leaf, _) = s.leaf(vec![
        nonce(&ka),
        ext(APPLE_UDID, b"00008030-0001".to_vec(), false),
    ]);
    assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::AppleFreshnessMismatch,
    );
    // Neither serial nor UDID.
    let (leaf, _) = s.leaf(vec![nonce(token)]);
    assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::AppleIdentifierMissing,
    );
    // A serial that is not text.
    let (leaf, _) = s.leaf(vec![
        nonce(token),
        ext(APPLE_SERIAL, vec![0xff, 0x00], false),
    ]);
    assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::AppleExtension,
    );
    // An unknown critical extension on the leaf.
    let (leaf, _) = s.leaf(vec![
        nonce(token),
        ext(APPLE_SERIAL, b"X".to_vec(), false),
        ext(&[1, 2, 3, 4], vec![5], true),
    ]);
    assert_rule(
        v.verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::ChainUnknownCriticalExtension,
    );
    // A leaf that says it is a CA.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut p = leaf_params(Some("attestation leaf"));
    p.custom_extensions = vec![nonce(token), ext(APPLE_SERIAL, b"X".to_vec(), false)];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_leaf = p.signed_by(&key, &s.sub.issuer).unwrap().der().to_vec();
    assert_rule(
        v.verify(&apple_att(&[&ca_leaf, &s.sub.der]), &ka, now),
        Rule::LeafIsCa,
    );
    // The real Apple root does not know the test PKI.
    let (leaf, _) = s.leaf(vec![nonce(token), ext(APPLE_SERIAL, b"X".to_vec(), false)]);
    assert_rule(
        AppleVerifier::with_default_roots().verify(&apple_att(&[&leaf, &s.sub.der]), &ka, now),
        Rule::ChainNoIssuer,
    );
}

// ---------------------------------------------------------------------------------------------
// YubiKey PIV (step)

const YUBI_AT: u64 = 1_735_689_600; // 2025-01-01

fn step_att(alg: i64, sig: Vec<u8>, certs: &[&[u8]]) -> AttObj {
    AttObj {
        fmt: "step".into(),
        att_stmt: AttStmt::from_entries(vec![
            ("alg".into(), Value::Integer(alg.into())),
            ("sig".into(), Value::Bytes(sig)),
            ("x5c".into(), x5c_value(certs)),
        ]),
        auth_data: None,
    }
}

#[test]
fn attest_step_real_chains_and_serials() {
    let v = StepVerifier::with_default_roots();
    assert!(v
        .roots
        .contains(&one_pem("yubikey/yubico-piv-root-ca-serial-263751.pem")));
    assert!(v
        .roots
        .contains(&one_pem("yubikey/yubico-attestation-root-1.pem")));
    let f9 = one_pem("yubikey/ipxe-attestation-intermediate.crt");
    let policy = ChainPolicy {
        allow_issuer_without_basic_constraints: true,
        ..ChainPolicy::default()
    };
    for (slot, serial) in [("9a", 28_557_046u64), ("9c", 28_557_046)] {
        let leaf = one_pem(&format!("yubikey/ipxe-attestation-{slot}.crt"));
        let path = chain::verify_chain(
            "step",
            &[&leaf, &f9],
            &v.intermediates,
            &v.roots,
            at(YUBI_AT),
            &policy,
        )
        .unwrap();
        assert_eq!(path.len(), 3, "slot, f9, PIV root");
        let cert = chain::parse_certificate(&leaf, "leaf").unwrap();
        assert_eq!(step::yubikey_serial(&cert).unwrap(), serial);
        // With a signature the device did not make, the statement is refused at the signature
        // rule, after the chain and the serial have passed. (No real `sig` exists publicly:
        // it needs the device's private key.)
        let alg = if slot == "9a" { -7 } else { -257 };
        let att = step_att(alg, vec![0x30, 0x00], &[&leaf, &f9]);
        assert_rule(v.verify(&att, KA, at(YUBI_AT)), Rule::StepSignature);
        // alg that does not fit the key.
        let wrong = if slot == "9a" { -257 } else { -7 };
        assert_rule(
            v.verify(&step_att(wrong, vec![], &[&leaf, &f9]), KA, at(YUBI_AT)),
            Rule::StepAlgorithm,
        );
    }
    // The slot certificate's key equals the published 9c public key.
    let leaf9c = one_pem("yubikey/ipxe-attestation-9c.crt");
    let cert = chain::parse_certificate(&leaf9c, "leaf").unwrap();
    assert!(
        matches!(cert.public_key().parsed().unwrap(), PublicKey::RSA(r) if r.key_size() == 2048)
    );
}

#[test]
fn attest_step_yubikey4_f9_without_basic_constraints() {
    let v = StepVerifier::with_default_roots();
    let leaf = one_pem("yubikey/ovh-fw435-5970478-slot9a-attestation.pem");
    let f9 = one_pem("yubikey/ovh-fw435-5970478-slotf9-intermediate.pem");
    let relaxed = ChainPolicy {
        allow_issuer_without_basic_constraints: true,
        ..ChainPolicy::default()
    };
    let path =
        chain::verify_chain("step", &[&leaf, &f9], &[], &v.roots, at(YUBI_AT), &relaxed).unwrap();
    assert_eq!(path.len(), 3);
    // The strict walker refuses the f9 certificate, as OpenSSL does ("invalid CA certificate").
    let e = assert_rule(
        chain::verify_chain(
            "step",
            &[&leaf, &f9],
            &[],
            &v.roots,
            at(YUBI_AT),
            &ChainPolicy::default(),
        ),
        Rule::ChainIssuerNotCa,
    );
    assert!(e.detail.contains("no basicConstraints"), "{e}");
    let cert = chain::parse_certificate(&leaf, "leaf").unwrap();
    assert_eq!(step::yubikey_serial(&cert).unwrap(), 5_970_478);
    assert_rule(
        v.verify(
            &step_att(-257, vec![0; 256], &[&leaf, &f9]),
            KA,
            at(YUBI_AT),
        ),
        Rule::StepSignature,
    );
    // The f9 certificate itself, as a leaf, chains to the PIV root under the strict policy.
    chain::verify_chain(
        "step",
        &[&f9],
        &[],
        &v.roots,
        at(YUBI_AT),
        &ChainPolicy::default(),
    )
    .unwrap();
}

#[test]
fn attest_step_yubico_574_pki_chains_to_root_1() {
    // Yubico's published intermediates for firmware >= 5.7.4 chain to Attestation Root 1.
    for bundle in ["A1", "B1"] {
        let certs = pem(&format!(
            "yubikey/yubico-piv-attestation-{bundle}-bundle.pem"
        ));
        assert_eq!(certs.len(), 2);
        let root1 = pem("yubikey/yubico-attestation-root-1.pem");
        let path = chain::verify_chain(
            "step",
            &[&certs[0]],
            &certs[1..],
            &root1,
            at(YUBI_AT),
            &ChainPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            path.len(),
            3,
            "PIV Attestation {bundle}, Intermediate {bundle}, Root 1"
        );
        // Not with the legacy root.
        let legacy = pem("yubikey/yubico-piv-root-ca-serial-263751.pem");
        assert_rule(
            chain::verify_chain(
                "step",
                &[&certs[0]],
                &certs[1..],
                &legacy,
                at(YUBI_AT),
                &ChainPolicy::default(),
            ),
            Rule::ChainNoIssuer,
        );
    }
}

#[test]
fn attest_chain_sha1_only_where_configured() {
    // The OVH slot certificate with its signature algorithm rewritten to sha1WithRSAEncryption
    // (1.2.840.113549.1.1.5) in both places: refused by policy before any signature check, and
    // when SHA-1 is allowed, refused because the signature (made with SHA-256) does not verify.
    let leaf = one_pem("yubikey/ovh-fw435-5970478-slot9a-attestation.pem");
    let f9 = one_pem("yubikey/ovh-fw435-5970478-slotf9-intermediate.pem");
    let roots = pem("yubikey/yubico-piv-root-ca-serial-263751.pem");
    let sha256_rsa = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ];
    let mut sha1 = leaf.clone();
    let mut replaced = 0;
    let mut i = 0;
    while i + sha256_rsa.len() <= sha1.len() {
        if sha1[i..i + sha256_rsa.len()] == sha256_rsa {
            sha1[i + sha256_rsa.len() - 1] = 0x05;
            replaced += 1;
        }
        i += 1;
    }
    assert_eq!(
        replaced, 2,
        "tbsCertificate.signature and signatureAlgorithm"
    );
    let mut policy = ChainPolicy {
        allow_issuer_without_basic_constraints: true,
        ..ChainPolicy::default()
    };
    assert_rule(
        chain::verify_chain("t", &[&sha1, &f9], &[], &roots, at(YUBI_AT), &policy),
        Rule::ChainSha1NotAllowed,
    );
    policy.allow_sha1 = true;
    assert_rule(
        chain::verify_chain("t", &[&sha1, &f9], &[], &roots, at(YUBI_AT), &policy),
        Rule::ChainSignature,
    );
    // Only one of the two rewritten: inner and outer algorithms disagree.
    let mut mixed = leaf.clone();
    let pos = mixed
        .windows(sha256_rsa.len())
        .position(|w| w == sha256_rsa)
        .unwrap();
    mixed[pos + sha256_rsa.len() - 1] = 0x05;
    let e = assert_rule(
        chain::verify_chain("t", &[&mixed, &f9], &[], &roots, at(YUBI_AT), &policy),
        Rule::ChainSignature,
    );
    assert!(e.detail.contains("§4.1.1.2"), "{e}");
}

struct SynthYubi {
    root: TestCa,
    f9: TestCa,
}

const YUBI_SERIAL: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 7];
const YUBI_FW: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 3];
const YUBI_POLICY: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 8];
const YUBI_FORM: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 9];

impl SynthYubi {
    /// A test root and an f9 certificate without basicConstraints, like a YubiKey 4.
    fn new() -> Self {
        let root = test_root("Test Yubico PIV Root");
        let mut p = ca_params("Test Yubico PIV Attestation", IsCa::NoCa);
        p.key_usages = vec![];
        let f9 = test_sub_with(
            p,
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            &root,
        );
        Self { root, f9 }
    }

    fn slot_cert(&self, key: &KeyPair, with_serial: bool) -> Vec<u8> {
        let mut p = leaf_params(Some("YubiKey PIV Attestation 9a"));
        if with_serial {
            p.custom_extensions
                .push(ext(YUBI_SERIAL, vec![0x02, 0x03, 0x5b, 0x1a, 0x2e], false));
        }
        p.custom_extensions.push(ext(YUBI_FW, vec![5, 7, 4], false));
        p.custom_extensions
            .push(ext(YUBI_POLICY, vec![2, 3], false));
        p.custom_extensions.push(ext(YUBI_FORM, vec![0x83], false));
        p.signed_by(key, &self.f9.issuer).unwrap().der().to_vec()
    }

    fn verifier(&self) -> StepVerifier {
        StepVerifier::with_roots(vec![self.root.der.clone()])
    }
}

fn rsa_key() -> KeyPair {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = key.to_pkcs8_der().unwrap();
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &rcgen::PKCS_RSA_SHA256).unwrap()
}

#[test]
fn attest_step_synthetic_signatures_per_key_type() {
    let s = SynthYubi::new();
    let v = s.verifier();
    let now = SystemTime::now();
    let keys: Vec<(i64, KeyPair)> = vec![
        (
            -7,
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ),
        (
            -35,
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        ),
        (-8, KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()),
        (-257, rsa_key()),
    ];
    for (alg, key) in &keys {
        let slot = s.slot_cert(key, true);
        let sig = key.sign(KA).unwrap();
        let att = step_att(*alg, sig.clone(), &[&slot, &s.f9.der]);
        let ok = v
            .verify(&att, KA, now)
            .unwrap_or_else(|e| panic!("alg {alg}: {e}"));
        assert_eq!(ok.format, "step");
        assert_eq!(ok.public_key_spki, key.subject_public_key_info());
        assert_eq!(ok.identifiers[0].acme_value(), "5970478");
        assert_eq!(ok.details.firmware_version.as_deref(), Some("5.7.4"));
        assert_eq!(ok.details.model.as_deref(), Some("usb-c-keychain (FIPS)"));
        assert_eq!(
            ok.details
                .extra
                .get("yubikey.pinPolicy")
                .map(String::as_str),
            Some("once")
        );
        assert_eq!(
            ok.details
                .extra
                .get("yubikey.touchPolicy")
                .map(String::as_str),
            Some("cached")
        );
        assert_eq!(ok.chain.len(), 3);
        // Another account's key authorization (same token, other thumbprint).
        let other = [&KA[..44], b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"].concat();
        assert_rule(v.verify(&att, &other, now), Rule::StepSignature);
        // A flipped byte in the signature.
        let mut bad = sig.clone();
        bad[sig.len() / 2] ^= 0x01;
        assert_rule(
            v.verify(&step_att(*alg, bad, &[&slot, &s.f9.der]), KA, now),
            Rule::StepSignature,
        );
        // Without the f9 certificate there is no path.
        assert_rule(
            v.verify(&step_att(*alg, sig, &[&slot]), KA, now),
            Rule::ChainNoIssuer,
        );
    }
    // A slot certificate that says it is a CA.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = leaf_params(Some("YubiKey PIV Attestation 9a"));
    p.custom_extensions
        .push(ext(YUBI_SERIAL, vec![0x02, 0x01, 0x07], false));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_slot = p.signed_by(&key, &s.f9.issuer).unwrap().der().to_vec();
    let att = step_att(-7, key.sign(KA).unwrap(), &[&ca_slot, &s.f9.der]);
    assert_rule(v.verify(&att, KA, now), Rule::LeafIsCa);
    // No serial extension.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let slot = s.slot_cert(&key, false);
    let att = step_att(-7, key.sign(KA).unwrap(), &[&slot, &s.f9.der]);
    assert_rule(v.verify(&att, KA, now), Rule::StepSerialMissing);
    // With the f9 relaxation off, the f9 certificate is not a CA.
    let mut strict = s.verifier();
    strict.allow_f9_without_basic_constraints = false;
    let slot = s.slot_cert(&key, true);
    let att = step_att(-7, key.sign(KA).unwrap(), &[&slot, &s.f9.der]);
    assert_rule(strict.verify(&att, KA, now), Rule::ChainIssuerNotCa);
    // Unknown alg; missing sig.
    assert_rule(
        v.verify(&set(&att, "alg", Value::Integer((-65535).into())), KA, now),
        Rule::StepAlgorithm,
    );
    assert_rule(
        v.verify(&remove(&att, "sig"), KA, now),
        Rule::StatementField,
    );
    v.verify(&att, KA, now).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The chain walker's CA rules, on synthetic PKIs

#[test]
fn attest_chain_ca_rules() {
    let now = SystemTime::now();
    let policy = ChainPolicy::default();
    let root = test_root("R");
    let roots = vec![root.der.clone()];
    let leaf_of = |ca: &TestCa| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        leaf_params(Some("leaf"))
            .signed_by(&key, &ca.issuer)
            .unwrap()
            .der()
            .to_vec()
    };

    // pathLenConstraint 0 on the first intermediate, then a second intermediate below it.
    let i1 = test_sub("I1", IsCa::Ca(BasicConstraints::Constrained(0)), &root);
    let i2 = test_sub("I2", IsCa::Ca(BasicConstraints::Unconstrained), &i1);
    let leaf = leaf_of(&i2);
    assert_rule(
        chain::verify_chain("t", &[&leaf, &i2.der, &i1.der], &[], &roots, now, &policy),
        Rule::ChainPathLength,
    );
    // pathLen 1 allows it.
    let i1 = test_sub("I1", IsCa::Ca(BasicConstraints::Constrained(1)), &root);
    let i2 = test_sub("I2", IsCa::Ca(BasicConstraints::Unconstrained), &i1);
    let leaf = leaf_of(&i2);
    let path =
        chain::verify_chain("t", &[&leaf, &i2.der, &i1.der], &[], &roots, now, &policy).unwrap();
    assert_eq!(path.len(), 4);
    // Intermediates supplied by the verifier, not sent.
    let path2 = chain::verify_chain(
        "t",
        &[&leaf],
        &[i1.der.clone(), i2.der.clone()],
        &roots,
        now,
        &policy,
    )
    .unwrap();
    assert_eq!(path, path2);
    // max_len.
    let short = ChainPolicy {
        max_len: 3,
        ..ChainPolicy::default()
    };
    assert_rule(
        chain::verify_chain("t", &[&leaf, &i2.der, &i1.der], &[], &roots, now, &short),
        Rule::ChainTooLong,
    );

    // basicConstraints cA false on an issuer: refused even with the f9 relaxation.
    let not_ca = test_sub("NotCA", IsCa::ExplicitNoCa, &root);
    let leaf = leaf_of(&not_ca);
    let relaxed = ChainPolicy {
        allow_issuer_without_basic_constraints: true,
        ..ChainPolicy::default()
    };
    assert_rule(
        chain::verify_chain("t", &[&leaf, &not_ca.der], &[], &roots, now, &relaxed),
        Rule::ChainIssuerNotCa,
    );
    // No basicConstraints two levels up: the relaxation is for the leaf's issuer only.
    let no_bc = test_sub("NoBC", IsCa::NoCa, &root);
    let below = test_sub("Below", IsCa::Ca(BasicConstraints::Unconstrained), &no_bc);
    let leaf = leaf_of(&below);
    assert_rule(
        chain::verify_chain(
            "t",
            &[&leaf, &below.der, &no_bc.der],
            &[],
            &roots,
            now,
            &relaxed,
        ),
        Rule::ChainIssuerNotCa,
    );
    // keyUsage without keyCertSign.
    let mut p = ca_params("KU", IsCa::Ca(BasicConstraints::Unconstrained));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let ku = test_sub_with(
        p,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        &root,
    );
    let leaf = leaf_of(&ku);
    assert_rule(
        chain::verify_chain("t", &[&leaf, &ku.der], &[], &roots, now, &policy),
        Rule::ChainKeyUsage,
    );
    // An expired intermediate.
    let mut p = ca_params("Old", IsCa::Ca(BasicConstraints::Unconstrained));
    p.not_after = time::macros::datetime!(2020-01-01 0:00 UTC);
    let old = test_sub_with(
        p,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        &root,
    );
    let leaf = leaf_of(&old);
    assert_rule(
        chain::verify_chain("t", &[&leaf, &old.der], &[], &roots, now, &policy),
        Rule::ChainExpired,
    );
    // No certificate; no root; a leaf with trailing garbage.
    assert_rule(
        chain::verify_chain("t", &[], &[], &roots, now, &policy),
        Rule::ChainEmpty,
    );
    assert_rule(
        chain::verify_chain("t", &[&leaf], &[], &[], now, &policy),
        Rule::ChainNoIssuer,
    );
    let mut trailing = leaf.clone();
    trailing.push(0);
    let e = assert_rule(
        chain::verify_chain("t", &[&trailing], &[], &roots, now, &policy),
        Rule::CertParse,
    );
    assert!(e.detail.contains("after the certificate"), "{e}");
    // A root that shares the issuer's name but not its key.
    let impostor = test_root("R");
    let leaf = leaf_of(&root);
    assert_rule(
        chain::verify_chain(
            "t",
            &[&leaf],
            &[],
            std::slice::from_ref(&impostor.der),
            now,
            &policy,
        ),
        Rule::ChainSignature,
    );
    chain::verify_chain(
        "t",
        &[&leaf],
        &[],
        &[impostor.der, root.der.clone()],
        now,
        &policy,
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The envelope: payloads and hostile CBOR through the dispatcher

#[test]
fn attest_envelope_hostile_inputs() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let v = Verifiers::with_defaults();
    let now = at(TPM_NOW);
    let cases: Vec<(Vec<u8>, Rule)> = vec![
        (
            b"garbage, not CBOR at all".to_vec(),
            Rule::CborTrailingBytes,
        ),
        (vec![0xff], Rule::CborMalformed),
        (vec![0xa2, 0x63, b'f', b'm'], Rule::CborMalformed),
        (
            {
                let mut d = vec![0x81u8; 200];
                d.push(0);
                d
            },
            Rule::CborTooDeep,
        ),
        (
            {
                let mut d = vec![0xa1u8, 0x61, b'a'];
                d.extend([0xa1, 0x61, b'a'].repeat(50));
                d.push(0);
                d
            },
            Rule::CborTooDeep,
        ),
        (
            vec![0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            Rule::CborMalformed,
        ),
        (vec![0x9f; 5], Rule::CborMalformed),
        (
            attobj::to_cbor(&AttObj {
                fmt: "packed".into(),
                att_stmt: AttStmt::default(),
                auth_data: None,
            }),
            Rule::UnknownFormat,
        ),
    ];
    for (cbor, rule) in cases {
        let mut payload = serde_json::Map::new();
        payload.insert("attObj".into(), serde_json::Value::String(b64(&cbor)));
        let r = attobj::parse_payload(&payload).and_then(|att| v.verify(&att, KA, now));
        assert_rule(r, rule);
    }
    // Truncations of a real attestation object never panic and are all refused.
    let real = data("tpm/webauthn-rs-winhello-intel-rsa/attestationObject.cbor");
    for n in 0..real.len() {
        let e = attobj::parse(&real[..n]).unwrap_err();
        assert!(
            matches!(e.rule, Rule::CborMalformed | Rule::AttObjShape),
            "prefix {n}: {e}"
        );
    }
    // Single-byte corruptions of a real object: parse or verification fails, never a panic,
    // never a success.
    let (att, tbs) = tpm_vector("webauthn-rs-winhello-intel-rsa");
    let tpm = tpm_sha1();
    tpm.verify(&att, &tbs, now).unwrap();
    let cdh = sha256(&data(
        "tpm/webauthn-rs-winhello-intel-rsa/clientDataJSON.json",
    ));
    let mut accepted = 0;
    for i in (0..real.len()).step_by(7) {
        let mut m = real.clone();
        m[i] ^= 0x5a;
        if let Ok(att) = attobj::parse(&m) {
            // attToBeSigned from the (possibly corrupted) authData of the object itself.
            let mut tbs = att.auth_data.clone().unwrap_or_default();
            tbs.extend_from_slice(&cdh);
            if tpm.verify(&att, &tbs, now).is_ok() {
                accepted += 1;
            }
        }
    }
    assert_eq!(accepted, 0, "a corrupted attestation verified");
}

// ---------------------------------------------------------------------------------------------
// Property-style checks over random and mutated inputs (deterministic, so they run in CI)

/// xorshift64*: a small deterministic generator, so that a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn attest_parsers_never_panic_on_random_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let roots = pem("tpm/microsoft-tpm-root-ca-2014.pem");
    for _ in 0..20_000 {
        let b = rng.bytes(300);
        // Outcomes are free; panics, hangs and huge allocations are not.
        let _ = attobj::parse(&b);
        let _ = tpm::parse_cert_info(&b);
        let _ = tpm::parse_pub_area(&b);
        let _ = chain::verify_chain(
            "t",
            &[&b],
            &[],
            &roots,
            at(TPM_NOW),
            &ChainPolicy::default(),
        );
    }
    // Random input shaped like the structures: a valid header then noise.
    for _ in 0..20_000 {
        let mut ci = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x17];
        ci.extend(rng.bytes(200));
        if let Ok(parsed) = tpm::parse_cert_info(&ci) {
            assert_eq!(parsed.magic, tpm::TPM_GENERATED_VALUE);
        }
        let mut pa = if rng.next() & 1 == 0 {
            vec![0x00, 0x01]
        } else {
            vec![0x00, 0x23]
        };
        pa.extend(rng.bytes(400));
        let _ = tpm::parse_pub_area(&pa);
        let mut cbor = vec![0xa3, 0x63, b'f', b'm', b't', 0x63, b't', b'p', b'm'];
        cbor.extend(rng.bytes(200));
        let _ = attobj::parse(&cbor);
    }
}

#[test]
fn attest_tpm_every_single_byte_change_of_certinfo_or_pubarea_is_refused() {
    let v = tpm_sha1();
    let now = at(TPM_NOW);
    for vec in [&TPM_VECTORS[0], &TPM_VECTORS[1]] {
        let (att, tbs) = tpm_vector(vec.dir);
        v.verify(&att, &tbs, now).unwrap();
        for field in ["certInfo", "pubArea"] {
            let orig = stmt_bytes(&att, field);
            for i in 0..orig.len() {
                let mut m = orig.clone();
                m[i] ^= 0x01;
                let r = v.verify(&set(&att, field, Value::Bytes(m)), &tbs, now);
                assert!(
                    r.is_err(),
                    "{}: {field}[{i}] flipped and still verified",
                    vec.dir
                );
            }
        }
    }
}

#[test]
fn attest_mutated_real_objects_never_verify() {
    let v = tpm_sha1();
    let now = at(TPM_NOW);
    let mut rng = Rng(42);
    for vec in TPM_VECTORS {
        let real = data(&format!("tpm/{}/attestationObject.cbor", vec.dir));
        let cdh = sha256(&data(&format!("tpm/{}/clientDataJSON.json", vec.dir)));
        for _ in 0..300 {
            let mut m = real.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % m.len();
                m[i] ^= 1 << (rng.next() % 8);
            }
            if m == real {
                continue;
            }
            if let Ok(att) = attobj::parse(&m) {
                let mut tbs = att.auth_data.clone().unwrap_or_default();
                tbs.extend_from_slice(&cdh);
                assert!(
                    v.verify(&att, &tbs, now).is_err(),
                    "{}: a mutated object verified",
                    vec.dir
                );
            }
        }
    }
}
