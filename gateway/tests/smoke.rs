//! Smoke test of the gateway in-process: rcgen PKI, an echo upstream, real TLS clients with
//! device certificates. The end-to-end suite with curl and openssl lives in the root `tests/`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_config::{
    AssertionConfig, AuditConfig, ClientAuth, Config, Criterion, GatewayConfig, IdentityHeader,
    Limits, RouteConfig, TrustConfig,
};
use portcullis_gateway::prometheus::Registry;
use portcullis_gateway::{CancellationToken, Gateway, JWKS_PATH};
use portcullis_policy::{DeviceRecord, DeviceStatus, StatusSnapshot, StatusStore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_DOMAIN: &str = "portcullis.local";

struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, client: bool) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn device(ca: &Ca, id: &str) -> Leaf {
    let uri = format!("spiffe://{TRUST_DOMAIN}/device/{id}");
    leaf(
        ca,
        id,
        vec![SanType::URI(uri.as_str().try_into().expect("ia5"))],
        true,
    )
}

struct Fixture {
    dir: PathBuf,
    root: Ca,
    audit: PathBuf,
    upstream: SocketAddr,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("pc-smoke-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let root = ca("Smoke Root");
    let server = leaf(
        &root,
        "localhost",
        vec![SanType::DnsName("localhost".try_into().expect("ia5"))],
        false,
    );
    std::fs::write(dir.join("root.pem"), &root.cert_pem).expect("write");
    std::fs::write(dir.join("server.pem"), &server.cert_pem).expect("write");
    std::fs::write(dir.join("server.key"), &server.key_pem).expect("write");
    Fixture {
        audit: dir.join("audit.log"),
        dir,
        root,
        upstream: echo_upstream().await,
    }
}

fn config(f: &Fixture, client_auth: ClientAuth, routes: Vec<RouteConfig>) -> Config {
    Config {
        trust: TrustConfig {
            trust_domain: TRUST_DOMAIN.into(),
            roots: vec![f.dir.join("root.pem")],
            ..TrustConfig::default()
        },
        audit: AuditConfig {
            sink: f.audit.to_string_lossy().into_owned(),
        },
        admin: portcullis_config::AdminConfig { listen: None },
        gateway: Some(GatewayConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: f.dir.join("server.pem"),
            key: f.dir.join("server.key"),
            client_auth,
            worker_threads: 0,
            limits: Limits {
                max_body_bytes: 1024,
                ..Limits::default()
            },
            assertion: AssertionConfig {
                issuer: "https://gw.test".into(),
                ttl: Duration::from_secs(60),
                key_dir: None,
            },
            routes,
        }),
        ..Config::default()
    }
}

fn route(f: &Fixture, name: &str, prefix: &str, allow: Vec<Criterion>) -> RouteConfig {
    RouteConfig {
        name: Some(name.into()),
        from: "*".into(),
        path_prefix: prefix.into(),
        to: format!("http://{}", f.upstream),
        upstream_ca: None,
        upstream_cert: None,
        upstream_key: None,
        preserve_host: false,
        identity_headers: vec![
            IdentityHeader::Plain,
            IdentityHeader::Xfcc,
            IdentityHeader::ClientCert,
            IdentityHeader::Assertion,
        ],
        allow,
        deny: vec![],
    }
}

fn record(id: &str, status: DeviceStatus) -> (String, DeviceRecord) {
    (
        id.to_string(),
        DeviceRecord {
            id: id.into(),
            status,
            tags: ["eng".to_string()].into_iter().collect(),
            owner: Some(format!("{id}@example.com")),
            platform: Some("linux".into()),
        },
    )
}

fn inventory(devices: &[(&str, DeviceStatus)]) -> StatusSnapshot {
    let mut snap =
        StatusSnapshot::from_records(devices.iter().map(|(id, s)| record(id, *s).1), Vec::new());
    snap.generation = 1;
    snap.produced_at = Some(std::time::SystemTime::now());
    snap
}

