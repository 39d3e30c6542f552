//! Issue 4, "How it is proven", first bullet, with real programs only: one `portcullis serve`
//! process running the CA (ACME + open TPM enrollment + inventory admin API) and the mTLS
//! gateway in front of the demo upstream; a real software TPM (swtpm, manufactured by
//! `swtpm_setup --create-ek-cert` with a local manufacturer CA); the agent as the binary
//! (`portcullis agent enroll|renew`); tpm2-tools and OpenSSL's tpm2 provider as independent
//! readers of the TPM.
//!
//! inventory add → agent enroll (open enrollment: EK certificate → MakeCredential →
//! ActivateCredential → AK certificate; then ACME device-attest-01 with a `tpm` statement)
//! → certificate with the right SANs → a request through the gateway signed by the TPM-held
//! key → quarantine → the same request refused, renewal refused (exit 3).
//!
//! The HTTP client is `openssl s_client`, not curl. Debian 12's curl 7.88 (OpenSSL 3.0.x
//! backend) loads `--key` only from a file (`SSL_CTX_use_PrivateKey_file`) or from an OpenSSL
//! *engine* (`--engine`/`--key-type ENG`); it has no provider key URIs (`handle:…`). Tried:
//! tpm2-openssl is a provider, not an engine, and Debian 12 packages no tpm2-tss-engine; the
//! `TSS2 PRIVATE KEY` file tpm2-openssl 1.1.1 writes for a persistent handle
//! (`openssl pkey -in handle:0x81000101 -out k.pem`) does not load back (Esys_Load
//! TPM_RC_SIZE), so curl with an OPENSSL_CONF activating the provider fails with "unable to set
//! private key file". s_client is a real TLS client with the tpm2 provider: the TLS
//! CertificateVerify is signed inside the TPM.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{echoed, free_port, require_program, Gateway, BIN, TRUST_DOMAIN};
use portcullis_agent::testing::Swtpm;
use portcullis_gateway::CancellationToken;

/// A laptop serial number as an MDM export lists it (the ACME permanent-identifier).
const DEVICE: &str = "PF3KX9A2";
/// The agent's default persistent handle of the device key.
const KEY_HANDLE: &str = "0x81000101";
/// Exit status of `portcullis agent` when the CA refuses the device (src/agent_cli.rs).
const EXIT_DEVICE_NOT_TRUSTED: i32 = 3;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn portcullis(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args))
}

