//! End-to-end: the commands a newcomer types — `portcullis up` and the curl commands it
//! prints, `portcullis config check`, `portcullis cert inspect`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn config_check_says_ok_or_names_file_line_and_key() {
    let fx = Fixture::new();
    fx.write_config(&fx.config_text(
        "required",
        "[[gateway.routes]]\nfrom = \"localhost\"\nto = \"http://{upstream}\"\nallow = [{ tag = \"eng\" }]\n",
    ));
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&fx.config)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("OK"), "{stdout}");

    let file = fx.config.display().to_string();
    let check = |text: &str| {
        fx.write_config(text);
        let out = Command::new(BIN)
            .args(["config", "check"])
            .arg(&fx.config)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("needle")
            + 1
    };

    // A type error (TOML/serde) is located at its line.
    let text = fx
        .config_text(
            "required",
            "[[gateway.routes]]\nfrom = \"localhost\"\nto = \"http://{upstream}\"\n",
        )
        .replace("clock_skew = \"30s\"", "clock_skew = 30");
    let (code, stderr) = check(&text);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:{}:", line_of(&text, "clock_skew"))),
        "a type error is located: {stderr}"
    );

    // Problems of meaning: every one reported, each as file:line: key: message.
    let text = fx
        .config_text(
            "required",
            "[[gateway.routes]]\nfrom = \"localhost\"\nto = \"htp://x\"\n",
        )
        .replace("ttl = \"2m\"", "ttl = \"1h\"");
    let (code, stderr) = check(&text);
    assert_eq!(code, Some(1), "{stderr}");
    for (needle, key) in [
        ("htp://x", "gateway.routes[0].to"),
        ("ttl = ", "gateway.assertion.ttl"),
    ] {
        let expected = format!("{file}:{}: {key}: ", line_of(&text, needle));
        assert!(
            stderr.contains(&expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }

    // A missing file is an error too, not a panic.
    let out = Command::new(BIN)
        .args(["config", "check", "/nonexistent/portcullis.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/portcullis.toml"));
}

#[test]
fn cert_inspect_shows_the_identity_and_why_it_is_refused() {
    let fx = Fixture::new();
    let inspect = |cert: &str, extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["cert", "inspect"])
            .arg(&fx.cred(cert).cert)
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(extra)
            .output()
            .expect("run");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let root = fx.root.display().to_string();

    let (code, text) = inspect("alice", &["--root", &root]);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "dev-alice",
        "PermanentIdentifier",
        &format!("spiffe://{TRUST_DOMAIN}/device/dev-alice"),
        "CN=E2E Issuing CA",
        "platform      linux",
        "OK against",
    ] {
        assert!(text.contains(expected), "missing `{expected}`:\n{text}");
    }
    let fingerprint = text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint"))
        .map(|v| v.trim().trim_start_matches("sha256:").to_owned())
        .expect("fingerprint line");
    assert_eq!(fingerprint.len(), 64, "{text}");

    // Without --root it only reads, and succeeds.
    let (code, text) = inspect("expired", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("verify"), "{text}");

    for (cert, extra, reason) in [
        ("expired", vec![], "expired"),
        ("not_yet_valid", vec![], "not_yet_valid"),
        ("other_ca", vec![], "untrusted_issuer"),
        ("no_id", vec![], "no_device_id"),
        ("server_auth", vec![], "wrong_usage"),
        // The default max_lifetime is 7 days.
        ("too_long", vec![], "lifetime_too_long"),
        ("alice", vec!["--at", "2099-01-01T00:00:00Z"], "expired"),
    ] {
        let mut args = vec!["--root", root.as_str()];
        args.extend(extra);
        let (code, text) = inspect(cert, &args);
        assert_eq!(code, Some(1), "{cert} must not verify:\n{text}");
        assert!(
            text.contains(&format!("REFUSED: {reason}")),
            "{cert}: {text}"
        );
    }
    let (code, text) = inspect("no_id", &[]);
    assert_eq!(code, Some(0));
    assert!(text.contains("NONE"), "{text}");

    // Trust settings from a config file: its roots and its trust domain.
    fx.write_config(&fx.config_text(
        "required",
        "[[gateway.routes]]\nfrom = \"localhost\"\nto = \"http://{upstream}\"\nallow = [{ tag = \"eng\" }]\n",
    ));
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(&fx.cred("alice").cert)
        .arg("--config")
        .arg(&fx.config)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("dev-alice") && text.contains("OK against"),
        "{text}"
    );

    // Garbage in: an error, not a panic.
    let junk = fx.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = Command::new(BIN)
        .args(["cert", "inspect"])
        .arg(&junk)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
}

