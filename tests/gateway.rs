//! End-to-end: the real `portcullis` binary, the real `curl` and `openssl s_client`, the
//! built-in demo upstream. Issue 2, "How it is proven".
//!
//! Each test function starts one gateway and runs a group of related cases against it (every
//! test function is its own process under nextest; starting fewer binaries keeps CI fast).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The routes of the main fixture: `localhost` passes every identity header kind to the
/// upstream for active `eng` devices; `127.0.0.1` passes none (to show that stripping does not
/// depend on which headers a route adds).
const ROUTES: &str = r#"
[[gateway.routes]]
name = "app"
from = "localhost"
to = "http://{upstream}"
identity_headers = ["plain", "xfcc", "client-cert", "assertion"]
allow = [{ tag = "eng" }]

[[gateway.routes]]
name = "bare"
from = "127.0.0.1"
to = "http://{upstream}"
identity_headers = []
allow = [{ tag = "eng" }]
"#;

fn start(fx: &Fixture) -> Gateway {
    fx.write_config(&fx.config_text("required", ROUTES));
    fx.start()
}

#[test]
fn allowed_device_reaches_upstream_with_verifiable_identity() {
    if !require_program("curl") {
        return;
    }
    let fx = Fixture::new();
    let gw = start(&fx);
    let alice = fx.cred("alice");

    // HTTP/1.1.
    let out = Curl::new(&gw, &fx.root, "/hello?x=1")
        .cred(alice)
        .arg("--http1.1")
        .run();
    assert_eq!(out.status, 200, "{out:?}\nlog:\n{}", gw.log_text());
    assert_eq!(out.http_version, "1.1");
    let echo = out.echo();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echoed(&echo, "x-portcullis-device-id"), ["dev-alice"]);
    assert_eq!(echoed(&echo, "x-portcullis-status"), ["active"]);
    assert_eq!(echoed(&echo, "x-portcullis-tags"), ["eng"]);
    assert_eq!(echoed(&echo, "x-portcullis-platform"), ["linux"]);
    let fingerprint = echoed(&echo, "x-portcullis-fingerprint");
    assert_eq!(fingerprint.len(), 1);
    assert_eq!(fingerprint[0].len(), 64, "hex SHA-256: {fingerprint:?}");
    let xfcc = echoed(&echo, "x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{echo}");
    assert!(
        xfcc[0].contains(&format!("Hash={}", fingerprint[0])),
        "{xfcc:?}"
    );
    assert!(
        xfcc[0].contains(&format!("URI=spiffe://{TRUST_DOMAIN}/device/dev-alice")),
        "{xfcc:?}"
    );
    // RFC 9440 §2.1: a byte sequence, `:base64:`.
    let client_cert = echoed(&echo, "client-cert");
    assert_eq!(client_cert.len(), 1, "{echo}");
    assert!(client_cert[0].starts_with(':') && client_cert[0].ends_with(':'));
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["https"]);

    // The assertion verifies against the JWKS the gateway publishes.
    let jwt = echoed(&echo, "x-portcullis-assertion");
    assert_eq!(jwt.len(), 1, "{echo}");
    let jwks = Curl::new(&gw, &fx.root, "/.well-known/portcullis/jwks.json")
        .cred(alice)
        .run();
    assert_eq!(jwks.status, 200, "{jwks:?}");
    let claims = verify_jwt(&jwt[0], &jwks.body, "localhost");
    assert_eq!(claims["sub"], "dev-alice");
    assert_eq!(claims["iss"], "portcullis-e2e");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 300, "exp ≤ 5 min: {claims}");
    // A forged token signed by someone else does not verify.
    let forged = forge_jwt("dev-mallory");
    assert!(try_verify_jwt(&forged, &jwks.body, "localhost").is_err());

    // HTTP/2 (ALPN h2), forwarded to an HTTP/1.1 upstream.
    let out = Curl::new(&gw, &fx.root, "/h2")
        .cred(alice)
        .arg("--http2")
        .run();
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.http_version, "2", "{out:?}");
    assert_eq!(echoed(&out.echo(), "x-portcullis-device-id"), ["dev-alice"]);

    // A request body streams to the upstream, and the response streams back: the first chunk
    // of /stream arrives long before the last (5 chunks, 300 ms apart).
    let out = Curl::new(&gw, &fx.root, "/upload")
        .cred(alice)
        .args(&["--data-binary", "@-"])
        .run_with_stdin(&vec![b'x'; 3 * 1024 * 1024]);
    assert_eq!(out.status, 200, "{:?}", out.stderr);
    assert_eq!(out.echo()["body_bytes"], 3 * 1024 * 1024);
    let out = Curl::new(&gw, &fx.root, "/stream?n=5&delay_ms=300")
        .cred(alice)
        .run();
    assert_eq!(out.status, 200, "{out:?}");
    let (ttfb, total) = (out.time_starttransfer, out.time_total);
    assert!(out.body.contains("chunk 4"), "{out:?}");
    assert!(
        total - ttfb > 0.8,
        "the response was buffered: first byte at {ttfb}s, last at {total}s"
    );

    // The decision is in the audit log with the device and its fingerprint.
    let line = fx.wait_audit("alice allowed", |l| {
        l["device_id"] == "dev-alice" && l["path"] == "/hello" && l["decision"] == "allow"
    });
    assert_eq!(line["reason"], "allowed");
    assert_eq!(line["fingerprint"], fingerprint[0].as_str());
    assert_eq!(line["route"], "app");
    assert_eq!(line["upstream_status"], 200);
}

