//! Real ACME over real HTTP: the instant-acme client against the server on loopback, with the
//! http-01 validator fetching tokens from a tiny HTTP server the lab settings point at, and the
//! issued chain checked by the real `openssl verify`.
//!
//! certbot, lego and dehydrated come later (they need TLS on the directory and their packages
//! installed by `.ci/run`); instant-acme speaks plain HTTP through its pluggable client.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy, RevocationReason, RevocationRequest,
};
use portcullis_ca::acme::{AcmeConfig, AcmeServer, Http01Config};
use portcullis_ca::clock::{Clock, SystemClock};
use portcullis_ca::pki::{pem, Authority, CaPaths, InitOptions, LifetimePolicy, Serial};
use portcullis_ca::store::{AcmeStore, SqliteStore};
use portcullis_ca::tls::{serve_tls, server_config, SelfIssued};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

struct Lab {
    dir: tempfile::TempDir,
    paths: CaPaths,
    store: Arc<SqliteStore>,
    directory: String,
    tokens: Tokens,
}

async fn serve_token(
    State(tokens): State<Tokens>,
    Path(token): Path<String>,
) -> (StatusCode, String) {
    match tokens.lock().unwrap().get(&token) {
        Some(ka) => (StatusCode::OK, ka.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn lab() -> Lab {
    lab_with(false, None).await
}

/// With `tls`, the ACME endpoint is HTTPS with the CA's self-issued certificate for 127.0.0.1.
/// With `eab`, accounts need an external account binding with that (key id, secret).
async fn lab_with(tls: bool, eab: Option<(&str, &[u8])>) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemClock.now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());

    // The "workload" answering http-01: a loopback server on an ephemeral port.
    let tokens: Tokens = Arc::default();
    let challenge_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let challenge_port = challenge_listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/.well-known/acme-challenge/{token}", get(serve_token))
        .with_state(tokens.clone());
    tokio::spawn(async move { axum::serve(challenge_listener, app).await });

    let acme_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", acme_listener.local_addr().unwrap());
    let mut config = AcmeConfig::new(&base);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.http01 = Some(Http01Config {
        allowed_names: vec!["*.lab.example".into()],
        port: challenge_port,
        hosts: ["svc.lab.example", "api.lab.example", "wrong.lab.example"]
            .into_iter()
            .map(|n| (n.to_string(), loopback))
            .collect(),
        timeout: Duration::from_secs(5),
    });
    if let Some((kid, secret)) = eab {
        config.meta.external_account_required = true;
        config.eab_keys.insert(kid.to_string(), secret.to_vec());
    }
    let server = AcmeServer::new(config, store.clone(), pki.clone(), Arc::new(SystemClock));
    let router = server.router();
    if tls {
        let certs = SelfIssued::new(
            pki,
            store.clone(),
            Arc::new(SystemClock),
            vec![],
            vec![loopback],
        )
        .unwrap();
        let config = server_config(Arc::new(certs)).unwrap();
        tokio::spawn(serve_tls(
            acme_listener,
            router,
            config,
            std::future::pending(),
        ));
    } else {
        tokio::spawn(async move { axum::serve(acme_listener, router).await });
    }
    Lab {
        directory: format!("{base}/acme/directory"),
        dir,
        paths,
        store,
        tokens,
    }
}

async fn new_account(lab: &Lab) -> Account {
    new_account_with(lab, None).await.expect("account")
}

async fn new_account_with(
    lab: &Lab,
    eab: Option<&ExternalAccountKey>,
) -> Result<Account, instant_acme::Error> {
    let builder = if lab.directory.starts_with("https:") {
        // The real client stack: hyper-rustls, trusting only the CA's bundle.
        Account::builder_with_root(&lab.paths.bundle).expect("client with the CA bundle")
    } else {
        let http = HyperClient::builder(TokioExecutor::new()).build_http::<BodyWrapper<Bytes>>();
        Account::builder_with_http(Box::new(http))
    };
    let (account, _credentials) = builder
        .create(
            &NewAccount {
                contact: &["mailto:ops@example.com"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            lab.directory.clone(),
            eab,
        )
        .await?;
    Ok(account)
}

fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20))
}