struct Running {
    gateway: Gateway,
    registry: Registry,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
    fn metric(&self, name: &str) -> String {
        use portcullis_gateway::prometheus::Encoder;
        let mut out = Vec::new();
        let _ = portcullis_gateway::prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn start(cfg: &Config, status: Arc<StatusStore>) -> Running {
    let registry = Registry::new();
    let gateway = Gateway::new(cfg, status, &registry).expect("gateway");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    Running {
        gateway,
        registry,
        shutdown,
        task,
    }
}

// ---------- the echo upstream ----------

async fn echo(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().expect("v"));
        resp.headers_mut()
            .insert(http::header::UPGRADE, "echo".parse().expect("v"));
        return Ok(resp);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let json =
        serde_json::json!({ "version": version, "uri": uri, "headers": headers, "body_len": body });
    Ok(Response::new(Full::new(Bytes::from(json.to_string()))))
}

async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(echo))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

// ---------- clients ----------

fn tls_client(root: &Ca, device: Option<&Leaf>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.cert_der.clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match device {
        Some(d) => builder
            .with_client_auth_cert(
                vec![d.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(d.key_der.clone())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client(root: &Ca, device: Option<&Leaf>, h2: bool) -> HttpClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client(root, device, &[]))
        .https_only();
    if h2 {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(builder.enable_http2().build())
    } else {
        Client::builder(TokioExecutor::new()).build(builder.enable_http1().build())
    }
}

async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let mut req = Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("req"))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

fn upstream_headers(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("echo json")
}

fn verify_assertion(jwks: &[u8], jwt: &str, aud: &str) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(jwt).expect("jwt header");
    let jwks: serde_json::Value = serde_json::from_slice(jwks).expect("jwks");
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| Some(k["kid"].as_str().unwrap_or("")) == header.kid.as_deref())
        .expect("kid in jwks");
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().expect("x"),
        key["y"].as_str().expect("y"),
    )
    .expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&["https://gw.test"]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &validation)
        .expect("assertion verifies")
        .claims
}