#[test]
fn refused_devices_get_the_right_reason() {
    if !require_program("curl") {
        return;
    }
    let fx = Fixture::new();
    let gw = start(&fx);

    // Refused in the TLS handshake: the certificate itself is not acceptable. No HTTP
    // response; the reason is in the audit log, the log and the handshake-failure metric.
    let tls_cases: &[(Option<&str>, &str)] = &[
        (None, "no_certificate"),
        (Some("other_ca"), "untrusted_issuer"),
        (Some("expired"), "expired"),
        (Some("not_yet_valid"), "not_yet_valid"),
        (Some("too_long"), "lifetime_too_long"),
        (Some("no_id"), "no_device_id"),
        (Some("server_auth"), "wrong_usage"),
    ];
    for (cred, reason) in tls_cases {
        let sample = format!("portcullis_handshake_failures_total{{reason=\"{reason}\"}}");
        let before = gw.metric(&sample);
        let log_from = gw.log_text().len();
        let mut curl = Curl::new(&gw, &fx.root, "/");
        if let Some(name) = cred {
            curl = curl.cred(fx.cred(name));
        }
        let out = curl.run();
        assert_eq!(
            out.status, 0,
            "{cred:?} must be refused in the handshake: {out:?}"
        );
        assert_ne!(out.exit, 0, "{out:?}");
        if cred.is_some() {
            let line = gw.wait_log(log_from, "client certificate refused");
            assert!(
                line.contains(&format!("\"reason\":\"{reason}\"")),
                "{cred:?}: {line}"
            );
        }
        // One audit line per refusal, with the client's address; the n-th refusal of this
        // reason is the n-th line (each reason occurs once in this loop).
        let line = fx.wait_audit(reason, |l| {
            l["event"] == "handshake" && l["reason"] == *reason
        });
        assert_eq!(line["decision"], "deny", "{line}");
        assert_eq!(line["source_ip"], "127.0.0.1", "{line}");
        if cred.is_some() {
            assert!(
                line["fingerprint"].as_str().is_some_and(|f| f.len() == 64),
                "{line}"
            );
        }
        // The counter is bumped as the refusal happens; allow the scrape a moment.
        wait_until(&format!("{sample} to increase"), || {
            gw.metric(&sample) > before
        });
    }

    // Refused per request: the certificate is fine, the inventory says no. 403, the reason
    // class in the body, the full reason in the audit log.
    for (name, device, reason) in [
        ("unknown", "dev-unknown", "unknown_device"),
        ("mallory", "dev-mallory", "device_quarantined"),
        ("retired", "dev-retired", "device_retired"),
        ("bob", "dev-bob", "no_rule_matched"),
    ] {
        let path = format!("/refused/{name}");
        let out = Curl::new(&gw, &fx.root, &path).cred(fx.cred(name)).run();
        assert_eq!(out.status, 403, "{name}: {out:?}");
        assert!(out.body.contains(reason), "{name}: body {:?}", out.body);
        assert!(
            !out.body.contains("x-portcullis"),
            "no upstream echo: {:?}",
            out.body
        );
        let line = fx.wait_audit(reason, |l| l["path"] == path.as_str());
        assert_eq!(line["decision"], "deny", "{line}");
        assert_eq!(line["reason"], reason, "{line}");
        assert_eq!(line["device_id"], device, "{line}");
        assert!(
            line["request_id"]
                .as_str()
                .is_some_and(|id| out.body.contains(id)),
            "{line}"
        );
    }

    // openssl s_client, a second TLS stack: the active device gets a 200, a handshake without
    // a certificate or with an expired one gets an alert and no HTTP response.
    if require_program("openssl") {
        let (_, text) = s_client(&gw, &fx.root, Some(fx.cred("alice")), &[]);
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        assert!(text.contains("x-portcullis-device-id: dev-alice"), "{text}");
        for (cred, reason) in [(None, "no_certificate"), (Some("expired"), "expired")] {
            let sample = format!("portcullis_handshake_failures_total{{reason=\"{reason}\"}}");
            let before = gw.metric(&sample);
            let (_, text) = s_client(&gw, &fx.root, cred.map(|c| fx.cred(c)), &[]);
            assert!(!text.contains("HTTP/1.1"), "{cred:?}: {text}");
            assert!(text.contains("alert"), "{cred:?}: a TLS alert: {text}");
            wait_until(&format!("{sample} to increase"), || {
                gw.metric(&sample) > before
            });
        }
        // TLS 1.2 works too (the issue: TLS 1.2/1.3).
        let (_, text) = s_client(&gw, &fx.root, Some(fx.cred("alice")), &["-tls1_2"]);
        assert!(text.contains("HTTP/1.1 200"), "TLS 1.2: {text}");
    }
}

