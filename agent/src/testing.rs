//! Test fixtures (feature `testing`): a real software TPM (swtpm) manufactured with an EK
//! certificate from a local TPM manufacturer CA, and a test attestation CA that issues AK
//! certificates in the profile `portcullis_ca::attest::tpm` checks. For this crate's tests
//! and the end-to-end tests in the root `tests/`.
//!
//! Programs: `swtpm`, `swtpm_setup`, `swtpm_localca` (Debian packages swtpm, swtpm-tools) and
//! for some tests `tpm2_makecredential` (tpm2-tools). A test that finds one missing prints
//! that loudly and skips — except when `CI=true`, where it fails.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::der;

/// True when every program in `programs` is on PATH. Otherwise prints what is missing and
/// which package brings it, and panics if `CI=true` (a CI run must not skip silently).
pub fn require_programs(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "\n!!!!! {test}: SKIPPED — missing program(s) {missing:?} (apt-get install swtpm swtpm-tools tpm2-tools libtss2-dev)\n"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}(CI=true: failing instead of skipping)");
    }
    eprintln!("{msg}");
    false
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A running swtpm (TPM 2.0) on two consecutive loopback TCP ports, its state and its
/// manufacturer CA in a temporary directory. Dropping it stops the process.
pub struct Swtpm {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Swtpm {
    /// The programs [`Swtpm::start`] needs.
    pub const PROGRAMS: &'static [&'static str] = &["swtpm", "swtpm_setup", "swtpm_localca"];

    /// Manufactures and starts a TPM, or `None` (after [`require_programs`] said why) when
    /// a program is missing. Panics on any other failure: this is a test fixture.
    pub fn start(test: &str) -> Option<Self> {
        if !require_programs(test, Self::PROGRAMS) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for swtpm");
        manufacture(dir.path());
        // Ports may be taken between probing and binding (other tests, other users of the
        // machine): retry with new ones.
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port_pair();
            match spawn(dir.path(), port) {
                Ok(child) => return Some(Self { dir, child, port }),
                Err(e) => last = e,
            }
        }
        panic!("swtpm did not start: {last}");
    }

    /// The TCTI configuration for tpm2-tss (`swtpm:host=127.0.0.1,port=P`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The local manufacturer's root CA certificate (PEM), the trust anchor of the EK
    /// certificate (swtpm_localca's `swtpm-localca-rootca-cert.pem`).
    pub fn manufacturer_root_pem(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("localca/swtpm-localca-rootca-cert.pem"),
        )
        .expect("swtpm-localca root certificate")
    }

    /// The manufacturer's intermediate (the EK certificate's issuer), PEM.
    pub fn manufacturer_intermediate_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("localca/issuercert.pem"))
            .expect("swtpm-localca issuer certificate")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `swtpm_setup` with a private configuration, so that swtpm_localca keeps its CA in `dir`
