//! The inventory admin API over real HTTPS: the CA started with `Ca::open` + `Ca::serve` on
//! loopback, driven by the crate's `AdminClient`, by a raw hyper client for the malformed
//! cases, and by the real `curl` binary for the token and the mTLS paths.
//!
//! Every refusal is checked for its status, its problem document, and that nothing changed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_ca::acme::AcmeConfig;
use portcullis_ca::admin_api::client::{AdminClient, ClientError, Credential};
use portcullis_ca::admin_api::model::{Outcome, PutDevice};
use portcullis_ca::admin_api::AdminApiSettings;
use portcullis_ca::clock::SystemClock;
use portcullis_ca::inventory::import::ImportFormat;
use portcullis_ca::service::{Ca, CaError, CaSettings};
use portcullis_ca::store::{AcmeStore, NewCert};
use portcullis_config::DeviceStatus;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

const TOKEN: &str = "aW5zZWN1cmUtdGVzdC10b2tlbi0wMDAwMDAwMDAwMDAwMDAw";
const OTHER_TOKEN: &str = "b3RoZXItdGVzdC10b2tlbi0xMTExMTExMTExMTExMTExMTE";

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A CA certificate (self-signed) for admin client certificates.
fn admin_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A clientAuth certificate with subject CN `cn`; returns (cert path, key path).
fn client_cert(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    write_secret(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

struct Lab {
    dir: tempfile::TempDir,
    ca: Arc<Ca>,
    base: String,
    bundle: PathBuf,
    admin_cert: (PathBuf, PathBuf),
    rogue_cert: (PathBuf, PathBuf),
}

impl Lab {
    async fn start() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("admin-tokens");
        write_secret(
            &tokens,
            &format!("# test admins\nalice {TOKEN}\nbob {OTHER_TOKEN}\n"),
        );
        let admin_root = admin_ca("Admin Root");
        let roots = dir.path().join("admin-roots.pem");
        std::fs::write(&roots, admin_root.pem()).unwrap();
        let admin_cert = client_cert(&admin_root, "ops-admin", dir.path(), "admin");
        // Same CN, another CA: must not get in.
        let rogue_root = admin_ca("Admin Root");
        let rogue_cert = client_cert(&rogue_root, "ops-admin", dir.path(), "rogue");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let mut settings = CaSettings::new(dir.path().join("ca"), AcmeConfig::new(&base));
        settings.tls_ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        settings.admin_api = AdminApiSettings {
            tokens_file: Some(tokens),
            client_roots: vec![roots],
        };
        let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
        let ca = Arc::new(ca);
        let server = ca.clone();
        tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
        Lab {
            bundle: ca.bundle_path().to_path_buf(),
            dir,
            ca,
            base,
            admin_cert,
            rogue_cert,
        }
    }

    fn client(&self, credential: Credential) -> AdminClient {
        AdminClient::new(&self.base, &self.bundle, credential).unwrap()
    }

    fn token_client(&self) -> AdminClient {
        self.client(Credential::Token(TOKEN.into()))
    }

    /// Everything an admin request could change: devices, their histories, certificates.
    fn snapshot(&self) -> String {
        let devices = self.ca.store.devices().unwrap();
        let histories: Vec<_> = devices
            .iter()
            .map(|d| self.ca.store.device_history(&d.id).unwrap())
            .collect();
        let certs: Vec<_> = ["0a", "0b"]
            .iter()
            .map(|s| self.ca.store.certificate(s).unwrap().map(|c| c.revoked_at))
            .collect();
        format!("{devices:?}\n{histories:?}\n{certs:?}")
    }

    fn record_cert(&self, serial: &str, device: &str) {
        self.ca
            .store
            .record_certificate(&NewCert {
                serial,
                fingerprint: serial,
                der: b"",
                chain_pem: "",
                not_before: 0,
                not_after: i64::MAX / 2,
                device_id: Some(device),
            })
            .unwrap();
    }

    /// A request by hand (no client certificate), for what `AdminClient` would never send.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (u16, HeaderMap, Value) {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read_to_string(&self.bundle).unwrap();
        for der in portcullis_ca::pki::pem::decode_all(&pem, "CERTIFICATE").unwrap() {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn assert_problem(status: u16, headers: &HeaderMap, body: &Value, want: u16, kind: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(body["status"], want);
    assert_eq!(
        body["type"],
        format!("urn:portcullis:admin:{kind}"),
        "{body}"
    );
}

fn laptop(id: &str) -> PutDevice {
    PutDevice {
        id: Some(id.into()),
        platform: Some("macos".into()),
        owner: Some("alice@example.com".into()),
        tags: vec!["eng".into(), "laptop".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn token_client_manages_devices_and_quarantine_revokes_and_is_published() {
    let lab = Lab::start().await;
    let client = lab.token_client();
    let mut events = lab.ca.inventory.subscribe();

    let created = client.put(&laptop("SN-1")).await.unwrap();
    assert_eq!(created.outcome, Outcome::Created);
    assert_eq!(created.device.status, DeviceStatus::Active);
    assert_eq!(created.device.source, "admin-api");
    let again = client.put(&laptop("SN-1")).await.unwrap();
    assert_eq!(again.outcome, Outcome::Unchanged);
    let mut edited = laptop("SN-1");
    edited.owner = Some("bob@example.com".into());
    let edit = client.put(&edited).await.unwrap();
    assert_eq!(edit.outcome, Outcome::Updated);
    assert_eq!(edit.changes.len(), 1);
    assert_eq!(edit.changes[0].field, "owner");
    assert_eq!(edit.changes[0].before, "alice@example.com");
    assert_eq!(edit.device.status, DeviceStatus::Active, "status kept");

    let e = events.try_recv().unwrap();
    assert_eq!((e.from, e.to), (None, DeviceStatus::Active));
    assert!(events.try_recv().is_err(), "edits are not trust events");

    lab.record_cert("0a", "SN-1");
    lab.record_cert("0b", "SN-1");
    let q = client
        .set_status("SN-1", DeviceStatus::Quarantined, "EDR alert 4711")
        .await
        .unwrap();
    assert_eq!(q.device.status, DeviceStatus::Quarantined);
    assert_eq!(q.revoked_serials, vec!["0a".to_string(), "0b".to_string()]);
    for serial in ["0a", "0b"] {
        let c = lab.ca.store.certificate(serial).unwrap().unwrap();
        assert_eq!(
            c.revocation_reason,
            Some(6),
            "{serial} held (certificateHold)"
        );
    }
    let e = events.try_recv().unwrap();
    assert_eq!(
        (e.device_id.as_str(), e.from, e.to, e.actor.as_str()),
        (
            "SN-1",
            Some(DeviceStatus::Active),
            DeviceStatus::Quarantined,
            "alice"
        )
    );
    assert_eq!(e.revoked_serials.len(), 2);
    assert_eq!(e.reason, "EDR alert 4711");

    // PUT without status keeps the quarantine.
    let kept = client.put(&laptop("SN-1")).await.unwrap();
    assert_eq!(kept.device.status, DeviceStatus::Quarantined);

    let list = client.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let shown = client.show("SN-1").await.unwrap();
    assert_eq!(shown.history.len(), 2);
    let last = &shown.history[1];
    assert_eq!(
        (
            last.actor.as_str(),
            last.reason.as_str(),
            last.from,
            last.to
        ),
        (
            "alice",
            "EDR alert 4711",
            Some(DeviceStatus::Active),
            DeviceStatus::Quarantined
        )
    );
    assert!(last.at.ends_with('Z'), "RFC 3339 UTC: {}", last.at);

    // Refusals carry the problem document; nothing changes.
    let before = lab.snapshot();
    let e = client.show("SN-404").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.problem().unwrap().kind, "urn:portcullis:admin:not-found");
    let e = client
        .set_status("SN-404", DeviceStatus::Retired, "gone")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    let e = client
        .set_status("SN-1", DeviceStatus::Retired, "  ")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(e.to_string().contains("reason"), "{e}");
    let mut no_reason = laptop("SN-1");
    no_reason.status = Some(DeviceStatus::Active);
    let e = client.put(&no_reason).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(matches!(
        client.show("../etc").await,
        Err(ClientError::InvalidId(_))
    ));
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn client_certificates_from_the_admin_roots_only() {
    let lab = Lab::start().await;
    let (cert, key) = lab.admin_cert.clone();
    let client = lab.client(Credential::ClientCert { cert, key });
    client.put(&laptop("SN-7")).await.unwrap();
    let q = client
        .set_status("SN-7", DeviceStatus::Retired, "disposed")
        .await
        .unwrap();
    assert_eq!(q.device.status, DeviceStatus::Retired);
    let history = lab.ca.store.device_history("SN-7").unwrap();
    assert_eq!(
        history[1].actor, "ops-admin",
        "actor = the certificate's CN"
    );

    // Same CN, another CA: the handshake fails, nothing changes.
    let before = lab.snapshot();
    let (cert, key) = lab.rogue_cert.clone();
    let rogue = lab.client(Credential::ClientCert { cert, key });
    let e = rogue.put(&laptop("SN-8")).await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    let e = rogue
        .set_status("SN-7", DeviceStatus::Active, "x")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    assert_eq!(lab.snapshot(), before);

    // ACME clients present no certificate and still get in.
    let (status, _, dir) = lab.raw(Method::GET, "/acme/directory", &[], "").await;
    assert_eq!(status, 200);
    assert!(dir["newOrder"].as_str().unwrap().starts_with(&lab.base));
}

#[tokio::test]
async fn credentials_are_required_and_failures_say_nothing_more() {
    let lab = Lab::start().await;
    let before = lab.snapshot();
    let body = r#"{"platform":"linux"}"#;
    let json = ("content-type", "application/json");
    let mut answers = Vec::new();
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token-wrong-token".to_string()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
        Some("Bearer".to_string()),
    ] {
        let mut headers = vec![json];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let (status, h, v) = lab
            .raw(Method::PUT, "/admin/v1/devices/SN-1", &headers, body)
            .await;
        assert_problem(status, &h, &v, 401, "unauthorized");
        assert_eq!(
            h.get("www-authenticate").unwrap(),
            "Bearer realm=\"portcullis-admin\""
        );
        answers.push(v);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every failure looks the same"
    );
    // Unknown paths are not revealed without a credential either.
    let (status, h, v) = lab.raw(Method::GET, "/admin/v1/nothing", &[], "").await;
    assert_problem(status, &h, &v, 401, "unauthorized");
    let b = bearer();
    let (status, h, v) = lab
        .raw(
            Method::GET,
            "/admin/v1/nothing",
            &[("authorization", &b)],
            "",
        )
        .await;
    assert_problem(status, &h, &v, 404, "not-found");
    let (status, h, v) = lab
        .raw(
            Method::DELETE,
            "/admin/v1/devices/SN-1",
            &[("authorization", &b)],
            "",
        )
        .await;
    assert_problem(status, &h, &v, 405, "method-not-allowed");
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn malformed_single_device_requests_change_nothing() {
    let lab = Lab::start().await;
    lab.token_client().put(&laptop("SN-1")).await.unwrap();
    let before = lab.snapshot();
    let b = bearer();
    let auth = ("authorization", b.as_str());
    let json = ("content-type", "application/json");
    let big = format!(
        "{{\"owner\":\"{}\"}}",
        "x".repeat(portcullis_ca::admin_api::MAX_BODY)
    );
    for (method, path, headers, body, want, kind) in [
        (
            Method::PUT,
            "/admin/v1/devices/SN-1",
            vec![auth, json],
            r#"{"colour":"red"}"#.to_string(),
            400,
            "malformed",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-1",
            vec![auth, json],
            "{not json".to_string(),
            400,
            "malformed",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-1",
            vec![auth],
            r#"{}"#.to_string(),
            415,
            "unsupported-media-type",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-1",
            vec![auth, json],
            big,
            413,
            "payload-too-large",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN%2F1",
            vec![auth, json],
            r#"{}"#.to_string(),
            422,
            "invalid-device",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-2",
            vec![auth, json],
            r#"{"id":"SN-3"}"#.to_string(),
            422,
            "invalid-device",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-2",
            vec![auth, json],
            r#"{"tags":["a b"]}"#.to_string(),
            422,
            "invalid-device",
        ),
        (
            Method::PUT,
            "/admin/v1/devices/SN-2",
            vec![auth, json],
            "{\"owner\":\"a\\u0007\"}".to_string(),
            422,
            "invalid-device",
        ),
        (
            Method::POST,
            "/admin/v1/devices/SN-1/status",
            vec![auth, json],
            r#"{"status":"retired"}"#.to_string(),
            400,
            "malformed",
        ),
        (
            Method::POST,
            "/admin/v1/devices/SN-1/status",
            vec![auth, json],
            r#"{"status":"lost","reason":"x"}"#.to_string(),
            400,
            "malformed",
        ),
        (
            Method::POST,
            "/admin/v1/devices/SN-1/status",
            vec![auth, json],
            r#"{"status":"retired","reason":"x","force":true}"#.to_string(),
            400,
            "malformed",
        ),
    ] {
        let (status, h, v) = lab.raw(method, path, &headers, body).await;
        assert_problem(status, &h, &v, want, kind);
    }
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn import_dry_run_then_apply_then_update() {
    let lab = Lab::start().await;
    let client = lab.token_client();
    let csv = "serial_number,platform,owner,tags,status\n\
               SN-1,macos,alice@example.com,eng;laptop,active\n\
               SN-2,windows,bob@example.com,ops,\n";
    let dry = client
        .import(csv.as_bytes().to_vec(), ImportFormat::Csv, true)
        .await
        .unwrap();
    assert!(dry.dry_run && !dry.applied);
    assert_eq!(dry.summary.added, 2);
    assert_eq!(dry.added[1].line, 3);
    assert!(
        lab.ca.store.devices().unwrap().is_empty(),
        "dry run wrote nothing"
    );

    let mut events = lab.ca.inventory.subscribe();
    let applied = client
        .import(csv.as_bytes().to_vec(), ImportFormat::Csv, false)
        .await
        .unwrap();
    assert!(applied.applied);
    assert_eq!(applied.summary.added, 2);
    assert_eq!(lab.ca.store.devices().unwrap().len(), 2);
    assert_eq!(events.try_recv().unwrap().device_id, "SN-1");
    assert_eq!(events.try_recv().unwrap().device_id, "SN-2");
    let again = client
        .import(csv.as_bytes().to_vec(), ImportFormat::Csv, false)
        .await
        .unwrap();
    assert_eq!(again.summary.unchanged, 2, "idempotent");

    lab.record_cert("0a", "SN-2");
    let json = r#"[
  {"id": "SN-1", "owner": "carol@example.com"},
  {"id": "SN-2", "status": "quarantined"}
]"#;
    let dry = client
        .import(json.as_bytes().to_vec(), ImportFormat::Json, true)
        .await
        .unwrap();
    assert_eq!(dry.summary.updated, 2);
    assert_eq!(dry.updated[0].changes[0].field, "owner");
    assert_eq!(dry.updated[0].changes[0].before, "alice@example.com");
    assert_eq!(dry.updated[0].changes[0].after, "carol@example.com");
    assert_eq!(dry.updated[1].line, 3);
    assert_eq!(dry.updated[1].revoked_serials, vec!["0a".to_string()]);
    assert_eq!(
        lab.ca.store.certificate("0a").unwrap().unwrap().revoked_at,
        None,
        "a dry run revokes nothing"
    );
    let applied = client
        .import(json.as_bytes().to_vec(), ImportFormat::Json, false)
        .await
        .unwrap();
    assert_eq!(applied.summary.revoked, 1);
    assert!(lab
        .ca
        .store
        .certificate("0a")
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    let sn1 = lab.ca.store.device("SN-1").unwrap().unwrap();
    assert_eq!(
        sn1.platform.as_deref(),
        Some("macos"),
        "unstated fields kept"
    );
    let history = lab.ca.store.device_history("SN-2").unwrap();
    assert_eq!(history.last().unwrap().actor, "alice");
    assert_eq!(history.last().unwrap().reason, "import (json)");
}

#[tokio::test]
async fn malformed_imports_are_refused_whole_with_their_lines() {
    let lab = Lab::start().await;
    lab.token_client().put(&laptop("SN-1")).await.unwrap();
    let before = lab.snapshot();
    let b = bearer();
    let auth = ("authorization", b.as_str());
    for (format, body, line, needle) in [
        (
            "csv",
            "id,owner\nSN-2,bob\nSN-3,\"carol\nSN-4,dave\n",
            3,
            "unbalanced quotes",
        ),
        ("csv", "platform,owner\nmacos,bob\n", 1, "no `id` column"),
        (
            "csv",
            "id,status\nSN-2,active\nSN-3,stolen\n",
            3,
            "`stolen` is not a device status",
        ),
        (
            "csv",
            "id,owner\nSN-2,a\nSN-3,b\nSN-2,c\n",
            4,
            "duplicate id `SN-2` (first on line 2)",
        ),
        (
            "csv",
            "id,owner,cost_center\nSN-2,a,42\n",
            1,
            "unknown column `cost_center`",
        ),
        (
            "json",
            "[\n{\"id\": \"SN-2\"},\n{\"id\": \"SN-3\",}\n]",
            3,
            "invalid JSON",
        ),
        (
            "json",
            "[\n{\"id\": \"SN-2\"},\n{\"id\": \"SN-3\", \"colour\": 1}\n]",
            3,
            "unknown field `colour`",
        ),
    ] {
        // A good row next to the bad one is not applied either.
        let (status, h, v) = lab
            .raw(
                Method::POST,
                &format!("/admin/v1/import?format={format}&dry_run=false"),
                &[auth],
                body.to_string(),
            )
            .await;
        assert_problem(status, &h, &v, 422, "invalid-import");
        let errors = v["errors"].as_array().expect("errors listed");
        assert!(
            errors
                .iter()
                .any(|e| e["line"] == line && e["message"].as_str().unwrap().contains(needle)),
            "{format} {body:?}: {v}"
        );
        assert!(v["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was applied"));
    }
    // Through the client: the row errors are in the error.
    let e = lab
        .token_client()
        .import(b"id,status\nSN-9,lost\n".to_vec(), ImportFormat::Csv, false)
        .await
        .unwrap_err();
    let p = e.problem().unwrap();
    assert_eq!((p.status, p.errors[0].line), (422, 2));
    assert!(e.to_string().contains("line 2, status"), "{e}");

    // Oversized, bad format, unknown query parameter.
    let huge = vec![b'a'; portcullis_ca::admin_api::MAX_IMPORT_BODY + 1];
    let (status, h, v) = lab
        .raw(Method::POST, "/admin/v1/import?format=csv", &[auth], huge)
        .await;
    assert_problem(status, &h, &v, 413, "payload-too-large");
    let (status, h, v) = lab
        .raw(
            Method::POST,
            "/admin/v1/import?format=xlsx",
            &[auth],
            "id\nA\n",
        )
        .await;
    assert_problem(status, &h, &v, 400, "malformed");
    let (status, h, v) = lab
        .raw(
            Method::POST,
            "/admin/v1/import?format=csv&force=1",
            &[auth],
            "id\nA\n",
        )
        .await;
    assert_problem(status, &h, &v, 400, "malformed");
    let (status, h, v) = lab
        .raw(
            Method::POST,
            "/admin/v1/import?format=csv&dry_run=maybe",
            &[auth],
            "id\nA\n",
        )
        .await;
    assert_problem(status, &h, &v, 400, "malformed");
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn bad_credential_files_stop_the_ca_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |admin: AdminApiSettings| {
        let mut s = CaSettings::new(
            dir.path().join("ca"),
            AcmeConfig::new("https://127.0.0.1:1"),
        );
        s.admin_api = admin;
        s
    };
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Ca::open(
            settings(AdminApiSettings {
                tokens_file: Some(tokens.clone()),
                client_roots: vec![],
            }),
            Arc::new(SystemClock),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CaError::AdminApi(_)), "{e}");
        assert!(e.to_string().contains("mode 0644"), "{e}");
        assert!(!e.to_string().contains(TOKEN));
    }
    // The CA's own bundle as admin roots would make every device an admin.
    let (ca, _) = Ca::open(settings(AdminApiSettings::default()), Arc::new(SystemClock))
        .await
        .unwrap();
    assert!(ca.admin.is_none(), "off unless configured");
    let bundle = ca.bundle_path().to_path_buf();
    drop(ca);
    let e = Ca::open(
        settings(AdminApiSettings {
            tokens_file: None,
            client_roots: vec![bundle],
        }),
        Arc::new(SystemClock),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("own root or intermediate"), "{e}");
}

/// `curl` with its exit code, HTTP status and body.
fn curl(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&lab.bundle)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        body.to_string(),
    )
}

fn have_curl() -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("curl is required in CI for the admin API interop test");
    }
    eprintln!("\n\n!!!! SKIPPING the curl admin API test: no `curl` binary !!!!\n\n");
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_a_token_and_with_a_client_certificate() {
    if !have_curl() {
        return;
    }
    let lab = Lab::start().await;
    let url = |p: &str| format!("{}{p}", lab.base);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let run = |args: Vec<String>| {
        let lab = &lab;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(lab, &args)
    };

    // Token: create, import, read.
    let (rc, code, body) = run(vec![
        "-X".into(),
        "PUT".into(),
        "-H".into(),
        auth.clone(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data".into(),
        r#"{"platform":"linux","tags":["ops"]}"#.into(),
        url("/admin/v1/devices/SN-C1"),
    ]);
    assert_eq!((rc, code.as_str()), (0, "201"), "{body}");
    let csv_path = lab.dir.path().join("export.csv");
    std::fs::write(&csv_path, "id,platform\nSN-C2,macos\n").unwrap();
    let (rc, code, body) = run(vec![
        "-H".into(),
        auth.clone(),
        "--data-binary".into(),
        format!("@{}", csv_path.display()),
        url("/admin/v1/import?format=csv&dry_run=false"),
    ]);
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let (rc, code, body) = run(vec!["-H".into(), auth.clone(), url("/admin/v1/devices")]);
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);

    // mTLS: quarantine with the admin certificate.
    let (cert, key) = &lab.admin_cert;
    let (rc, code, body) = run(vec![
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data".into(),
        r#"{"status":"quarantined","reason":"curl test"}"#.into(),
        url("/admin/v1/devices/SN-C1/status"),
    ]);
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["device"]["status"], "quarantined");
    assert_eq!(
        lab.ca.store.device_history("SN-C1").unwrap()[1].actor,
        "ops-admin"
    );

    // Refusals: no credential (401), a certificate of another CA (handshake fails).
    let before = lab.snapshot();
    let (rc, code, body) = run(vec![url("/admin/v1/devices")]);
    assert_eq!((rc, code.as_str()), (0, "401"), "{body}");
    let (cert, key) = &lab.rogue_cert;
    let (rc, _, _) = run(vec![
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data".into(),
        r#"{"status":"active","reason":"let me in"}"#.into(),
        url("/admin/v1/devices/SN-C1/status"),
    ]);
    assert_ne!(rc, 0, "curl must fail the TLS handshake");
    assert_eq!(lab.snapshot(), before);

    // ACME without a client certificate.
    let (rc, code, _) = run(vec![url("/acme/directory")]);
    assert_eq!((rc, code.as_str()), (0, "200"));
}

#[tokio::test]
async fn an_operator_pins_and_unbinds_a_devices_tpm_endorsement_key() {
    let lab = Lab::start().await;
    let client = lab.token_client();
    client.put(&laptop("SN-1")).await.unwrap();
    client.put(&laptop("SN-2")).await.unwrap();
    let auth = bearer();
    let json = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let ek = "ab".repeat(32);
    let pin = |hash: &str| {
        format!(r#"{{"ek_sha256": "{hash}", "reason": "TPM from the asset register"}}"#)
    };

    let (status, _, body) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/SN-1/eks",
            &json,
            pin(&ek.to_uppercase()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["eks"][0]["ek_sha256"], ek, "normalised to lowercase");
    assert_eq!(body["eks"][0]["origin"], "pinned");
    let (status, _, body) = lab
        .raw(
            Method::GET,
            "/admin/v1/devices/SN-1/eks",
            &json[..1],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (status, body["eks"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    // One TPM, one device.
    let (status, headers, body) = lab
        .raw(Method::POST, "/admin/v1/devices/SN-2/eks", &json, pin(&ek))
        .await;
    assert_problem(status, &headers, &body, 409, "conflict");
    // Malformed, unknown device, no reason, no credential.
    let (status, headers, body) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/SN-1/eks",
            &json,
            pin("abc"),
        )
        .await;
    assert_problem(status, &headers, &body, 422, "invalid-device");
    let (status, headers, body) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/NOPE/eks",
            &json,
            pin(&"cd".repeat(32)),
        )
        .await;
    assert_problem(status, &headers, &body, 404, "not-found");
    let (status, headers, body) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/SN-1/eks",
            &json,
            format!(r#"{{"ek_sha256": "{ek}", "reason": " "}}"#),
        )
        .await;
    assert_problem(status, &headers, &body, 422, "invalid-device");
    let (status, _, _) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/SN-1/eks",
            &json[1..],
            pin(&ek),
        )
        .await;
    assert_eq!(status, 401);

    // The TPM was replaced: unbind, and the device may bind a new one.
    let (status, _, body) = lab
        .raw(
            Method::POST,
            "/admin/v1/devices/SN-1/eks/unbind",
            &json,
            r#"{"reason": "mainboard swapped"}"#,
        )
        .await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    assert!(lab.ca.store.device_eks("SN-1").unwrap().is_empty());
    let (status, _, _) = lab
        .raw(Method::POST, "/admin/v1/devices/SN-2/eks", &json, pin(&ek))
        .await;
    assert_eq!(status, 200, "the EK is free again");
}