#[test]
fn spoofed_identity_headers_never_reach_upstream() {
    if !require_program("curl") {
        return;
    }
    let fx = Fixture::new();
    let gw = start(&fx);
    let alice = fx.cred("alice");
    let spoofed = [
        "X-Portcullis-Device-Id: evil-1",
        "x-PORTCULLIS-device-ID: evil-2",
        "X-Portcullis-Device-Id: evil-3",
        "X-Portcullis-Status: active-evil",
        "X-Portcullis-Tags: admin-evil",
        "x-portcullis-anything-else: evil-4",
        "X-Portcullis-Assertion: evil.jwt.value",
        "X-Forwarded-Client-Cert: Hash=evil;URI=spiffe://evil",
        "x-forwarded-client-cert: By=evil",
        "Client-Cert: :ZXZpbA==:",
        "CLIENT-CERT-CHAIN: :ZXZpbA==:",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Proto: evil",
        "X-Forwarded-Host: evil.example",
        "Forwarded: for=6.6.6.6;host=evil.example",
        "X-Real-IP: 6.6.6.6",
    ];
    for (host, version) in [
        ("localhost", "--http1.1"),
        ("localhost", "--http2"),
        ("127.0.0.1", "--http1.1"),
        ("127.0.0.1", "--http2"),
    ] {
        let mut curl = Curl::new(&gw, &fx.root, "/spoof").cred(alice).arg(version);
        if host == "127.0.0.1" {
            curl = curl.url(&format!("https://127.0.0.1:{}/spoof", gw.port()));
        }
        for h in spoofed {
            curl = curl.header(h);
        }
        let out = curl.run();
        assert_eq!(out.status, 200, "{host} {version}: {out:?}");
        let echo = out.echo();
        let all = echo["headers"].to_string();
        for marker in ["evil", "6.6.6.6"] {
            assert!(
                !all.contains(marker),
                "{host} {version}: `{marker}` reached upstream: {echo}"
            );
        }
        assert!(echoed(&echo, "forwarded").is_empty(), "{echo}");
        assert!(echoed(&echo, "x-real-ip").is_empty(), "{echo}");
        if host == "localhost" {
            assert_eq!(
                echoed(&echo, "x-portcullis-device-id"),
                ["dev-alice"],
                "{echo}"
            );
            assert_eq!(echoed(&echo, "x-forwarded-client-cert").len(), 1, "{echo}");
            assert_eq!(echoed(&echo, "x-portcullis-assertion").len(), 1, "{echo}");
        } else {
            // A route that adds no identity headers still strips them all.
            let identity: Vec<_> = echo["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| h.as_str())
                .filter(|h| h.starts_with("x-portcullis-") || h.starts_with("client-cert"))
                .collect();
            assert!(identity.is_empty(), "{identity:?}");
        }
    }

    // A client naming an identity header as hop-by-hop (`Connection: x-portcullis-device-id`)
    // must not be able to remove the gateway's own copy on the way out.
    let out = Curl::new(&gw, &fx.root, "/hop")
        .cred(alice)
        .arg("--http1.1")
        .header("Connection: keep-alive, X-Portcullis-Device-Id, X-Forwarded-Client-Cert")
        .run();
    assert_eq!(out.status, 200, "{out:?}");
    let echo = out.echo();
    assert_eq!(
        echoed(&echo, "x-portcullis-device-id"),
        ["dev-alice"],
        "{echo}"
    );
    assert_eq!(echoed(&echo, "x-forwarded-client-cert").len(), 1, "{echo}");
}

#[test]
fn websocket_works_and_is_cut_within_a_second_of_quarantine() {
    let fx = Fixture::new();
    let gw = start(&fx);
    let port = gw.port();

    // Besides the WebSocket, the same device holds a long HTTP/2 response (curl): it must be
    // cut too. 100 chunks 200 ms apart would take 20 s.
    let h2_stream = require_program("curl").then(|| {
        let ws = fx.cred("ws");
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--http2", "--max-time", "30", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&fx.root)
            .arg("--cert")
            .arg(&ws.cert)
            .arg("--key")
            .arg(&ws.key)
            .arg(gw.url("/stream?n=100&delay_ms=200"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        // Read the body as it streams; the quarantine must happen mid-stream.
        let stdout = child.stdout.take().expect("stdout");
        let (first_chunk, started) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut body = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if body.is_empty() {
                    let _ = first_chunk.send(());
                }
                body.push(line);
            }
            body
        });
        started
            .recv_timeout(Duration::from_secs(20))
            .expect("the HTTP/2 stream started");
        (child, reader)
    });

    let cut_after = fx.rt.block_on(async {
        let ws_device = open_websocket(&fx, "ws", port).await;
        let other_device = open_websocket(&fx, "alice", port).await;
        let (mut ws, mut other) = (ws_device, other_device);

        for (socket, text) in [
            (&mut ws, "hello from dev-ws"),
            (&mut other, "hello from alice"),
        ] {
            socket.send(Message::text(text)).await.expect("send");
            let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("echo within 10 s")
                .expect("stream open")
                .expect("message");
            assert_eq!(reply, Message::text(text));
        }

        // Quarantine dev-ws in the inventory file; the gateway must notice and cut its open
        // WebSocket, and only that one.
        let quarantined_at = Instant::now();
        fx.write_inventory(&[("dev-ws", "quarantined")]);
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        let cut_after = quarantined_at.elapsed();
        assert!(
            ended.is_ok(),
            "the quarantined device's WebSocket stayed open for 5 s"
        );

        other.send(Message::text("still here")).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), other.next())
            .await
            .expect("echo")
            .expect("open")
            .expect("message");
        assert_eq!(
            reply,
            Message::text("still here"),
            "an active device must not be cut"
        );
        cut_after
    });
    eprintln!("the WebSocket was cut {cut_after:?} after the inventory file changed");
    assert!(
        cut_after <= Duration::from_secs(1),
        "cut {cut_after:?} after the quarantine, more than 1 s"
    );
    fx.wait_audit("connection cut", |l| {
        l["event"] == "connection_cut" && l["device_id"] == "dev-ws"
    });
    if let Some((mut child, reader)) = h2_stream {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("the quarantined device's HTTP/2 stream was not cut");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let body = reader.join().expect("reader");
        assert_eq!(
            body.first().map(String::as_str),
            Some("chunk 0"),
            "{body:?}"
        );
        assert!(
            !body.iter().any(|l| l == "chunk 99"),
            "the stream ran to its end"
        );
        assert!(!status.success(), "curl must see a broken stream: {status}");
    }

    // A new connection of the quarantined device is refused, with the reason.
    if require_program("curl") {
        let out = Curl::new(&gw, &fx.root, "/after-cut")
            .cred(fx.cred("ws"))
            .run();
        assert_eq!(out.status, 403, "{out:?}");
        assert!(out.body.contains("device_quarantined"), "{out:?}");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn open_websocket(fx: &Fixture, cred: &str, port: u16) -> Ws {
    let config = rustls_client(&fx.root, Some(fx.cred(cred)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{port}/ws");
    let (ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket upgrade through the gateway");
    assert_eq!(response.status(), 101);
    ws
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn try_verify_jwt(token: &str, jwks: &str, audience: &str) -> Result<serde_json::Value, String> {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("JWKS: {e}: {jwks}"))?;
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    if header.alg != Algorithm::ES256 {
        return Err(format!("alg {:?}", header.alg));
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK: {e}"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["portcullis-e2e"]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    decode::<serde_json::Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| format!("verify: {e}"))
}

fn verify_jwt(token: &str, jwks: &str, audience: &str) -> serde_json::Value {
    try_verify_jwt(token, jwks, audience).unwrap_or_else(|e| panic!("{e}\ntoken: {token}"))
}

/// A well-formed ES256 token with a kid the gateway does not publish.
fn forge_jwt(sub: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"ES256","typ":"JWT","kid":"forged"}"#);
    let claims = b64.encode(format!(
        r#"{{"iss":"portcullis-e2e","aud":"localhost","sub":"{sub}","iat":1,"exp":99999999999}}"#
    ));
    format!("{header}.{claims}.{}", b64.encode([0u8; 64]))
}