async fn audit_lines(path: &Path, at_least: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= at_least {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("audit log has fewer than {at_least} lines");
}

/// Waits (up to 2 s) for an audit line that satisfies `pred`; panics with the log otherwise.
async fn audit_line_where(path: &Path, pred: impl Fn(&serde_json::Value) -> bool) {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| pred(&l))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no matching audit line in:\n{text}");
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_device_reaches_upstream_with_identity_and_others_are_refused() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[
        ("SN-ACTIVE", DeviceStatus::Active),
        ("SN-QUAR", DeviceStatus::Quarantined),
    ])));
    let cfg = config(
        &f,
        ClientAuth::Required,
        vec![route(&f, "app", "/", vec![Criterion::Accept(true)])],
    );
    let gw = start(&cfg, status.clone());
    let addr = gw.gateway.local_addr();

    let active = device(&f.root, "SN-ACTIVE");
    let c = client(&f.root, Some(&active), false);
    let (code, headers, body) = get(
        &c,
        addr,
        "/hello?x=1",
        &[
            ("X-Portcullis-Device-Id", "evil"),
            ("x-portcullis-device-id", "evil2"),
            ("X-PORTCULLIS-STATUS", "active"),
            ("X-Forwarded-Client-Cert", "Hash=00"),
            ("Client-Cert", ":AAAA:"),
            ("X-Forwarded-For", "10.9.9.9"),
            ("X-Portcullis-Assertion", "forged"),
        ],
    )
    .await
    .expect("request");
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("x-request-id"));
    let echo = upstream_headers(&body);
    let h = &echo["headers"];
    assert_eq!(echo["uri"], "/hello?x=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        h["x-portcullis-device-id"],
        serde_json::json!(["SN-ACTIVE"])
    );
    assert_eq!(h["x-portcullis-status"], serde_json::json!(["active"]));
    assert_eq!(h["x-portcullis-tags"], serde_json::json!(["eng"]));
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(h["host"], serde_json::json!([f.upstream.to_string()]));
    let xfcc = h["x-forwarded-client-cert"][0].as_str().expect("xfcc");
    assert!(
        xfcc.starts_with("Hash=") && !xfcc.starts_with("Hash=00"),
        "{xfcc}"
    );
    assert!(xfcc.contains(&format!("URI=spiffe://{TRUST_DOMAIN}/device/SN-ACTIVE")));
    let client_cert = h["client-cert"][0].as_str().expect("client-cert");
    assert_ne!(client_cert, ":AAAA:");
    assert_eq!(
        h["x-portcullis-assertion"].as_array().map(Vec::len),
        Some(1)
    );
    let jwt = h["x-portcullis-assertion"][0].as_str().expect("jwt");

    // The JWKS is served on the gateway listener; the assertion verifies against it.
    let (code, headers, jwks) = get(&c, addr, JWKS_PATH, &[]).await.expect("jwks");
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    let claims = verify_assertion(&jwks, jwt, "localhost");
    assert_eq!(claims["sub"], "SN-ACTIVE");
    assert_eq!(claims["status"], "active");

    // Quarantined device: 403 with the reason code, detail only in the audit log.
    let quarantined = device(&f.root, "SN-QUAR");
    let q = client(&f.root, Some(&quarantined), false);
    let (code, headers, body) = get(&q, addr, "/hello", &[]).await.expect("request");
    assert_eq!(code, StatusCode::FORBIDDEN);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with("denied: device_quarantined\nrequest id: "),
        "{text}"
    );
    assert!(headers["proxy-status"]
        .to_str()
        .unwrap_or("")
        .contains("error=http_request_denied"));

    // Unknown device.
    let ghost = device(&f.root, "SN-GHOST");
    let g = client(&f.root, Some(&ghost), false);
    let (code, _, body) = get(&g, addr, "/", &[]).await.expect("request");
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).starts_with("denied: unknown_device"));

    // A certificate from another CA never completes the handshake.
    let other = ca("Other Root");
    let stranger = device(&other, "SN-ACTIVE");
    let s = client(&f.root, Some(&stranger), false);
    assert!(get(&s, addr, "/", &[]).await.is_err());
    // No certificate on a required listener: refused at the TLS layer.
    let anon = client(&f.root, None, false);
    assert!(get(&anon, addr, "/", &[]).await.is_err());
    // The client can see the refusal (a TLS 1.3 alert after its Finished) before the
    // server's handshake task has counted it: wait for the count.
    let counted = async {
        while !gw
            .metric("portcullis_handshake_failures_total")
            .contains("reason=\"no_certificate\"")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), counted)
        .await
        .expect("the refused handshake is counted");

    // HTTP/2 client: works, and the upstream gets HTTP/1.1.
    let c2 = client(&f.root, Some(&active), true);
    let (code, _, body) = get(&c2, addr, "/h2", &[("x-portcullis-device-id", "evil")])
        .await
        .expect("h2 request");
    assert_eq!(code, StatusCode::OK);
    let echo = upstream_headers(&body);
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echo["headers"]["x-portcullis-device-id"],
        serde_json::json!(["SN-ACTIVE"])
    );
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!([f.upstream.to_string()])
    );

    // Audit: one line per decision.
    let lines = audit_lines(&f.audit, 4).await;
    let allow = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("an allow line");
    assert_eq!(allow["device_id"], "SN-ACTIVE");
    assert_eq!(allow["upstream_status"], 200);
    assert_eq!(allow["route"], "app");
    let deny = lines
        .iter()
        .find(|l| l["reason"] == "device_quarantined")
        .expect("a quarantine line");
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["path"], "/hello");
    assert!(gw
        .metric("portcullis_requests_total")
        .contains("code=\"403\""));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_cuts_websocket_tunnels_and_keepalive_connections_within_a_second() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[(
        "SN-WS",
        DeviceStatus::Active,
    )])));
    let cfg = config(
        &f,
        ClientAuth::Required,
        vec![route(&f, "app", "/", vec![Criterion::Accept(true)])],
    );
    let gw = start(&cfg, status.clone());
    let addr = gw.gateway.local_addr();
    let dev = device(&f.root, "SN-WS");

    // A raw TLS connection doing an HTTP/1.1 Upgrade.
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client(&f.root, Some(&dev), &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tls.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "connection closed during the 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    // A keep-alive HTTP/1.1 connection of the same device.
    let c = client(&f.root, Some(&dev), false);
    assert_eq!(
        get(&c, addr, "/", &[]).await.expect("req").0,
        StatusCode::OK
    );

    let started = std::time::Instant::now();
    status.publish(inventory(&[("SN-WS", DeviceStatus::Quarantined)]));
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(1), tls.read(&mut rest))
        .await
        .expect("tunnel cut within one second");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // The metric counts both cuts (the keep-alive one may land a moment after the tunnel's:
    // wait for it, so that the request below cannot race it on the old connection).
    for _ in 0..50 {
        if gw
            .metric("portcullis_connections_cut_total")
            .ends_with(" 2")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.metric("portcullis_connections_cut_total")
            .lines()
            .last()
            .unwrap_or(""),
        "portcullis_connections_cut_total 2"
    );
    // The next request, on a fresh connection, is refused.
    let fresh = client(&f.root, Some(&dev), false);
    let (code, _, _) = get(&fresh, addr, "/", &[]).await.expect("req");
    assert_eq!(code, StatusCode::FORBIDDEN);
    drop(c);
    audit_line_where(&f.audit, |l| {
        l["event"] == "connection_cut" && l["reason"] == "device_quarantined"
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_listener_no_certificate_gets_496_and_public_route_works() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[])));
    let cfg = config(
        &f,
        ClientAuth::Optional,
        vec![
            route(&f, "app", "/", vec![Criterion::Authenticated(true)]),
            route(&f, "health", "/health", vec![Criterion::Accept(true)]),
        ],
    );
    let gw = start(&cfg, status);
    let addr = gw.gateway.local_addr();
    let anon = client(&f.root, None, false);
    let (code, _, body) = get(&anon, addr, "/", &[]).await.expect("req");
    assert_eq!(code.as_u16(), 496, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("denied: no_certificate"));
    let (code, _, body) = get(
        &anon,
        addr,
        "/health",
        &[("x-portcullis-device-id", "evil")],
    )
    .await
    .expect("req");
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo = upstream_headers(&body);
    assert!(echo["headers"].get("x-portcullis-device-id").is_none());
    // JWKS without a certificate.
    let (code, _, _) = get(&anon, addr, JWKS_PATH, &[]).await.expect("jwks");
    assert_eq!(code, StatusCode::OK);
    // Misc: dot-segments are refused, unknown paths on no route → 404 handled by `*` here.
    let (code, _, _) = get(&anon, addr, "/health/../admin", &[])
        .await
        .expect("req");
    assert_eq!(code, StatusCode::BAD_REQUEST);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_is_refused_and_the_old_config_serves() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[(
        "SN-1",
        DeviceStatus::Active,
    )])));
    let cfg = config(
        &f,
        ClientAuth::Required,
        vec![route(&f, "app", "/", vec![Criterion::Accept(true)])],
    );
    let gw = start(&cfg, status);
    let addr = gw.gateway.local_addr();
    let dev = device(&f.root, "SN-1");
    let c = client(&f.root, Some(&dev), false);
    assert_eq!(
        get(&c, addr, "/", &[]).await.expect("req").0,
        StatusCode::OK
    );

    let mut broken = cfg.clone();
    if let Some(g) = broken.gateway.as_mut() {
        g.routes[0].to = "htp://nowhere".into();
    }
    assert!(Gateway::check(&cfg).is_ok());
    assert!(Gateway::check(&broken).is_err());
    let err = gw.gateway.reload(&broken).expect_err("refused");
    assert!(format!("{err:#}").contains("route `app`"), "{err:#}");
    assert_eq!(
        get(&c, addr, "/", &[]).await.expect("req").0,
        StatusCode::OK
    );

    // A good reload applies: the route now denies everything.
    let mut stricter = cfg.clone();
    if let Some(g) = stricter.gateway.as_mut() {
        g.routes[0].allow = vec![Criterion::Tag("nope".into())];
    }
    gw.gateway.reload(&stricter).expect("reload");
    let (code, _, _) = get(&c, addr, "/", &[]).await.expect("req");
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Body limit (1024 bytes in this config) → 413, by Content-Length.
    let big = Request::post(format!("https://localhost:{}/upload", addr.port()))
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .expect("req");
    gw.gateway.reload(&cfg).expect("reload back");
    let resp = c.request(big).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gw.gateway.readiness(), Ok(()));

    // Replacing the trust anchors cuts live connections whose chain no longer verifies.
    let other = ca("Replacement Root");
    std::fs::write(f.dir.join("other-root.pem"), &other.cert_pem).expect("write");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client(&f.root, Some(&dev), &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 12];
    tls.read_exact(&mut buf).await.expect("response");
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut moved = cfg.clone();
    moved.trust.roots = vec![f.dir.join("other-root.pem")];
    gw.gateway.reload(&moved).expect("reload with new anchors");
    let mut rest = vec![0u8; 65536];
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match tls.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection not cut after the anchors changed"
    );
    // The cut line is written by another task after the earlier requests' lines: wait for
    // that line itself, not for a count the earlier lines already reach.
    audit_line_where(&f.audit, |l| {
        l["event"] == "connection_cut" && l["reason"] == "untrusted_issuer"
    })
    .await;
    // New handshakes with the old device certificate fail.
    let fresh = client(&f.root, Some(&dev), false);
    assert!(get(&fresh, addr, "/", &[]).await.is_err());
    gw.stop().await;
}