/// `portcullis up`, killed (SIGTERM, then SIGKILL) on drop.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(dir: &Path, ports: [u16; 3]) -> Self {
        let mut child = Command::new(BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", ports[1]))
            .arg("--upstream-listen")
            .arg(format!("127.0.0.1:{}", ports[2]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start portcullis up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Stdout lines up to and including "Stop with Ctrl-C."; panics if `up` exits first.
    fn instructions(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(START_TIMEOUT) {
                Ok(line) => {
                    let done = line.contains("Stop with Ctrl-C");
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "`portcullis up` printed no instructions (exit: {:?}); stdout so far:\n{}",
                    self.child.try_wait(),
                    seen.join("\n")
                ),
            }
        }
    }
}

/// Runs a printed command line through the shell, as a user pasting it would.
fn sh(command: &str) -> (i32, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -sS --max-time 20"))
        .output()
        .expect("sh");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn up_starts_and_the_printed_curl_commands_do_what_they_say() {
    if !require_program("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // `up` writes its addresses into the config before binding, so free ports are picked
    // here (port 0 would leave the printed curl commands without a port).
    let ports = [free_port(), free_port(), free_port()];
    let mut up = Up::start(&data, ports);
    let text = up.instructions();
    let command = |needle: &str| -> String {
        text.iter()
            .find(|l| l.trim_start().starts_with("curl") && l.contains(needle))
            .unwrap_or_else(|| panic!("no curl command with `{needle}` in:\n{}", text.join("\n")))
            .trim()
            .to_owned()
    };

    let alice = command("laptop-alice.key");
    assert!(
        alice.contains(&data.canonicalize().unwrap().display().to_string()),
        "absolute paths: {alice}"
    );
    let (code, out) = sh(&alice);
    assert_eq!(code, 0, "{alice}\n{out}");
    assert!(
        out.contains("x-portcullis-device-id: laptop-alice"),
        "{out}"
    );
    assert!(out.contains("x-portcullis-assertion: "), "{out}");

    let (code, out) = sh(&command("laptop-mallory.key"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("denied: device_quarantined"), "{out}");

    let no_cert = text
        .iter()
        .find(|l| {
            let l = l.trim();
            l.starts_with("curl") && !l.contains("--cert") && !l.contains("healthz")
        })
        .expect("a curl command without a certificate")
        .trim()
        .to_owned();
    let (_, out) = sh(&format!("{no_cert} -w 'status=%{{http_code}}'"));
    assert!(out.contains("denied: no_certificate"), "{out}");
    assert!(
        out.contains("status=496"),
        "nginx's 496 Certificate Required: {out}"
    );

    let (code, out) = sh(&command("/healthz"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"path\": \"/healthz\""), "{out}");

    // Private keys are 0600.
    for key in [
        "ca/pki/root.key",
        "ca/pki/intermediate.key",
        "pki/server.key",
        "devices/laptop-alice.key",
        "admin.tokens",
    ] {
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let root_before = std::fs::read(data.join("ca/pki/root.pem")).unwrap();
    let alice_before = std::fs::read(data.join("devices/laptop-alice.pem")).unwrap();
    drop(up);

    // Idempotent: a second `up` on the same dir reuses the CA and certificates, and the
    // same command still works.
    let mut up = Up::start(&data, ports);
    let text2 = up.instructions();
    assert!(
        text2.iter().any(|l| l.trim() == alice),
        "same command printed again"
    );
    assert_eq!(
        std::fs::read(data.join("ca/pki/root.pem")).unwrap(),
        root_before
    );
    assert_eq!(
        std::fs::read(data.join("devices/laptop-alice.pem")).unwrap(),
        alice_before
    );
    let (code, out) = sh(&alice);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("x-portcullis-device-id: laptop-alice"),
        "{out}"
    );

    // The inventory, through the CA's admin API with the token `up` wrote.
    let config = data.join("portcullis.toml");
    let inventory = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("inventory")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run portcullis inventory");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, list, err) = inventory(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("laptop-alice") && l.contains("active")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("laptop-mallory") && l.contains("quarantined")),
        "{list}"
    );

    let csv = tmp.path().join("mdm.csv");
    std::fs::write(
        &csv,
        "id,platform,owner,tags\nlaptop-carol,macos,carol@example.com,eng\n",
    )
    .unwrap();
    let (code, out, err) = inventory(&["import", csv.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("+ laptop-carol"), "{out}");
    assert!(out.contains("dry run, nothing changed"), "{out}");
    let (_, list, _) = inventory(&["list"]);
    assert!(
        !list.contains("laptop-carol"),
        "a dry run changed nothing: {list}"
    );

    std::fs::write(&csv, "id,status\nlaptop-dave,lost\n").unwrap();
    let (code, _, err) = inventory(&["import", csv.to_str().unwrap()]);
    assert_eq!(code, Some(1), "a bad row fails the import: {err}");
    assert!(err.contains("line 2"), "the row is named: {err}");

    // The quarantine command `up` printed cuts alice off: the gateway follows the CA's
    // inventory in memory.
    let quarantine = text2
        .iter()
        .find(|l| l.contains("set-status laptop-alice quarantined"))
        .unwrap_or_else(|| panic!("no quarantine command in:\n{}", text2.join("\n")))
        .trim()
        .to_owned();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&quarantine)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{quarantine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("quarantined"));
    let (code, history, _) = inventory(&["show", "laptop-alice"]);
    assert_eq!(code, Some(0));
    assert!(
        history.contains("active -> quarantined  by admin: lost laptop"),
        "{history}"
    );
    let mut refused = String::new();
    for _ in 0..50 {
        let (_, out) = sh(&alice);
        if out.contains("denied: device_quarantined") {
            refused = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        refused.contains("denied: device_quarantined"),
        "alice is refused once quarantined"
    );
}

#[test]
fn the_examples_are_valid_and_match_the_up_layout() {
    // examples/portcullis.toml uses the paths `portcullis up` creates: dropped into such a data
    // dir, it must pass `config check` as it is.
    let tmp = tempfile::tempdir().unwrap();
    let dir = portcullis::quickstart::prepare(&portcullis::quickstart::UpOptions {
        data_dir: tmp.path().join("data"),
        ..Default::default()
    })
    .expect("prepare a data dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/portcullis.toml");
    std::fs::copy(&example, &dir.config).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&dir.config)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "examples/portcullis.toml is not valid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory.toml");
    let text = std::fs::read_to_string(inventory).unwrap();
    let snapshot =
        portcullis_policy::parse_inventory(&text, portcullis_policy::InventoryFormat::Toml)
            .expect("examples/inventory.toml parses");
    assert_eq!(snapshot.device_count(), 4);
    assert_eq!(snapshot.revoked_serials().len(), 1);
}

/// `portcullis serve` on `config` (written to `dir/ca.toml`), stderr in `dir/serve.log`;
/// killed on drop.
struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("ca.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("serve.log");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start portcullis serve");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_ca_on_port_zero_hands_out_urls_with_the_port_it_got() {
    if !require_program("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let serve = Serve::start(
        tmp.path(),
        "[log]\nformat = \"json\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [ca]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"ca\"\n",
    );
    let mut addr = None;
    for _ in 0..200 {
        addr = logged_addr(&serve.log(), "CA listening");
        if addr.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = addr.unwrap_or_else(|| panic!("no `CA listening` line: {}", serve.log()));
    assert_ne!(addr.port(), 0);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(tmp.path().join("ca/pki/bundle.pem"))
        .arg(format!("https://127.0.0.1:{}/acme/directory", addr.port()))
        .output()
        .expect("curl");
    drop(serve);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(&format!("https://127.0.0.1:{}/acme/new-nonce", addr.port())),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_publishes_the_crl_on_the_plain_http_listener() {
    if !require_program("curl") || !require_program("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let http = free_port();
    let serve = Serve::start(
        tmp.path(),
        &format!(
            "[log]\nformat = \"json\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [ca]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"ca\"\nhttp_listen = \"127.0.0.1:{http}\"\n"
        ),
    );
    let crl = tmp.path().join("intermediate.crl");
    let mut fetched = false;
    for _ in 0..100 {
        fetched = Command::new("curl")
            .args(["-sSf", "--max-time", "5", "-o"])
            .arg(&crl)
            .arg(format!("http://127.0.0.1:{http}/crl/intermediate.crl"))
            .status()
            .is_ok_and(|s| s.success());
        if fetched {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = serve.log();
    drop(serve);
    assert!(fetched, "no CRL over plain HTTP; log:\n{log}");
    // The CRL is signed by the intermediate: openssl looks its issuer up in -CAfile.
    let chain = tmp.path().join("chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(tmp.path().join("ca/pki/intermediate.pem")).unwrap()
            + &std::fs::read_to_string(tmp.path().join("ca/pki/bundle.pem")).unwrap(),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-issuer", "-CAfile"])
        .arg(&chain)
        .arg("-in")
        .arg(&crl)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains("Intermediate CA"), "{text}");
}
