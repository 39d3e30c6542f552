//! End-to-end: `portcullis attest inspect` — the real binary on the real vendor data of
//! tests/data/attest (PROVENANCE.md there): a YubiKey PIV chain, an Apple MDA leaf whose
//! freshness-code preimage is known, Windows TPM attestations; and on broken inputs, which
//! exit non-zero naming the failed rule.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_ca::attest::attobj;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Inside every TPM AK chain's validity (PROVENANCE.md, tpm/).
const TPM_AT: &str = "2023-11-14T22:13:20Z";
/// Inside the darkbloom Apple leaf's validity (2026-04-28 → 2026-07-28).
const APPLE_AT: &str = "2026-05-05T00:00:00Z";
const YUBI_AT: &str = "2025-01-01T00:00:00Z";
/// SHA-256 of this is the darkbloom leaf's freshness code (PROVENANCE.md, apple/).
const APPLE_TOKEN: &str =
    "qKxKds4zZk81flmOxcOmQVYSL0xkeg88tLBfXd7ghhJ/QYjW5ZKBAzASJ0TPwseWv38jW61NESGDtGsJqdzJ9Q==";
const TPM_DIR: &str = "tpm/webauthn-rs-winhello-intel-rsa";

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/attest")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The files concatenated into one (a chain, leaf first).
fn concat(dir: &Path, name: &str, parts: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let mut all = Vec::new();
    for part in parts {
        all.extend(read(part));
        all.push(b'\n');
    }
    std::fs::write(&p, all).unwrap();
    p
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn inspect(file: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .args(["attest", "inspect"])
        .arg(file)
        .args(args)
        .output()
        .expect("run portcullis");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The status word printed for check `name` (`ok`, `FAIL`, `skip`), and its line.
fn check<'a>(out: &'a Out, name: &str) -> (&'a str, &'a str) {
    let line = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no check {name} in:\n{}", out.stdout));
    (line.split_whitespace().next().unwrap_or(""), line)
}

#[track_caller]
fn assert_check(out: &Out, name: &str, status: &str) {
    let (got, line) = check(out, name);
    assert_eq!(got, status, "{line}\n\n{}", out.stdout);
}

/// SHA-1(authData || SHA-256(clientDataJSON)): the certInfo.extraData of a Windows Hello
/// attestation (WebAuthn §8.3 with alg RS1).
fn tpm_extra_data_hex() -> String {
    let att = attobj::parse(&read(&format!("{TPM_DIR}/attestationObject.cbor"))).unwrap();
    let mut tbs = att.auth_data.unwrap();
    tbs.extend(
        ring::digest::digest(
            &ring::digest::SHA256,
            &read(&format!("{TPM_DIR}/clientDataJSON.json")),
        )
        .as_ref(),
    );
    let h = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &tbs);
    let hex = h.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    // The collector derived the same value independently (expected.json).
    let expected = String::from_utf8(read(&format!("{TPM_DIR}/expected.json"))).unwrap();
    assert!(expected.contains(&hex), "{hex}");
    hex
}

