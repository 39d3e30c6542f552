//! device-attest-01 end to end (draft-ietf-acme-device-attest): the instant-acme client
//! (0.8 speaks the new identifier types and sends `{"attObj": ...}` with
//! `send_device_attestation`) against the CA over real HTTP, with a synthetic YubiKey-shaped
//! `step` attestation under a test root the CA is configured to trust, the inventory deciding
//! which devices may enrol, and the issued certificate checked by the gateway's own parser
//! and verifier and by `openssl verify -purpose sslclient`.

use std::borrow::Cow;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ciborium::value::Value;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, BodyWrapper, ChallengeType, DeviceAttestation, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use portcullis_ca::acme::{AcmeConfig, AcmeServer};
use portcullis_ca::attest::{attobj, AttObj, AttStmt};
use portcullis_ca::clock::{Clock, SystemClock};
use portcullis_ca::inventory::Inventory;
use portcullis_ca::pki::{pem, Authority, CaPaths, InitOptions, LifetimePolicy, Serial};
use portcullis_ca::store::{AcmeStore, NewDevice, SqliteStore};
use portcullis_config::DeviceStatus;
use portcullis_policy::{DeviceIdentity, IdSource, TrustAnchors, VerifyOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    PublicKeyData, SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const TRUST_DOMAIN: &str = "corp.example";
/// The serial of the synthetic YubiKey, as its slot certificate says (1.3.6.1.4.1.41482.3.7).
const SERIAL: &str = "5970478";

/// A YubiKey-like attestation PKI: a test root, an f9-like intermediate (the per-device
/// attestation certificate), and slot certificates carrying the Yubico serial extension.
struct Yubikey {
    root_der: Vec<u8>,
    f9_der: Vec<u8>,
    f9: Issuer<'static, KeyPair>,
}

impl Yubikey {
    fn new() -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.distinguished_name
            .push(DnType::CommonName, "Test PIV Root CA");
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_der = rp.self_signed(&root_key).unwrap().der().to_vec();
        let root = Issuer::new(rp, root_key);
        let f9_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut fp = CertificateParams::new(Vec::<String>::new()).unwrap();
        fp.distinguished_name
            .push(DnType::CommonName, "Yubico PIV Attestation");
        fp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let f9_der = fp.signed_by(&f9_key, &root).unwrap().der().to_vec();
        Self {
            root_der,
            f9_der,
            f9: Issuer::new(fp, f9_key),
        }
    }

    /// A slot certificate for a fresh key of the YubiKey with `serial`; returns it and the key.
    fn slot(&self, serial: u32) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
        lp.distinguished_name
            .push(DnType::CommonName, "YubiKey PIV Attestation 9a");
        // DER INTEGER, minimal and non-negative.
        let mut int = serial.to_be_bytes().to_vec();
        while int.len() > 1 && int[0] == 0 && int[1] < 0x80 {
            int.remove(0);
        }
        if int[0] >= 0x80 {
            int.insert(0, 0);
        }
        let mut value = vec![0x02, int.len() as u8];
        value.extend(int);
        lp.custom_extensions.push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 41482, 3, 7],
            value,
        ));
        (lp.signed_by(&key, &self.f9).unwrap().der().to_vec(), key)
    }

    /// The CBOR attObj of a `step` statement: `sig` over `signed` by `key` (ES256).
    fn att_obj(&self, fmt: &str, slot: &[u8], key: &KeyPair, signed: &[u8]) -> Vec<u8> {
        attobj::to_cbor(&AttObj {
            fmt: fmt.into(),
            att_stmt: AttStmt::from_entries(vec![
                ("alg".into(), Value::Integer((-7).into())),
                ("sig".into(), Value::Bytes(key.sign(signed).unwrap())),
                (
                    "x5c".into(),
                    Value::Array(vec![
                        Value::Bytes(slot.to_vec()),
                        Value::Bytes(self.f9_der.clone()),
                    ]),
                ),
            ]),
            auth_data: None,
        })
    }
}