/// Orders `names`, serves the key authorizations (or `wrong` ones), and returns the order's
/// final readiness status.
async fn order_and_validate(
    lab: &Lab,
    account: &Account,
    names: &[&str],
    wrong: bool,
) -> (
    instant_acme::Order,
    Result<OrderStatus, instant_acme::Error>,
) {
    let ids: Vec<Identifier> = names
        .iter()
        .map(|n| Identifier::Dns(n.to_string()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .expect("new order");
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.expect("authorization");
        assert_eq!(a.status, AuthorizationStatus::Pending);
        let mut ch = a.challenge(ChallengeType::Http01).expect("http-01 offered");
        let ka = if wrong {
            "not-the-key-authorization".to_string()
        } else {
            ch.key_authorization().as_str().to_string()
        };
        lab.tokens.lock().unwrap().insert(ch.token.clone(), ka);
        ch.set_ready().await.expect("challenge answered");
    }
    let status = order.poll_ready(&retry()).await;
    (order, status)
}

fn openssl_verify(lab: &Lab, leaf_pem: &str, purpose: &str) -> String {
    let leaf = lab.dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-purpose")
        .arg(purpose)
        .arg("-CAfile")
        .arg(&lab.paths.bundle)
        .arg("-untrusted")
        .arg(&lab.paths.intermediate_cert)
        .arg(&leaf)
        .output()
        .expect("the openssl binary");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_acme_issues_renews_rolls_keys_and_revokes() {
    let lab = lab().await;
    let mut account = new_account(&lab).await;

    // Issuance: new order → http-01 over real HTTP → finalize → download.
    let names = ["svc.lab.example", "api.lab.example"];
    let (mut order, status) = order_and_validate(&lab, &account, &names, false).await;
    assert_eq!(status.expect("poll"), OrderStatus::Ready);
    let _key_pem = order.finalize().await.expect("finalize");
    let chain = order.poll_certificate(&retry()).await.expect("certificate");
    let certs = pem::decode_all(&chain, "CERTIFICATE").unwrap();
    assert_eq!(certs.len(), 2, "leaf + intermediate");
    let leaf_pem = pem::encode("CERTIFICATE", &certs[0]);
    let verdict = openssl_verify(&lab, &leaf_pem, "sslserver");
    assert!(
        verdict.trim_end().ends_with(": OK"),
        "openssl verify: {verdict}"
    );
    // A workload certificate is not a client (device) certificate.
    assert!(!openssl_verify(&lab, &leaf_pem, "sslclient")
        .trim_end()
        .ends_with(": OK"));

    let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
    let mut sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    sans.sort();
    assert_eq!(
        sans,
        ["DNSName(api.lab.example)", "DNSName(svc.lab.example)"]
    );
    let serial = Serial::from_be_bytes(leaf.raw_serial()).to_hex();
    assert!(lab.store.certificate(&serial).unwrap().is_some());

    // Renewal: the same names again give a new certificate with a new serial.
    let (mut renewal, status) = order_and_validate(&lab, &account, &names, false).await;
    assert_eq!(status.expect("poll"), OrderStatus::Ready);
    renewal.finalize().await.expect("finalize renewal");
    let chain2 = renewal
        .poll_certificate(&retry())
        .await
        .expect("renewed certificate");
    let der2 = pem::decode_first(&chain2, "CERTIFICATE").unwrap();
    let (_, leaf2) = X509Certificate::from_der(&der2).unwrap();
    assert_ne!(leaf2.raw_serial(), leaf.raw_serial());

    // Key rollover (RFC 8555 §7.3.5), then the account keeps working with the new key.
    let _new_credentials = account.update_key().await.expect("key change");
    account
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(certs[0].clone()),
            reason: Some(RevocationReason::Superseded),
        })
        .await
        .expect("revocation with the new account key");
    let record = lab.store.certificate(&serial).unwrap().unwrap();
    assert_eq!(record.revocation_reason, Some(4));
    assert!(record.revoked_at.is_some());
    // Revoking twice is an error (alreadyRevoked).
    let again = account
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(certs[0].clone()),
            reason: None,
        })
        .await;
    assert!(format!("{:?}", again.unwrap_err()).contains("alreadyRevoked"));

    account.deactivate().await.expect("deactivation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_http01_answer_invalidates_the_order() {
    let lab = lab().await;
    let account = new_account(&lab).await;
    let (mut order, status) =
        order_and_validate(&lab, &account, &["wrong.lab.example"], true).await;
    // instant-acme reports an invalid order as the order's error document.
    let error = format!("{:?}", status.expect_err("the order must fail"));
    assert!(error.contains("incorrectResponse"), "{error}");
    let state = order.refresh().await.unwrap();
    assert_eq!(state.status, OrderStatus::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_off_the_allow_list_is_rejected() {
    let lab = lab().await;
    let account = new_account(&lab).await;
    let err = account
        .new_order(&NewOrder::new(&[Identifier::Dns("www.example.org".into())]))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("rejectedIdentifier"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_acme_over_https_trusts_only_the_ca_bundle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lab = lab_with(true, None).await;
    let account = new_account(&lab).await;
    let (mut order, status) = order_and_validate(&lab, &account, &["svc.lab.example"], false).await;
    assert_eq!(status.expect("poll"), OrderStatus::Ready);
    order.finalize().await.expect("finalize");
    let chain = order.poll_certificate(&retry()).await.expect("certificate");
    let leaf = pem::encode(
        "CERTIFICATE",
        &pem::decode_first(&chain, "CERTIFICATE").unwrap(),
    );
    let verdict = openssl_verify(&lab, &leaf, "sslserver");
    assert!(
        verdict.trim_end().ends_with(": OK"),
        "openssl verify: {verdict}"
    );
    // The CA's own TLS certificate has its row too: two certificates in the store.
    let conn = rusqlite::Connection::open(lab.dir.path().join("ca.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_acme_binds_an_external_account() {
    let lab = lab_with(false, Some(("ext-7", b"0123456789abcdef"))).await;
    let err = new_account_with(&lab, None)
        .await
        .err()
        .expect("binding required");
    assert!(
        format!("{err:?}").contains("externalAccountRequired"),
        "{err:?}"
    );
    let wrong = ExternalAccountKey::new("ext-7".into(), b"not the secret");
    let err = new_account_with(&lab, Some(&wrong))
        .await
        .err()
        .expect("wrong MAC");
    assert!(format!("{err:?}").contains("unauthorized"), "{err:?}");
    let key = ExternalAccountKey::new("ext-7".into(), b"0123456789abcdef");
    let account = new_account_with(&lab, Some(&key))
        .await
        .expect("bound account");
    let (_, status) = order_and_validate(&lab, &account, &["svc.lab.example"], false).await;
    assert_eq!(status.expect("poll"), OrderStatus::Ready);
}