#[test]
fn attest_inspect_yubikey_chain_detects_step_and_names_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let chain = concat(
        dir.path(),
        "yubikey.pem",
        &[
            "yubikey/ipxe-attestation-9a.crt",
            "yubikey/ipxe-attestation-intermediate.crt",
        ],
    );
    let out = inspect(&chain, &["--at", YUBI_AT]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("certificate chain (PEM)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("step  (from detected from the leaf)"),
        "{}",
        out.stdout
    );
    for ok in [
        "step.chain",
        "step.leaf.notCa",
        "step.serial",
        "step.key",
        "step.extensions",
    ] {
        assert_check(&out, ok, "ok");
    }
    // Not in a PEM chain: the statement's alg and sig.
    assert_check(&out, "step.fields", "skip");
    assert!(check(&out, "step.fields")
        .1
        .contains("needs the attestation object"));
    assert_check(&out, "step.sig", "skip");
    assert!(
        out.stdout.contains("permanent-identifier 28557046"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ECDSA P-256"), "{}", out.stdout);
    assert!(
        out.stdout.contains("firmware        5.4.3"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(FIPS)"), "{}", out.stdout);

    // YubiKey 4: the f9 certificate without basicConstraints still verifies.
    let chain4 = concat(
        dir.path(),
        "yubikey4.pem",
        &[
            "yubikey/ovh-fw435-5970478-slot9a-attestation.pem",
            "yubikey/ovh-fw435-5970478-slotf9-intermediate.pem",
        ],
    );
    let out = inspect(&chain4, &["--at", YUBI_AT]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("permanent-identifier 5970478"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("RSA-2048"), "{}", out.stdout);

    // The slot certificate alone: no path to a Yubico root.
    let out = inspect(&data("yubikey/ipxe-attestation-9a.crt"), &["--at", YUBI_AT]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_check(&out, "step.chain", "FAIL");
    assert!(check(&out, "step.chain").1.contains("[ChainNoIssuer]"));
    // The serial is still reported: an operator sees which device failed.
    assert_check(&out, "step.serial", "ok");
    assert!(out.stdout.contains("FAILED: 1 of"), "{}", out.stdout);
}

#[test]
fn attest_inspect_apple_leaf_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let chain = concat(
        dir.path(),
        "apple.pem",
        &[
            "apple/darkbloom-f99b7905-leaf-WRPWFW61H9.pem",
            "apple/apple-enterprise-attestation-sub-ca-1.pem",
        ],
    );
    let out = inspect(&chain, &["--at", APPLE_AT, "--token", APPLE_TOKEN]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("apple  (from detected from the leaf)"),
        "{}",
        out.stdout
    );
    for ok in [
        "apple.chain",
        "apple.leaf.notCa",
        "apple.freshness.present",
        "apple.freshness",
        "apple.identifiers",
        "apple.properties",
    ] {
        assert_check(&out, ok, "ok");
    }
    assert!(out.stdout.contains("OK: all"), "{}", out.stdout);
    assert!(
        out.stdout.contains("permanent-identifier WRPWFW61H9"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("permanent-identifier 00006021-0014182A11C0201E"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("os version      26.2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("model           J416cAP"),
        "{}",
        out.stdout
    );

    // The key authorization works as well as the token (its token part is hashed).
    let ka = format!("{APPLE_TOKEN}.some-account-thumbprint");
    let out = inspect(&chain, &["--at", APPLE_AT, "--key-authorization", &ka]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);

    // Without the challenge, the freshness match is skipped and says what it needs.
    let out = inspect(&chain, &["--at", APPLE_AT]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_check(&out, "apple.freshness", "skip");
    assert!(check(&out, "apple.freshness")
        .1
        .contains("skipped: needs --key-authorization or --token or --extra-data"));
    assert_check(&out, "apple.freshness.present", "ok");

    // Another challenge's token (a replay): refused by name, exit 1.
    let out = inspect(&chain, &["--at", APPLE_AT, "--token", "another-token"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_check(&out, "apple.freshness", "FAIL");
    assert!(
        out.stdout.contains("[AppleFreshnessMismatch]"),
        "{}",
        out.stdout
    );

    // After the leaf's notAfter; and without Sub CA 1.
    let out = inspect(
        &chain,
        &["--at", "2030-01-01T00:00:00Z", "--token", APPLE_TOKEN],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        check(&out, "apple.chain").1.contains("[ChainExpired]"),
        "{}",
        out.stdout
    );
    let out = inspect(
        &data("apple/darkbloom-f99b7905-leaf-WRPWFW61H9.pem"),
        &["--at", APPLE_AT, "--token", APPLE_TOKEN],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        check(&out, "apple.chain").1.contains("[ChainNoIssuer]"),
        "{}",
        out.stdout
    );
    // ...unless the operator gives the Sub CA as the trust anchor.
    let out = inspect(
        &data("apple/darkbloom-f99b7905-leaf-WRPWFW61H9.pem"),
        &[
            "--at",
            APPLE_AT,
            "--token",
            APPLE_TOKEN,
            "--roots",
            data("apple/apple-enterprise-attestation-sub-ca-1.pem")
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
}

#[test]
fn attest_inspect_windows_tpm_attestation() {
    let extra = tpm_extra_data_hex();
    let cbor = data(&format!("{TPM_DIR}/attestationObject.cbor"));
    let out = inspect(
        &cbor,
        &["--at", TPM_AT, "--allow-sha1", "--extra-data", &extra],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("attestation object (CBOR)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("tpm  (from attObj.fmt)"),
        "{}",
        out.stdout
    );
    for name in [
        "tpm.fmt",
        "tpm.fields",
        "tpm.ver",
        "tpm.alg",
        "tpm.alg.sha1",
        "tpm.chain",
        "tpm.ak.version",
        "tpm.ak.subject",
        "tpm.ak.san",
        "tpm.ak.eku",
        "tpm.ak.notCa",
        "tpm.ak.key",
        "tpm.certInfo",
        "tpm.pubArea",
        "tpm.objectAttributes",
        "tpm.key",
        "tpm.sig",
        "tpm.extraData",
        "tpm.name",
        "tpm.identifiers",
    ] {
        assert_check(&out, name, "ok");
    }
    assert!(
        out.stdout.contains("manufacturer    id:494E5443"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("model           SPT"), "{}", out.stdout);
    assert!(out.stdout.contains("firmware        0x"), "{}", out.stdout);
    assert!(out.stdout.contains("tpm.alg         RS1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("key             RSA-2048"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("identifier      none found"),
        "{}",
        out.stdout
    );

    // The same object as base64url text and as the challenge response payload.
    let dir = tempfile::tempdir().unwrap();
    let b64 = String::from_utf8(read(&format!("{TPM_DIR}/attestationObject.b64url"))).unwrap();
    let json = dir.path().join("payload.json");
    std::fs::write(&json, format!("{{\"attObj\": \"{}\"}}", b64.trim())).unwrap();
    for (file, kind) in [
        (
            data(&format!("{TPM_DIR}/attestationObject.b64url")),
            "(base64url)",
        ),
        (json, "challenge response payload"),
    ] {
        let out = inspect(
            &file,
            &["--at", TPM_AT, "--allow-sha1", "--extra-data", &extra],
        );
        assert_eq!(out.code, Some(0), "{}", out.stdout);
        assert!(out.stdout.contains(kind), "{}", out.stdout);
    }

    // SHA-1 not allowed (the CA's default): only the SHA-1 policy fails, by name; the
    // signature and extraData are still checked, so the operator sees that only the policy
    // refuses this device.
    let out = inspect(&cbor, &["--at", TPM_AT, "--extra-data", &extra]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_check(&out, "tpm.alg", "ok");
    assert_check(&out, "tpm.alg.sha1", "FAIL");
    assert!(check(&out, "tpm.alg.sha1").1.contains("[TpmAlgorithm]"));
    assert!(check(&out, "tpm.alg.sha1").1.contains("SHA-1"));
    assert_check(&out, "tpm.sig", "ok");
    assert_check(&out, "tpm.extraData", "ok");
    assert!(out
        .stdout
        .contains("FAILED: 1 of 22 checks failed: tpm.alg.sha1 [TpmAlgorithm]"));

    // An unknown alg: what needs it says so.
    let unknown = dir.path().join("unknown-alg.cbor");
    let mut other = std::fs::read(&cbor).unwrap();
    let rs1 = other
        .windows(7)
        .position(|w| w == b"\x63alg\x39\xff\xfe")
        .expect("alg: -65535");
    other[rs1 + 5..rs1 + 7].copy_from_slice(&[0x00, 0x00]); // alg -1
    std::fs::write(&unknown, &other).unwrap();
    let out = inspect(&unknown, &["--at", TPM_AT, "--extra-data", &extra]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(check(&out, "tpm.alg").1.contains("[TpmAlgorithm]"));
    assert_check(&out, "tpm.sig", "skip");
    assert!(check(&out, "tpm.sig").1.contains("needs tpm.alg to pass"));
    assert_check(&out, "tpm.ak.san", "ok");

    // No challenge: extraData is skipped, nothing fails.
    let out = inspect(&cbor, &["--at", TPM_AT, "--allow-sha1"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_check(&out, "tpm.extraData", "skip");
    assert!(check(&out, "tpm.extraData")
        .1
        .contains("skipped: needs --key-authorization or --extra-data"));
    assert!(
        out.stdout.contains("no check failed; 1 of"),
        "{}",
        out.stdout
    );

    // Another challenge (another account's key authorization): extraData fails by name.
    let out = inspect(
        &cbor,
        &[
            "--at",
            TPM_AT,
            "--allow-sha1",
            "--key-authorization",
            "tok.thumb",
        ],
    );
    assert_eq!(out.code, Some(1));
    assert!(check(&out, "tpm.extraData").1.contains("[TpmExtraData]"));

    // The AK certificate chain alone (PEM): format from the AK EKU; the statement's checks
    // are skipped, the chain and the AK profile checked.
    let att = attobj::parse(&std::fs::read(&cbor).unwrap()).unwrap();
    let x5c = att.att_stmt.x5c("tpm").unwrap();
    let pem: String = x5c.iter().map(|der| pem_block(der)).collect();
    let chain = dir.path().join("ak.pem");
    std::fs::write(&chain, pem).unwrap();
    let out = inspect(&chain, &["--at", TPM_AT, "--allow-sha1"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("tpm  (from detected from the leaf)"),
        "{}",
        out.stdout
    );
    assert_check(&out, "tpm.chain", "ok");
    assert_check(&out, "tpm.ak.san", "ok");
    assert_check(&out, "tpm.certInfo", "skip");
}

fn pem_block(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

#[test]
fn attest_inspect_broken_inputs_exit_non_zero_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cbor = read(&format!("{TPM_DIR}/attestationObject.cbor"));

    // Truncated CBOR.
    let cut = dir.path().join("cut.cbor");
    std::fs::write(&cut, &cbor[..cbor.len() / 2]).unwrap();
    let out = inspect(&cut, &["--at", TPM_AT]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_check(&out, "input", "FAIL");
    assert!(out.stdout.contains("[CborMalformed]"), "{}", out.stdout);
    assert!(out
        .stdout
        .contains("FAILED: 1 of 1 checks failed: input [CborMalformed]"));

    // A lying TPM2B size inside certInfo (found by its magic, TPM_GENERATED_VALUE): the
    // certInfo check fails, the chain still passes.
    let magic = cbor
        .windows(6)
        .position(|w| w == [0xff, 0x54, 0x43, 0x47, 0x80, 0x17])
        .expect("certInfo");
    let mut lying_bytes = cbor.clone();
    lying_bytes[magic + 6] = 0xff; // qualifiedSigner.size = 0xff..
    let lying = dir.path().join("lying.cbor");
    std::fs::write(&lying, &lying_bytes).unwrap();
    let out = inspect(
        &lying,
        &["--at", TPM_AT, "--allow-sha1", "--key-authorization", "k"],
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_check(&out, "tpm.chain", "ok");
    assert_check(&out, "tpm.certInfo", "FAIL");
    assert!(check(&out, "tpm.certInfo").1.contains("[TpmCertInfoParse]"));
    // The signature covers the raw bytes: it fails too; extraData and the Name need the
    // parsed certInfo and are skipped.
    assert_check(&out, "tpm.sig", "FAIL");
    assert_check(&out, "tpm.extraData", "skip");
    assert_check(&out, "tpm.name", "skip");

    // Not an attestation at all; a PEM without certificates; an unknown fmt.
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "hello, world\n").unwrap();
    let out = inspect(&junk, &[]);
    assert_eq!(out.code, Some(1));
    assert_check(&out, "input", "FAIL");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = inspect(&key, &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("[ChainEmpty]"), "{}", out.stdout);
    let out = inspect(&cut, &["--format", "tpm"]);
    assert_eq!(out.code, Some(1));
    let packed = dir.path().join("packed.cbor");
    let fmt = cbor.windows(4).position(|w| w == b"\x63tpm").expect("fmt");
    let mut other = cbor.clone();
    other[fmt + 1..fmt + 4].copy_from_slice(b"pkd");
    std::fs::write(&packed, &other).unwrap();
    let out = inspect(&packed, &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("[UnknownFormat]"), "{}", out.stdout);
    // --format that disagrees with attObj.fmt: the format's own fmt check names it.
    let out = inspect(
        &data(&format!("{TPM_DIR}/attestationObject.cbor")),
        &["--format", "apple"],
    );
    assert_eq!(out.code, Some(1));
    assert_check(&out, "apple.fmt", "FAIL");

    // Usage errors are errors, not reports.
    let out = inspect(&cut, &["--token", "a", "--key-authorization", "b"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let out = inspect(&cut, &["--extra-data", "xyz"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--extra-data"), "{}", out.stderr);
    let out = inspect(&dir.path().join("missing"), &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}