struct Lab {
    dir: tempfile::TempDir,
    paths: CaPaths,
    store: Arc<SqliteStore>,
    inventory: Arc<Inventory>,
    directory: String,
    yubikey: Yubikey,
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::in_dir(&dir.path().join("pki"));
    Authority::init(&paths, &InitOptions::default(), SystemClock.now()).unwrap();
    let pki = Arc::new(Authority::load(&paths, LifetimePolicy::default()).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let inventory = Arc::new(Inventory::new(store.clone(), clock.clone(), 16));
    let yubikey = Yubikey::new();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = AcmeConfig::new(&base);
    config.trust_domain = TRUST_DOMAIN.into();
    config.attestation.step_roots = Some(vec![yubikey.root_der.clone()]);
    let server = AcmeServer::with_inventory(config, store.clone(), pki, clock, inventory.clone());
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Lab {
        directory: format!("{base}/acme/directory"),
        dir,
        paths,
        store,
        inventory,
        yubikey,
    }
}

fn add_device(lab: &Lab, id: &str, status: DeviceStatus) {
    lab.inventory
        .upsert(
            &NewDevice {
                id: id.into(),
                hw_module_id: None,
                platform: Some("yubikey".into()),
                owner: Some("alice@corp.example".into()),
                tags: Default::default(),
                status,
                source: "test".into(),
            },
            "test",
            "enrolment test",
        )
        .unwrap();
}

async fn account(lab: &Lab) -> Account {
    let http = HyperClient::builder(TokioExecutor::new()).build_http::<BodyWrapper<Bytes>>();
    let (account, _) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            lab.directory.clone(),
            None,
        )
        .await
        .unwrap();
    account
}

fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20))
}

/// What the device sends for a challenge whose key authorization is `ka`.
enum Answer {
    /// A correct statement for the YubiKey with `serial`.
    Good { serial: u32 },
    /// Signed over another key authorization (another account's, or a stale one).
    WrongKeyAuthorization,
    /// A correct statement with an `fmt` the CA does not know.
    UnknownFormat,
    /// Not CBOR at all.
    Garbage,
}

/// Orders `identifier` as a permanent-identifier, answers device-attest-01 with `answer`
/// and polls until the order leaves `pending`. Returns the order, its status and the
/// attested key (for a CSR).
async fn order_and_attest(
    lab: &Lab,
    account: &Account,
    identifier: &str,
    answer: Answer,
) -> (instant_acme::Order, OrderStatus, KeyPair) {
    let ids = [Identifier::PermanentIdentifier(identifier.into())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let (slot, key) = lab.yubikey.slot(match answer {
        Answer::Good { serial } => serial,
        _ => SERIAL.parse().unwrap(),
    });
    {
        let mut authzs = order.authorizations();
        let mut authz = authzs.next().await.unwrap().unwrap();
        // draft-ietf-acme-device-attest: a device identifier is validated by device-attest-01
        // only.
        let kinds: Vec<ChallengeType> = authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        assert_eq!(kinds, vec![ChallengeType::DeviceAttest01]);
        // >= 128 bits of token (RFC 8555 §8.1): 32 random bytes, base64url.
        let token = &authz.challenges[0].token;
        assert!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .unwrap()
                .len()
                >= 16
        );
        let mut ch = authz.challenge(ChallengeType::DeviceAttest01).unwrap();
        let ka = ch.key_authorization().as_str().to_string();
        let att_obj = match answer {
            Answer::Good { .. } => lab.yubikey.att_obj("step", &slot, &key, ka.as_bytes()),
            Answer::WrongKeyAuthorization => {
                let other = format!("{}.anotherAccountsThumbprint", ch.token);
                lab.yubikey.att_obj("step", &slot, &key, other.as_bytes())
            }
            Answer::UnknownFormat => lab
                .yubikey
                .att_obj("android-key", &slot, &key, ka.as_bytes()),
            Answer::Garbage => b"\xffnot cbor".to_vec(),
        };
        // The validation runs in the background: the response shows the challenge
        // `processing`, or already `invalid` with its problem (instant-acme then returns it as
        // an error). The order, polled below, carries the outcome either way.
        match ch
            .send_device_attestation(&DeviceAttestation {
                att_obj: Cow::Owned(att_obj),
            })
            .await
        {
            Ok(_) | Err(instant_acme::Error::Api(_)) => {}
            Err(e) => panic!("sending the attestation: {e}"),
        }
    }
    // instant-acme reports an invalid order's problem as an error; the state keeps it.
    let status = match order.poll_ready(&retry()).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(_)) => order.state().status,
        Err(e) => panic!("polling the order: {e}"),
    };
    (order, status, key)
}

fn csr_der(key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "device");
    params.serialize_request(key).unwrap().der().to_vec()
}