fn portcullis_ok(args: &[&str]) -> String {
    let out = portcullis(args);
    assert!(out.status.success(), "portcullis {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OpenSSL with the tpm2 provider talking to this swtpm: loadable, or (loudly) not.
fn tpm2_provider_works(tcti: &str) -> bool {
    let out = run(Command::new("openssl")
        .args(["list", "-providers", "-provider", "tpm2"])
        .env("TPM2OPENSSL_TCTI", tcti));
    if out.status.success() {
        return true;
    }
    let msg = format!(
        "openssl cannot load the tpm2 provider (apt-get install tpm2-openssl): {}",
        text(&out)
    );
    if ci() {
        panic!("{msg}\n(CI=true: failing instead of skipping)");
    }
    eprintln!("\n################################################################");
    eprintln!("## SKIP: {msg}");
    eprintln!("################################################################\n");
    false
}

/// One HTTP/1.1 request through the gateway with `openssl s_client`, the client key being
/// the TPM-resident key (`handle:…` through tpm2-openssl). The gateway is authenticated by
/// its pinned certificate (`pin`, see [`Lab::new`]). Returns s_client's stdout (the HTTP
/// response) and the whole transcript for messages.
///
/// Options, each needed with swtpm (found by trying; tpm2-openssl 1.1.1, OpenSSL 3.0):
/// - `-propquery ?provider=tpm2,…=no`: the key's operations (the `handle:` store, key
///   management, the CertificateVerify signature) come from tpm2. Without the preference
///   OpenSSL picks the default provider's ECDSA, to which tpm2-openssl exports only the public
///   half ("ossl_ecdsa_simple_sign_sig: missing private key").
/// - `tpm2.digest=no,tpm2.cipher=no,tpm2.rand=no`: tpm2's digests are TPM hash sequences;
///   the TLS transcript's copies of them exhaust swtpm's 3 object slots ("out of memory for
///   object contexts" in tls13_hkdf_expand; no resource manager swaps them out).
/// - Verification: the preference also sends every *verification* to the TPM (each public key
///   imported takes a slot). Verifying the gateway's chain against the CA bundle, or merely
///   receiving the intermediate from the gateway, runs out of slots before the server's
///   CertificateVerify is checked. So the gateway serves its leaf alone and the client trusts
///   that leaf (`-CAfile leaf -partial_chain -verify_return_error -verify_hostname`): one TPM
///   verification fits. (A real TPM behind the kernel's resource manager, /dev/tpmrm0, swaps
///   contexts out and has no such limit; this is swtpm over its TCP TCTI.)
fn through_gateway(gw: SocketAddr, tcti: &str, chain: &Path, pin: &Path) -> (String, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-provider", "default", "-provider", "tpm2"])
        .args([
            "-propquery",
            "?provider=tpm2,tpm2.digest=no,tpm2.cipher=no,tpm2.rand=no",
        ])
        .arg("-cert")
        .arg(chain)
        // cert.pem is leaf + intermediate: send both.
        .arg("-cert_chain")
        .arg(chain)
        .args(["-key", &format!("handle:{KEY_HANDLE}")])
        .args(["-connect", &format!("127.0.0.1:{}", gw.port())])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(pin)
        .args(["-partial_chain", "-verify_return_error", "-quiet"])
        .env("TPM2OPENSSL_TCTI", tcti)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write the request");
    // -quiet implies -ign_eof: s_client ends when the server closes (Connection: close).
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("s_client status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("s_client output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout, text(&out))
}

/// The status code of the HTTP response s_client printed.
fn http_status(response: &str) -> Option<u16> {
    let line = response.lines().find(|l| l.starts_with("HTTP/1.1 "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The demo upstream's JSON echo in a `Connection: close` response (content-length or
/// chunked: the JSON object is the body either way; take it from the first `{`).
fn echo(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON body: {response}"));
    let end = body
        .rfind('}')
        .unwrap_or_else(|| panic!("no JSON body: {response}"));
    serde_json::from_str(&body[start..=end])
        .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {response}"))
}

/// The leaf's subjectAltName entries, decoded independently of the product (x509-parser and
/// a few DER bytes): `otherName <oid> identifierValue=<v>` for a PermanentIdentifier (RFC 4043:
/// `[0] EXPLICIT SEQUENCE { identifierValue UTF8String OPTIONAL, assigner OID OPTIONAL }`),
/// `URI <uri>`, `DNS <name>`, or the entry's Debug form.
fn san_names(chain_pem: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem).expect("PEM");
    let cert = pem.parse_x509().expect("leaf certificate");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::OtherName(oid, value) => {
                // a0 L1 30 L2 0c L3 <value> [06 … assigner]
                let id = match value {
                    [0xa0, _, 0x30, _, 0x0c, len, rest @ ..] if rest.len() >= *len as usize => {
                        String::from_utf8_lossy(&rest[..*len as usize]).into_owned()
                    }
                    _ => format!("<undecoded {}>", hex::encode(value)),
                };
                format!("otherName {oid} identifierValue={id}")
            }
            GeneralName::URI(uri) => format!("URI {uri}"),
            GeneralName::DNSName(dns) => format!("DNS {dns}"),
            other => format!("{other:?}"),
        })
        .collect()
}

struct Lab {
    dir: tempfile::TempDir,
    config: PathBuf,
    bundle: PathBuf,
    /// The gateway's certificate (leaf only).
    server_cert: PathBuf,
    ca_port: u16,
    // The upstream runs on this runtime until the lab is dropped.
    _rt: tokio::runtime::Runtime,
    _upstream_stop: CancellationToken,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self._upstream_stop.cancel();
    }
}

impl Lab {
    /// The CA's files (`ca init`), the gateway's server certificate from the CA's
    /// intermediate, the demo upstream, and one config with [ca] and [gateway].
    fn new(ek_root: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-agent-tpm-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("ca");
        portcullis_ok(&["ca", "init", "--data-dir", data.to_str().unwrap()]);
        let pki = data.join("pki");
        let issuing = portcullis::devpki::Ca::load(
            &pki.join("intermediate.pem"),
            &pki.join("intermediate.key"),
        )
        .expect("the CA's intermediate");
        // The gateway's certificate, from the CA's intermediate. Served without the
        // intermediate: the TPM-backed client pins it (see `through_gateway`); that it chains
        // to the CA is checked with `openssl verify` in the test.
        let (server_cert, server_key) =
            (dir.path().join("server.pem"), dir.path().join("server.key"));
        let server = issuing.issue_server(&[]).unwrap();
        std::fs::write(&server_cert, &server.cert_pem).unwrap();
        portcullis::devpki::write_private(&server_key, &server.key_pem).unwrap();
        let ek_roots = dir.path().join("ek-roots.pem");
        std::fs::write(&ek_roots, ek_root).unwrap();
        let tokens = dir.path().join("admin.tokens");
        portcullis::devpki::write_private(&tokens, &format!("admin {}\n", "a".repeat(40))).unwrap();

        let (rt, upstream, stop) = common::demo_upstream(1);

        let ca_port = free_port();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                r#"[trust]
trust_domain = "{TRUST_DOMAIN}"
# roots empty: the gateway trusts the bundle of the CA in this process.

[log]
format = "json"
level = "info"

[audit]
sink = "{audit}"

[admin]
listen = "127.0.0.1:0"

[ca]
listen = "127.0.0.1:{ca_port}"
base_url = "https://127.0.0.1:{ca_port}"
data_dir = "{data}"

[ca.admin_api]
tokens_file = "{tokens}"

[ca.attestation]
ek_roots = ["{ek_roots}"]

{gateway}"#,
                audit = dir.path().join("audit.log").display(),
                data = data.display(),
                tokens = tokens.display(),
                ek_roots = ek_roots.display(),
                gateway = common::eng_gateway_toml(&server_cert, &server_key, upstream),
            ),
        )
        .unwrap();
        Self {
            bundle: pki.join("bundle.pem"),
            server_cert,
            config,
            ca_port,
            dir,
            _rt: rt,
            _upstream_stop: stop,
        }
    }

    fn inventory(&self, args: &[&str]) -> String {
        let mut all = vec!["inventory", "--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        portcullis_ok(&all)
    }

    /// `portcullis agent <command>` against this CA and TPM.
    fn agent(&self, command: &str, swtpm: &Swtpm, out: &Path, ek_chain: &Path) -> Output {
        portcullis(&[
            "agent",
            command,
            "--ca",
            &format!("https://127.0.0.1:{}", self.ca_port),
            "--device-id",
            DEVICE,
            "--tcti",
            &swtpm.tcti(),
            "--out",
            out.to_str().unwrap(),
            "--ca-roots",
            self.bundle.to_str().unwrap(),
            "--ek-chain",
            ek_chain.to_str().unwrap(),
        ])
    }
}

