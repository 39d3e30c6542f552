//! Test harness: a CA in a temporary directory with a manual clock, its ACME router driven
//! in-process, and a minimal hand-rolled ACME client whose every byte the tests control (so
//! they can break the rules one at a time).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use portcullis_ca::acme::challenge::{
    ChallengeValidator, ValidationFuture, ValidationRequest, Validators,
};
use portcullis_ca::acme::model::Identifier;
use portcullis_ca::acme::{AcmeConfig, AcmeServer, Http01Config};
use portcullis_ca::clock::{Clock, ManualClock};
use portcullis_ca::pki::{Authority, CaPaths, InitOptions, LifetimePolicy};
use portcullis_ca::store::SqliteStore;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const BASE: &str = "http://ca.test";

/// A challenge validator that accepts every answer: protocol tests are about the ACME state
/// machine, not about reaching an HTTP server (the instant-acme test does that for real).
pub struct AcceptAll;

impl ChallengeValidator for AcceptAll {
    fn kind(&self) -> &'static str {
        "http-01"
    }
    fn applies_to(&self, identifier: &Identifier) -> bool {
        identifier.kind == "dns"
    }
    fn validate(&self, _request: ValidationRequest) -> ValidationFuture {
        Box::pin(async { Ok(()) })
    }
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub paths: CaPaths,
    pub db_path: PathBuf,
    pub clock: Arc<ManualClock>,
    pub store: Arc<SqliteStore>,
    pub pki: Arc<Authority>,
    pub server: Arc<AcmeServer>,
    pub router: Router,
    pub config: AcmeConfig,
}

pub fn lab_config(base: &str) -> AcmeConfig {
    let mut config = AcmeConfig::new(base);
    config.http01 = Some(Http01Config {
        allowed_names: vec!["*.lab.example".into(), "svc.example.com".into()],
        ..Http01Config::default()
    });
    config
}