// ---------- upstream errors, limits, https upstreams ----------

/// An upstream that accepts and never answers.
async fn silent_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

/// Sends a raw HTTP/1.1 request over mTLS and returns the response head.
async fn raw_request(root: &Ca, dev: &Leaf, addr: SocketAddr, request: &[u8]) -> String {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client(root, Some(dev), &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    tls.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_504_and_streamed_bodies_to_413() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[(
        "SN-1",
        DeviceStatus::Active,
    )])));
    let mut silent = route(&f, "silent", "/silent", vec![Criterion::Accept(true)]);
    silent.to = format!("http://{}", silent_upstream().await);
    let mut down = route(&f, "down", "/down", vec![Criterion::Accept(true)]);
    down.to = format!("http://{}", closed_port().await);
    let mut cfg = config(
        &f,
        ClientAuth::Required,
        vec![
            route(&f, "app", "/", vec![Criterion::Accept(true)]),
            silent,
            down,
            RouteConfig {
                from: "other.example".into(),
                ..route(&f, "other", "/", vec![Criterion::Accept(true)])
            },
        ],
    );
    if let Some(g) = cfg.gateway.as_mut() {
        g.limits.upstream_timeout = Duration::from_millis(300);
    }
    let gw = start(&cfg, status);
    let addr = gw.gateway.local_addr();
    let dev = device(&f.root, "SN-1");
    let c = client(&f.root, Some(&dev), false);

    let (code, headers, _) = get(&c, addr, "/down", &[]).await.expect("req");
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers["proxy-status"],
        "portcullis; error=connection_refused; details=\"upstream_connect_failed\""
    );
    let (code, headers, _) = get(&c, addr, "/silent", &[]).await.expect("req");
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
    assert!(headers["proxy-status"]
        .to_str()
        .unwrap_or("")
        .contains("error=http_response_timeout"));

    // A chunked body (no Content-Length) over the 1024-byte limit is cut while streaming.
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"800\r\n");
    req.extend_from_slice(&[b'x'; 0x800]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = raw_request(&f.root, &dev, addr, &req).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Under the limit, it streams through.
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"100\r\n");
    req.extend_from_slice(&[b'x'; 0x100]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = raw_request(&f.root, &dev, addr, &req).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // SNI `localhost` with a Host that selects another route → 421 (RFC 9110 §15.5.20).
    let head = raw_request(
        &f.root,
        &dev,
        addr,
        b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    // A Host that the SNI's route serves too is fine.
    let head = raw_request(
        &f.root,
        &dev,
        addr,
        b"GET / HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = audit_lines(&f.audit, 6).await;
    let failed = lines
        .iter()
        .find(|l| l["reason"] == "upstream_connect_failed")
        .expect("audited");
    assert_eq!(failed["decision"], "allow");
    assert_eq!(failed["route"], "down");
    gw.stop().await;
}

/// An upstream that answers every request head with `answer` and keeps the connection open.
async fn canned_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        seen.clear();
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shaped_upstream_responses_become_502() {
    let f = fixture().await;
    let status = Arc::new(StatusStore::new(inventory(&[(
        "SN-1",
        DeviceStatus::Active,
    )])));
    let shapes: [(&str, &'static [u8]); 3] = [
        (
            "/both",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "/lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        (
            "/coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz",
        ),
    ];
    let mut routes = Vec::new();
    for (prefix, answer) in shapes {
        let mut r = route(&f, &prefix[1..], prefix, vec![Criterion::Accept(true)]);
        r.to = format!("http://{}", canned_upstream(answer).await);
        routes.push(r);
    }
    let cfg = config(&f, ClientAuth::Required, routes);
    let gw = start(&cfg, status);
    let addr = gw.gateway.local_addr();
    let dev = device(&f.root, "SN-1");
    let c = client(&f.root, Some(&dev), false);
    for (prefix, _) in shapes {
        let (code, headers, _) = get(&c, addr, prefix, &[]).await.expect("req");
        assert_eq!(code, StatusCode::BAD_GATEWAY, "{prefix}");
        assert_eq!(
            headers["proxy-status"],
            "portcullis; error=http_protocol_error; details=\"upstream_error\"",
            "{prefix}"
        );
    }
    gw.stop().await;
}

/// An https upstream that requires a client certificate and echoes whether it saw one.
async fn tls_upstream(f: &Fixture, upstream_ca: &Ca) -> SocketAddr {
    let server = leaf(
        upstream_ca,
        "localhost",
        vec![SanType::DnsName("localhost".try_into().expect("ia5"))],
        false,
    );
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(f.root.cert_der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone())),
        )
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let saw = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let body = serde_json::json!({
                            "client_certs": saw,
                            "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_its_own_ca_and_a_gateway_client_certificate() {
    let f = fixture().await;
    let upstream_ca = ca("Upstream CA");
    let upstream = tls_upstream(&f, &upstream_ca).await;
    std::fs::write(f.dir.join("upstream-ca.pem"), &upstream_ca.cert_pem).expect("write");
    let gw_client = leaf(&f.root, "gateway", vec![], true);
    std::fs::write(f.dir.join("gw-client.pem"), &gw_client.cert_pem).expect("write");
    std::fs::write(f.dir.join("gw-client.key"), &gw_client.key_pem).expect("write");

    let status = Arc::new(StatusStore::new(inventory(&[(
        "SN-1",
        DeviceStatus::Active,
    )])));
    let mut secure = route(&f, "secure", "/", vec![Criterion::Accept(true)]);
    secure.to = format!("https://localhost:{}", upstream.port());
    secure.upstream_ca = Some(f.dir.join("upstream-ca.pem"));
    secure.upstream_cert = Some(f.dir.join("gw-client.pem"));
    secure.upstream_key = Some(f.dir.join("gw-client.key"));
    let mut no_client_cert = route(&f, "anon", "/anon", vec![Criterion::Accept(true)]);
    no_client_cert.to = secure.to.clone();
    no_client_cert.upstream_ca = secure.upstream_ca.clone();
    let mut wrong_ca = route(&f, "wrong-ca", "/wrong", vec![Criterion::Accept(true)]);
    wrong_ca.to = secure.to.clone();
    wrong_ca.upstream_ca = Some(f.dir.join("root.pem"));
    let cfg = config(
        &f,
        ClientAuth::Required,
        vec![secure, no_client_cert, wrong_ca],
    );
    let gw = start(&cfg, status);
    let addr = gw.gateway.local_addr();
    let dev = device(&f.root, "SN-1");
    let c = client(&f.root, Some(&dev), true);

    let (code, _, body) = get(&c, addr, "/x", &[]).await.expect("req");
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(echo["client_certs"], 1);
    assert_eq!(echo["host"], format!("localhost:{}", upstream.port()));

    // The upstream refuses a gateway without a client certificate.
    let (code, headers, _) = get(&c, addr, "/anon", &[]).await.expect("req");
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert!(headers["proxy-status"]
        .to_str()
        .unwrap_or("")
        .contains("error=tls_protocol_error"));
    // An upstream certificate from a CA the route does not trust.
    let (code, headers, _) = get(&c, addr, "/wrong", &[]).await.expect("req");
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert!(
        headers["proxy-status"]
            .to_str()
            .unwrap_or("")
            .contains("error=tls_certificate_error"),
        "{:?}",
        headers["proxy-status"]
    );
    gw.stop().await;
}