/// Certificates ever recorded for devices (what quarantine would have to revoke).
fn device_cert_rows(lab: &Lab) -> i64 {
    let conn = rusqlite::Connection::open(lab.dir.path().join("ca.db")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM certificates WHERE device_id IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn assert_refused(order: &mut instant_acme::Order, status: OrderStatus, kind: &str, rule: &str) {
    assert_eq!(status, OrderStatus::Invalid);
    let error = order
        .state()
        .error
        .clone()
        .expect("the order carries the problem");
    assert_eq!(
        error.r#type.as_deref(),
        Some(format!("urn:ietf:params:acme:error:{kind}").as_str()),
        "{error:?}"
    );
    let detail = error.detail.unwrap_or_default();
    assert!(detail.contains(rule), "expected {rule:?} in {detail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_attest01_issues_a_device_certificate_that_the_gateway_accepts() {
    let lab = lab().await;
    add_device(&lab, SERIAL, DeviceStatus::Active);
    let account = account(&lab).await;

    let (mut order, status, key) = order_and_attest(
        &lab,
        &account,
        SERIAL,
        Answer::Good {
            serial: SERIAL.parse().unwrap(),
        },
    )
    .await;
    assert_eq!(status, OrderStatus::Ready, "{:?}", order.state().error);
    order.finalize_csr(&csr_der(&key)).await.unwrap();
    let chain = order.poll_certificate(&retry()).await.unwrap();
    let certs = pem::decode_all(&chain, "CERTIFICATE").unwrap();
    assert_eq!(certs.len(), 2, "leaf + intermediate");

    // The certificate is for the attested key, with the device's names and clientAuth only.
    let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let mut other_names = 0;
    let mut uris = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::OtherName(oid, _) => {
                assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.3");
                other_names += 1;
            }
            GeneralName::URI(u) => uris.push(u.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(other_names, 1);
    assert_eq!(
        uris,
        vec![format!("spiffe://{TRUST_DOMAIN}/device/{SERIAL}")]
    );
    // Empty subject: the SAN must be critical (RFC 5280 §4.2.1.6).
    assert!(san.critical);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());

    // The gateway's parser and verifier.
    let identity = DeviceIdentity::from_der(&certs[0], TRUST_DOMAIN).unwrap();
    assert_eq!(identity.device_id.as_deref(), Some(SERIAL));
    assert_eq!(identity.id_source, Some(IdSource::PermanentIdentifier));
    assert_eq!(identity.attestation.as_deref(), Some("step"));
    let anchors =
        TrustAnchors::from_pem(std::fs::read(&lab.paths.bundle).unwrap().as_slice()).unwrap();
    let verified = portcullis_policy::verify::verify_client_chain(
        &anchors,
        &CertificateDer::from(certs[0].clone()),
        &[CertificateDer::from(certs[1].clone())],
        SystemClock.now(),
        &VerifyOptions {
            clock_skew: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(7 * 24 * 3600),
        },
        TRUST_DOMAIN,
    )
    .unwrap();
    assert_eq!(verified.device_id.as_deref(), Some(SERIAL));

    // openssl: a TLS client certificate chaining to the bundle.
    let leaf_path = lab.dir.path().join("device.pem");
    std::fs::write(&leaf_path, pem::encode("CERTIFICATE", &certs[0])).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&lab.paths.bundle)
        .arg("-untrusted")
        .arg(&lab.paths.intermediate_cert)
        .arg(&leaf_path)
        .output()
        .expect("the openssl binary");
    let verdict = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(verdict.trim_end().ends_with(": OK"), "openssl: {verdict}");

    // The certificate row names the device, so quarantine revokes it in the same transaction.
    let serial = Serial::from_be_bytes(leaf.raw_serial()).to_hex();
    let row = lab.store.certificate(&serial).unwrap().unwrap();
    assert_eq!(row.device_id.as_deref(), Some(SERIAL));
    assert_eq!(row.revoked_at, None);
    let change = lab
        .inventory
        .set_status(SERIAL, DeviceStatus::Quarantined, "test", "lost")
        .unwrap();
    assert_eq!(change.revoked, vec![serial.clone()]);
    let row = lab.store.certificate(&serial).unwrap().unwrap();
    assert!(row.revoked_at.is_some());
    assert_eq!(
        row.revocation_reason,
        portcullis_ca::store::revocation_reason(DeviceStatus::Quarantined)
    );

    // And a quarantined device cannot enrol again.
    let (mut order, status, _) = order_and_attest(
        &lab,
        &account,
        SERIAL,
        Answer::Good {
            serial: SERIAL.parse().unwrap(),
        },
    )
    .await;
    assert_refused(
        &mut order,
        status,
        "badAttestationStatement",
        "device-active",
    );
    assert_eq!(device_cert_rows(&lab), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_attest01_refusals_name_their_rule_and_issue_nothing() {
    let lab = lab().await;
    add_device(&lab, SERIAL, DeviceStatus::Active);
    add_device(&lab, "5970479", DeviceStatus::Active);
    add_device(&lab, "5970480", DeviceStatus::Quarantined);
    let account = account(&lab).await;
    let good = |serial: &str| Answer::Good {
        serial: serial.parse().unwrap(),
    };

    // Not in the inventory.
    let (mut o, s, _) = order_and_attest(&lab, &account, "5970999", good("5970999")).await;
    assert_refused(&mut o, s, "badAttestationStatement", "device-known");
    // In the inventory, but quarantined.
    let (mut o, s, _) = order_and_attest(&lab, &account, "5970480", good("5970480")).await;
    assert_refused(&mut o, s, "badAttestationStatement", "device-active");
    // The attestation is for another device than the order names.
    let (mut o, s, _) = order_and_attest(&lab, &account, "5970479", good(SERIAL)).await;
    assert_refused(
        &mut o,
        s,
        "badAttestationStatement",
        "do not include the order identifier",
    );
    // Signed over another key authorization.
    let (mut o, s, _) =
        order_and_attest(&lab, &account, SERIAL, Answer::WrongKeyAuthorization).await;
    assert_refused(&mut o, s, "badAttestationStatement", "sig does not verify");
    // An attestation format the CA does not accept.
    let (mut o, s, _) = order_and_attest(&lab, &account, SERIAL, Answer::UnknownFormat).await;
    assert_refused(
        &mut o,
        s,
        "badAttestationStatement",
        "not an accepted attestation format",
    );
    // Not CBOR.
    let (mut o, s, _) = order_and_attest(&lab, &account, SERIAL, Answer::Garbage).await;
    assert_refused(&mut o, s, "badAttestationStatement", "attObj");

    // A valid attestation, then a CSR for another key: badCSR, and the order stays ready.
    let (mut o, s, _) = order_and_attest(&lab, &account, SERIAL, good(SERIAL)).await;
    assert_eq!(s, OrderStatus::Ready);
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    match o.finalize_csr(&csr_der(&other)).await {
        Err(instant_acme::Error::Api(p)) => {
            assert_eq!(
                p.r#type.as_deref(),
                Some("urn:ietf:params:acme:error:badCSR")
            );
            assert!(
                p.detail.unwrap_or_default().contains("csr-key-attested"),
                "rule named"
            );
        }
        other => panic!("expected badCSR, got {other:?}"),
    }
    assert_eq!(o.refresh().await.unwrap().status, OrderStatus::Ready);

    // Valid when attested, quarantined before finalize: the status is checked again in the
    // issuing transaction, so nothing is issued.
    add_device(&lab, "5970481", DeviceStatus::Active);
    let (mut o, s, key) = order_and_attest(&lab, &account, "5970481", good("5970481")).await;
    assert_eq!(s, OrderStatus::Ready);
    lab.inventory
        .set_status("5970481", DeviceStatus::Quarantined, "test", "stolen")
        .unwrap();
    match o.finalize_csr(&csr_der(&key)).await {
        Err(instant_acme::Error::Api(p)) => {
            assert_eq!(
                p.r#type.as_deref(),
                Some("urn:ietf:params:acme:error:unauthorized")
            );
            assert!(p.detail.unwrap_or_default().contains("device-active"));
        }
        Err(e) => panic!("expected unauthorized, got {e:?}"),
        Ok(()) => panic!("finalize for a quarantined device succeeded"),
    }

    // Orders that cannot name one device.
    let mixed = [
        Identifier::PermanentIdentifier(SERIAL.into()),
        Identifier::Dns("laptop.corp.example".into()),
    ];
    let two = [
        Identifier::PermanentIdentifier(SERIAL.into()),
        Identifier::PermanentIdentifier("5970479".into()),
    ];
    for ids in [&mixed[..], &two[..]] {
        match account.new_order(&NewOrder::new(ids)).await {
            Err(instant_acme::Error::Api(p)) => assert_eq!(
                p.r#type.as_deref(),
                Some("urn:ietf:params:acme:error:rejectedIdentifier"),
                "{ids:?}"
            ),
            Err(e) => panic!("{ids:?}: expected rejectedIdentifier, got {e:?}"),
            Ok(_) => panic!("{ids:?}: accepted"),
        }
    }
    // Grammar (draft-ietf-acme-device-attest §4): hardware-module is `serial "/" type-oid`.
    match account
        .new_order(&NewOrder::new(&[Identifier::HardwareModule("abc".into())]))
        .await
    {
        Err(instant_acme::Error::Api(p)) => assert_eq!(
            p.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:malformed")
        ),
        Err(e) => panic!("expected malformed, got {e:?}"),
        Ok(_) => panic!("hardware-module `abc` accepted"),
    }

    assert_eq!(device_cert_rows(&lab), 0, "no certificate was issued");
}