/// (the system's /etc/swtpm-localca.conf points at /var/lib/swtpm-localca).
fn manufacture(dir: &Path) {
    let localca = dir.join("localca");
    let state = dir.join("state");
    std::fs::create_dir_all(&localca).expect("localca dir");
    std::fs::create_dir_all(&state).expect("state dir");
    let conf = dir.join("swtpm-localca.conf");
    std::fs::write(
        &conf,
        format!(
            "statedir = {l}\nsigningkey = {l}/signkey.pem\nissuercert = {l}/issuercert.pem\ncertserial = {l}/certserial\n",
            l = localca.display()
        ),
    )
    .expect("swtpm-localca.conf");
    let options = dir.join("swtpm-localca.options");
    std::fs::write(
        &options,
        "--platform-manufacturer Portcullis\n--platform-version 2.1\n--platform-model swtpm-test\n",
    )
    .expect("swtpm-localca.options");
    let setup_conf = dir.join("swtpm_setup.conf");
    std::fs::write(
        &setup_conf,
        format!(
            "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
            conf.display(),
            options.display()
        ),
    )
    .expect("swtpm_setup.conf");
    let out = Command::new("swtpm_setup")
        .args([
            "--tpm2",
            "--create-ek-cert",
            "--create-platform-cert",
            "--overwrite",
        ])
        .arg("--tpmstate")
        .arg(&state)
        .arg("--config")
        .arg(&setup_conf)
        .arg("--logfile")
        .arg(dir.join("swtpm_setup.log"))
        .stdin(Stdio::null())
        .output()
        .expect("running swtpm_setup");
    let log = std::fs::read_to_string(dir.join("swtpm_setup.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "swtpm_setup failed: {}\n{}\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two consecutive free loopback ports (swtpm's TCTI uses port+1 for the control channel).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a probe port");
        let port = a.local_addr().expect("probe port").port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports");
}

fn spawn(dir: &Path, port: u16) -> Result<Child, String> {
    let log = dir.join("swtpm.log");
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2"])
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.join("state").display()))
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning swtpm: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("swtpm exited with {status}: {err}"));
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("swtpm did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test attestation CA for AK certificates: a self-signed root that issues AK
/// certificates in the profile of WebAuthn §8.3.1 / TCG EK Credential Profile §3.2 (the one
/// `portcullis_ca::attest::tpm` checks): v3, empty subject, critical SAN with the TPM
/// manufacturer/model/version directoryName (and a PermanentIdentifier otherName naming the
/// device, which the ACME order identifier is matched against), EKU tcg-kp-AIKCertificate
/// 2.23.133.8.3, basicConstraints cA false.
pub struct TestAkCa {
    pub root_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// The TPM identity an AK certificate names (TCG EK Credential Profile §3.2.9).
#[derive(Debug, Clone)]
pub struct TpmIdentity {
    /// e.g. `id:00001014` (IBM, what swtpm reports).
    pub manufacturer: String,
    pub model: String,
    pub version: String,
}

impl Default for TpmIdentity {
    fn default() -> Self {
        Self {
            manufacturer: "id:00001014".into(),
            model: "swtpm".into(),
            version: "id:20191023".into(),
        }
    }
}

impl TestAkCa {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("AK CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("AK CA params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test AK CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_der = params
            .self_signed(&key)
            .expect("AK CA self-signed")
            .der()
            .to_vec();
        Self {
            root_der,
            issuer: Issuer::new(params, key),
        }
    }

    /// An AK certificate for the AK whose SubjectPublicKeyInfo is `ak_spki`.
    pub fn issue(&self, ak_spki: &[u8], tpm: &TpmIdentity, device_id: Option<&str>) -> Vec<u8> {
        let key = rcgen::SubjectPublicKeyInfo::from_der(ak_spki).expect("AK SPKI");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("AK cert params");
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 3])];
        // Empty subject: the SAN is critical (RFC 5280 §4.2.1.6).
        let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], ak_san(tpm, device_id));
        san.set_criticality(true);
        params.custom_extensions.push(san);
        params
            .signed_by(&key, &self.issuer)
            .expect("AK certificate")
            .der()
            .to_vec()
    }
}

impl Default for TestAkCa {
    fn default() -> Self {
        Self::new()
    }
}

/// `GeneralNames` with the TPM directoryName and optionally a PermanentIdentifier otherName.
pub fn ak_san(tpm: &TpmIdentity, device_id: Option<&str>) -> Vec<u8> {
    let attr = |oid: &[u64], value: &str| {
        // RelativeDistinguishedName ::= SET OF AttributeTypeAndValue (one per RDN, the
        // three-RDN shape Intel and ST use).
        der::tlv(
            0x31,
            &der::tlv(
                0x30,
                &[der::oid(oid), der::tlv(0x0c, value.as_bytes())].concat(),
            ),
        )
    };
    let name = der::tlv(
        0x30,
        &[
            attr(&[2, 23, 133, 2, 1], &tpm.manufacturer),
            attr(&[2, 23, 133, 2, 2], &tpm.model),
            attr(&[2, 23, 133, 2, 3], &tpm.version),
        ]
        .concat(),
    );
    let mut names = der::tlv(0xa4, &name);
    if let Some(id) = device_id {
        names.extend(der::permanent_identifier_other_name(id));
    }
    der::tlv(0x30, &names)
}