impl Lab {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut AcmeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("pki"));
        let clock = Arc::new(ManualClock::starting_now());
        Authority::init(&paths, &InitOptions::default(), clock.now()).unwrap();
        let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
        let db_path = dir.path().join("ca.db");
        let store = Arc::new(SqliteStore::open(&db_path).unwrap());
        let mut config = lab_config(BASE);
        tweak(&mut config);
        let mut validators = Validators::default();
        validators.register(Arc::new(AcceptAll));
        let server = AcmeServer::with_validators(
            config.clone(),
            store.clone(),
            pki.clone(),
            clock.clone(),
            validators,
        );
        let router = server.router();
        Self {
            dir,
            paths,
            db_path,
            clock,
            store,
            pki,
            server,
            router,
            config,
        }
    }

    /// A second server on the same files: what a restart after a crash looks like.
    pub fn restart(&self) -> (Arc<AcmeServer>, Router) {
        let store = Arc::new(SqliteStore::open(&self.db_path).unwrap());
        let mut validators = Validators::default();
        validators.register(Arc::new(AcceptAll));
        let server = AcmeServer::with_validators(
            self.config.clone(),
            store,
            self.pki.clone(),
            self.clock.clone(),
            validators,
        );
        let router = server.router();
        (server, router)
    }

    pub async fn call(&self, req: Request<Body>) -> Resp {
        call(&self.router, req).await
    }

    pub async fn nonce(&self) -> String {
        let r = self
            .call(
                Request::head(format!("{BASE}/acme/new-nonce"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        r.nonce().expect("newNonce gives a nonce")
    }

    /// Raw POST of `body` as application/jose+json.
    pub async fn post_raw(&self, url: &str, body: Vec<u8>) -> Resp {
        self.call(
            Request::builder()
                .method(Method::POST)
                .uri(url)
                .header("content-type", "application/jose+json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    /// Every row of the ACME tables, to prove a refused request changed nothing.
    pub fn snapshot(&self) -> String {
        let conn = rusqlite::Connection::open(&self.db_path).unwrap();
        let mut out = String::new();
        for table in [
            "accounts",
            "orders",
            "authorizations",
            "challenges",
            "certificates",
        ] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    let mut row = Vec::new();
                    for i in 0..n {
                        row.push(format!("{:?}", r.get_ref(i)?));
                    }
                    Ok(row.join("|"))
                })
                .unwrap();
            for row in rows {
                out.push_str(table);
                out.push(':');
                out.push_str(&row.unwrap());
                out.push('\n');
            }
        }
        out
    }

    /// Waits (on the manual clock's terms: no time travel, just task scheduling) until the
    /// order has left `pending`/`processing`.
    pub async fn settle(&self, client: &Client, order_url: &str) -> Value {
        for _ in 0..200 {
            let o = client.post(self, order_url, None).await.json();
            if o["status"] != "pending" && o["status"] != "processing" {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("order {order_url} did not settle");
    }
}

pub async fn call(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The ACME error type without its URN prefix, e.g. `badNonce`.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let t = self.json()["type"].as_str().unwrap_or_default().to_string();
        t.strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(&t)
            .to_string()
    }

    pub fn nonce(&self) -> Option<String> {
        self.headers
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("Location header")
            .to_string()
    }

    pub fn links(&self) -> Vec<String> {
        self.headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    }
}

/// An ACME client with a P-256 account key, signing whatever the test asks.
pub struct Client {
    pub pkcs8: Vec<u8>,
    key: EcdsaKeyPair,
    pub kid: Option<String>,
}

impl Client {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self {
            pkcs8: pkcs8.as_ref().to_vec(),
            key,
            kid: None,
        }
    }

    pub fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
    }

    /// The account key as an rcgen key pair (to build a CSR with the account key).
    pub fn rcgen_key(&self) -> rcgen::KeyPair {
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.clone()),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .unwrap()
    }

    /// The protected header this client would send: `kid` once registered, else `jwk`.
    pub fn header(&self, url: &str, nonce: &str) -> Value {
        match &self.kid {
            Some(kid) => json!({"alg": "ES256", "nonce": nonce, "url": url, "kid": kid}),
            None => json!({"alg": "ES256", "nonce": nonce, "url": url, "jwk": self.jwk()}),
        }
    }

    /// Flattened JWS of `payload` ("" for POST-as-GET) under `header`.
    pub fn sign(&self, header: &Value, payload: &str) -> Vec<u8> {
        let h = B64.encode(header.to_string());
        let p = B64.encode(payload);
        let sig = self
            .key
            .sign(&SystemRandom::new(), format!("{h}.{p}").as_bytes())
            .unwrap();
        json!({"protected": h, "payload": p, "signature": B64.encode(sig.as_ref())})
            .to_string()
            .into_bytes()
    }

    /// A correct request: fresh nonce, right url, `payload` None for POST-as-GET.
    pub async fn post(&self, lab: &Lab, url: &str, payload: Option<&Value>) -> Resp {
        let nonce = lab.nonce().await;
        let body = self.sign(
            &self.header(url, &nonce),
            &payload.map(|p| p.to_string()).unwrap_or_default(),
        );
        lab.post_raw(url, body).await
    }

    pub async fn register(&mut self, lab: &Lab) -> Resp {
        let r = self
            .post(
                lab,
                &format!("{BASE}/acme/new-account"),
                Some(&json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.com"]})),
            )
            .await;
        assert!(
            r.status.is_success(),
            "{}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        self.kid = Some(r.location());
        r
    }

    pub async fn new_order(&self, lab: &Lab, names: &[&str]) -> Resp {
        let ids: Vec<Value> = names
            .iter()
            .map(|n| json!({"type": "dns", "value": n}))
            .collect();
        self.post(
            lab,
            &format!("{BASE}/acme/new-order"),
            Some(&json!({"identifiers": ids})),
        )
        .await
    }

    /// newOrder, then answer every challenge; returns (order URL, order JSON once ready).
    pub async fn ready_order(&self, lab: &Lab, names: &[&str]) -> (String, Value) {
        let r = self.new_order(lab, names).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let url = r.location();
        for authz in r.json()["authorizations"].as_array().unwrap() {
            let a = self.post(lab, authz.as_str().unwrap(), None).await.json();
            let ch = a["challenges"][0]["url"].as_str().unwrap().to_string();
            let resp = self.post(lab, &ch, Some(&json!({}))).await;
            assert_eq!(resp.status, StatusCode::OK);
        }
        let order = lab.settle(self, &url).await;
        assert_eq!(order["status"], "ready", "{order}");
        (url, order)
    }
}

/// A DER CSR for `names` with `key`.
pub fn csr(key: &rcgen::KeyPair, names: &[&str]) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(key).unwrap().der().to_vec()
}

pub fn new_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

pub fn b64(der: &[u8]) -> String {
    B64.encode(der)
}