#[test]
fn inventory_add_agent_enrolls_with_swtpm_gateway_admits_then_quarantine_refuses() {
    let started = Instant::now();
    // The fixture checks swtpm, swtpm_setup and swtpm_localca (loud skip, failure in CI).
    for program in ["openssl", "tpm2_readpublic"] {
        if !require_program(program) {
            return;
        }
    }
    let Some(swtpm) = Swtpm::start("agent_tpm") else {
        return;
    };
    let tcti = swtpm.tcti();
    if !tpm2_provider_works(&tcti) {
        return;
    }
    let manufactured = started.elapsed();

    // 1. One process: CA (ACME, open TPM enrollment, admin API) + gateway + admin listener.
    let lab = Lab::new(&swtpm.manufacturer_root_pem());
    let gw = Gateway::start(&lab.config, &lab.dir.path().join("portcullis.log"));
    assert!(
        gw.log_text().contains("CA listening"),
        "the CA runs in the gateway's process: {}",
        gw.log_text()
    );

    // 2. The device is known and active.
    lab.inventory(&["add", DEVICE, "--tag", "eng", "--platform", "linux"]);
    let listed = lab.inventory(&["show", DEVICE]);
    assert!(listed.contains("active"), "{listed}");

    // 3-4. Enrollment with nothing but the TPM: its EK certificate chains to the manufacturer
    // root the CA trusts; swtpm_localca's intermediate is not in the TPM, so it is sent along.
    let ek_chain = lab.dir.path().join("ek-chain.pem");
    std::fs::write(&ek_chain, swtpm.manufacturer_intermediate_pem()).unwrap();
    let out = lab.dir.path().join("agent");
    let t = Instant::now();
    let enrolled = lab.agent("enroll", &swtpm, &out, &ek_chain);
    let enroll_time = t.elapsed();
    assert!(
        enrolled.status.success(),
        "agent enroll: {}\n--- portcullis log\n{}",
        text(&enrolled),
        gw.log_text()
    );
    let stdout = String::from_utf8_lossy(&enrolled.stdout);
    assert!(
        stdout.contains(&format!("key:         handle:{KEY_HANDLE}")),
        "{stdout}"
    );
    // The enrollment bound this TPM's EK to the device; an operator can see it and pin it
    // (from then on only this TPM may enroll as the device).
    let eks: serde_json::Value =
        serde_json::from_str(&lab.inventory(&["eks", DEVICE, "--json"])).unwrap();
    assert_eq!(eks["eks"][0]["origin"], "enrolled", "{eks}");
    assert!(eks["eks"][0]["enrolled_at"].is_i64(), "{eks}");
    let ek = eks["eks"][0]["ek_sha256"].as_str().unwrap().to_string();
    let pinned = lab.inventory(&["pin-ek", DEVICE, &ek, "--reason", "asset register"]);
    assert!(
        pinned.contains(&ek) && pinned.contains("pinned"),
        "{pinned}"
    );
    let chain = out.join("cert.pem");
    assert_eq!(
        std::fs::read_to_string(out.join("key.ref")).unwrap(),
        format!("handle:{KEY_HANDLE}\n")
    );
    assert!(
        out.join("ak.pem").is_file(),
        "open enrollment kept the AK certificate"
    );

    // The certificate, as OpenSSL prints it.
    let x509 = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&chain));
    assert!(x509.status.success(), "{}", text(&x509));
    let x509 = String::from_utf8_lossy(&x509.stdout).into_owned();
    let san = x509
        .split_once("X509v3 Subject Alternative Name:")
        .map(|(_, rest)| rest.lines().take(3).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|| panic!("no SAN extension:\n{x509}"));
    // PermanentIdentifier otherName (RFC 4043, id-on-permanentIdentifier 1.3.6.1.5.5.7.8.3):
    // OpenSSL 3.0 prints it by name, older ones by OID.
    assert!(
        san.contains("Permanent Identifier") || san.contains("1.3.6.1.5.5.7.8.3"),
        "no PermanentIdentifier otherName in the SAN:\n{x509}"
    );
    // OpenSSL 3.0 prints its value as `<unsupported>`: read it from the DER.
    assert_eq!(
        san_names(&std::fs::read(&chain).unwrap()),
        [
            format!("otherName 1.3.6.1.5.5.7.8.3 identifierValue={DEVICE}"),
            format!("URI spiffe://{TRUST_DOMAIN}/device/{DEVICE}"),
        ],
        "the SAN names the device twice, and nothing else"
    );
    assert!(
        san.contains(&format!("URI:spiffe://{TRUST_DOMAIN}/device/{DEVICE}")),
        "no SPIFFE device URI:\n{san}"
    );
    let eku = x509
        .split_once("X509v3 Extended Key Usage:")
        .map(|(_, rest)| rest.lines().nth(1).unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| panic!("no EKU:\n{x509}"));
    assert_eq!(eku, "TLS Web Client Authentication", "{x509}");
    // The attestation-format extension (policy::identity::OID_ATTESTATION_FORMAT), a
    // UTF8String OpenSSL prints raw: `..tpm`.
    let attestation = x509
        .split_once("1.3.6.1.4.1.99999.1.1:")
        .map(|(_, rest)| rest.lines().nth(1).unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| panic!("no attestation-format extension:\n{x509}"));
    assert!(attestation.ends_with("tpm"), "{attestation:?}\n{x509}");
    eprintln!("SAN: {san}\nEKU: {eku}\nattestation extension: {attestation:?}");
    // The public key in the certificate is the TPM's persistent key, read by tpm2-tools, and
    // that key cannot leave the TPM.
    let readpublic = run(Command::new("tpm2_readpublic")
        .args(["-T", &tcti, "-c", KEY_HANDLE, "-f", "pem", "-o"])
        .arg(lab.dir.path().join("tpm-key.pub.pem")));
    assert!(readpublic.status.success(), "{}", text(&readpublic));
    let attrs = String::from_utf8_lossy(&readpublic.stdout).into_owned();
    for attr in ["fixedtpm", "fixedparent", "sensitivedataorigin", "sign"] {
        assert!(
            attrs.contains(attr),
            "the device key lacks {attr}:\n{attrs}"
        );
    }
    assert!(!attrs.contains("restricted"), "{attrs}");
    let cert_pub = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&chain));
    assert_eq!(
        String::from_utf8_lossy(&cert_pub.stdout).trim(),
        std::fs::read_to_string(lab.dir.path().join("tpm-key.pub.pem"))
            .unwrap()
            .trim(),
        "the certificate is for the TPM-resident key"
    );

    // The same certificate as the gateway reads it (policy::identity), and verified as the
    // gateway would against the CA bundle.
    let inspected = portcullis(&[
        "cert",
        "inspect",
        chain.to_str().unwrap(),
        "--root",
        lab.bundle.to_str().unwrap(),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    assert!(
        inspected.status.success(),
        "cert inspect: {}",
        text(&inspected)
    );
    let inspected = String::from_utf8_lossy(&inspected.stdout).into_owned();
    let field = |label: &str| {
        inspected
            .lines()
            .find(|l| l.starts_with(label))
            .map(|l| l[label.len()..].trim().to_owned())
            .unwrap_or_else(|| panic!("no `{label}` in:\n{inspected}"))
    };
    assert_eq!(
        field("device id"),
        format!("{DEVICE}  (from SAN otherName PermanentIdentifier, RFC 4043)"),
        "{inspected}"
    );
    assert_eq!(field("attestation"), "tpm", "{inspected}");
    assert_eq!(
        field("uri sans"),
        format!("spiffe://{TRUST_DOMAIN}/device/{DEVICE}"),
        "{inspected}"
    );

    // 5. Through the gateway, the TLS client key being the TPM's. The gateway's certificate
    // (pinned by the client) is the CA's: verified here without the TPM.
    let verified = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&lab.bundle)
        .arg("-untrusted")
        .arg(lab.dir.path().join("ca/pki/intermediate.pem"))
        .arg(&lab.server_cert));
    assert!(
        verified.status.success(),
        "the gateway's certificate: {}",
        text(&verified)
    );
    let t = Instant::now();
    let (response, transcript) = through_gateway(gw.addr, &tcti, &chain, &lab.server_cert);
    let request_time = t.elapsed();
    assert_eq!(
        http_status(&response),
        Some(200),
        "{transcript}\n--- portcullis log\n{}",
        gw.log_text()
    );
    let echo = echo(&response);
    assert_eq!(echoed(&echo, "x-portcullis-device-id"), [DEVICE], "{echo}");
    assert_eq!(echo["path"], "/hello", "{echo}");

    // 6. Quarantine: the same client is refused at the gateway, and the CA refuses renewal.
    lab.inventory(&["set-status", DEVICE, "quarantined", "--reason", "stolen"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let (response, transcript) = through_gateway(gw.addr, &tcti, &chain, &lab.server_cert);
        match http_status(&response) {
            Some(403) => break response,
            _ if Instant::now() > deadline => {
                panic!("still not refused 5 s after the quarantine:\n{transcript}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // Leaving `active` revokes the device's certificates too, and the gateway checks
    // revocation first: either reason is the quarantine's doing (a stale certificate or an
    // unknown-device refusal would not be).
    assert!(
        refused.contains("denied: certificate_revoked")
            || refused.contains("denied: device_quarantined"),
        "refused because of the quarantine: {refused}"
    );
    assert!(
        !refused.contains("x-portcullis-device-id"),
        "the upstream was not reached: {refused}"
    );
    let before = std::fs::read(&chain).unwrap();
    let renewed = lab.agent("renew", &swtpm, &out, &ek_chain);
    assert_eq!(
        renewed.status.code(),
        Some(EXIT_DEVICE_NOT_TRUSTED),
        "agent renew of a quarantined device: {}",
        text(&renewed)
    );
    let stderr = String::from_utf8_lossy(&renewed.stderr);
    assert!(
        stderr.contains("the CA does not trust this device"),
        "{}",
        text(&renewed)
    );
    assert!(
        stderr.contains("device-active"),
        "the refused rule is named: {}",
        text(&renewed)
    );
    // Refused, nothing written: the old chain is still what is on disk.
    assert_eq!(std::fs::read(&chain).unwrap(), before);

    eprintln!(
        "timings: swtpm manufactured {manufactured:?}; agent enroll {enroll_time:?}; \
         one s_client request through the gateway {request_time:?}; total {:?}",
        started.elapsed()
    );
}
