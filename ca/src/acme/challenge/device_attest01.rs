//! `device-attest-01` (draft-ietf-acme-device-attest §5): the client POSTs
//! `{"attObj": base64url(CBOR)}` to the challenge URL; the server verifies the attestation
//! statement with [`crate::attest`] against the expected key authorization and checks that the
//! attested device identifier is the order identifier. Any failure is
//! `badAttestationStatement` with the failed rule named in the detail (and in the log).
//!
//! What this validator cannot decide alone is behind [`DeviceAttestHooks`]: whether the device
//! is in the inventory and `active`, and where the attested key is recorded so that finalize
//! can require the CSR key to equal it (issue 4). The hooks are the seam to the store.

use std::sync::Arc;

use super::{ChallengeValidator, ValidationFuture, ValidationRequest};
use crate::acme::model::Identifier;
use crate::acme::problem::{Problem, ProblemType};
use crate::attest::{attobj, Attested, DeviceIdentifier, Verifiers};
use crate::clock::Clock;

pub const KIND: &str = "device-attest-01";
/// Identifier types of draft-ietf-acme-device-attest §3 (permanent-identifier) and §4 (hardware-module).
pub const PERMANENT_IDENTIFIER: &str = "permanent-identifier";
pub const HARDWARE_MODULE: &str = "hardware-module";

/// What the challenge needs from the rest of the CA.
pub trait DeviceAttestHooks: Send + Sync + 'static {
    /// `Ok` when the device named by `identifier` exists in the inventory and is `active`;
    /// otherwise the reason, which becomes the problem detail.
    fn check_device(&self, identifier: &Identifier, attested: &Attested) -> Result<(), String>;

    /// Records the verified attestation for the authorization of `token` (the attested key is
    /// what finalize compares the CSR key with). An error fails the challenge.
    fn record(
        &self,
        identifier: &Identifier,
        token: &str,
        attested: &Attested,
    ) -> Result<(), String>;
}

/// The `device-attest-01` validator.
pub struct DeviceAttest01 {
    verifiers: Arc<Verifiers>,
    clock: Arc<dyn Clock>,
    hooks: Arc<dyn DeviceAttestHooks>,
}

impl std::fmt::Debug for DeviceAttest01 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAttest01")
            .field("formats", &self.verifiers)
            .finish_non_exhaustive()
    }
}

impl DeviceAttest01 {
    pub fn new(
        verifiers: Verifiers,
        clock: Arc<dyn Clock>,
        hooks: Arc<dyn DeviceAttestHooks>,
    ) -> Self {
        Self {
            verifiers: Arc::new(verifiers),
            clock,
            hooks,
        }
    }

    /// The whole decision, synchronous (attestation verification is pure CPU work of a few
    /// signature checks).
    pub fn decide(&self, request: &ValidationRequest) -> Result<Attested, Problem> {
        let bad = |detail: String| Problem::new(ProblemType::BadAttestationStatement, detail);
        check_identifier(&request.identifier).map_err(Problem::malformed)?;
        let att = attobj::parse_payload(&request.payload).map_err(|e| {
            tracing::warn!(rule = ?e.rule, identifier = %request.identifier.value, "device-attest-01 refused: {e}");
            bad(e.detail)
        })?;
        let mut attested = self
            .verifiers
            .verify(&att, request.key_authorization.as_bytes(), self.clock.now())
            .map_err(|e| {
                tracing::warn!(rule = ?e.rule, fmt = %att.fmt, identifier = %request.identifier.value, "device-attest-01 refused: {e}");
                bad(e.detail)
            })?;
        if attested.format == super::unattested::FMT {
            // Registered only behind `allow_unattested` (development): the order's identifier
            // is taken as claimed, and the format marks every certificate issued on it.
            if request.identifier.kind == PERMANENT_IDENTIFIER {
                let (value, assigner) = match request.identifier.value.rsplit_once('/') {
                    Some((v, a)) => (v.to_string(), Some(a.to_string())),
                    None => (request.identifier.value.clone(), None),
                };
                attested.identifiers = vec![DeviceIdentifier::PermanentIdentifier {
                    value,
                    assigner,
                    source: "the order (unattested: the client's claim)",
                }];
            }
        }
        // draft-ietf-acme-device-attest §5: the identifier in the attestation must match the
        // identifier of the authorization.
        let matches = attested.identifiers.iter().any(|id| {
            id.acme_type() == request.identifier.kind && id.acme_value() == request.identifier.value
        });
        if !matches {
            let found: Vec<String> = attested
                .identifiers
                .iter()
                .map(|i| format!("{} {}", i.acme_type(), i.acme_value()))
                .collect();
            let detail = format!(
                "{}: the attested identifiers [{}] do not include the order identifier {} {}",
                attested.format,
                found.join(", "),
                request.identifier.kind,
                request.identifier.value
            );
            tracing::warn!(fmt = attested.format, identifier = %request.identifier.value, "device-attest-01 refused: {detail}");
            return Err(bad(detail));
        }
        self.hooks
            .check_device(&request.identifier, &attested)
            .map_err(|why| {
                tracing::warn!(fmt = attested.format, identifier = %request.identifier.value, "device-attest-01 refused: {why}");
                bad(format!("inventory: {why}"))
            })?;
        self.hooks
            .record(&request.identifier, &request.token, &attested)
            .map_err(|why| Problem::new(ProblemType::ServerInternal, why))?;
        tracing::info!(fmt = attested.format, identifier = %request.identifier.value, "device-attest-01 valid");
        Ok(attested)
    }
}

impl ChallengeValidator for DeviceAttest01 {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn applies_to(&self, identifier: &Identifier) -> bool {
        identifier.kind == PERMANENT_IDENTIFIER || identifier.kind == HARDWARE_MODULE
    }

    fn validate(&self, request: ValidationRequest) -> ValidationFuture {
        let me = Self {
            verifiers: self.verifiers.clone(),
            clock: self.clock.clone(),
            hooks: self.hooks.clone(),
        };
        Box::pin(async move { me.decide(&request).map(|_| ()) })
    }
}

/// Dotted-decimal OBJECT IDENTIFIER text (no leading zeros in arcs).
fn is_oid(s: &str) -> bool {
    let mut arcs = s.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut n = 1;
    let rest_ok = arcs.all(|a| {
        n += 1;
        !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a == "0" || !a.starts_with('0'))
    });
    first_ok && rest_ok && n >= 2
}

/// The identifier grammar of draft-ietf-acme-device-attest §3 and §4:
/// `permanent-identifier`: `device-identifier-value ["/" assigner-oid]`;
/// `hardware-module`: `serial "/" type-oid`. For newOrder (`malformed` otherwise).
pub fn check_identifier(identifier: &Identifier) -> Result<(), String> {
    let v = identifier.value.as_str();
    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{} value must be 1 to 256 printable characters without spaces",
            identifier.kind
        ));
    }
    match identifier.kind.as_str() {
        PERMANENT_IDENTIFIER => match v.rsplit_once('/') {
            Some((value, assigner)) if !value.is_empty() && is_oid(assigner) => Ok(()),
            Some(_) => Err("permanent-identifier is `value [\"/\" assigner-oid]`".into()),
            None => Ok(()),
        },
        HARDWARE_MODULE => match v.rsplit_once('/') {
            Some((serial, oid)) if !serial.is_empty() && is_oid(oid) => Ok(()),
            _ => Err("hardware-module is `serial \"/\" type-oid`".into()),
        },
        other => Err(format!(
            "identifier type `{other}` is not a device identifier"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyPair, PublicKeyData,
        SigningKey,
    };
    use serde_json::{Map, Value as Json};

    use super::*;
    use crate::attest::step::StepVerifier;
    use crate::attest::{AttObj, AttStmt};
    use crate::clock::SystemClock;

    #[derive(Default)]
    struct Hooks {
        inactive: bool,
        recorded: Mutex<Vec<(String, String, Vec<u8>)>>,
    }

    impl DeviceAttestHooks for Hooks {
        fn check_device(&self, identifier: &Identifier, _: &Attested) -> Result<(), String> {
            if self.inactive {
                Err(format!("device {} is quarantined", identifier.value))
            } else {
                Ok(())
            }
        }
        fn record(
            &self,
            identifier: &Identifier,
            token: &str,
            attested: &Attested,
        ) -> Result<(), String> {
            self.recorded.lock().unwrap().push((
                identifier.value.clone(),
                token.to_owned(),
                attested.public_key_spki.clone(),
            ));
            Ok(())
        }
    }

    /// A YubiKey-shaped `step` statement under a test root, serial 5970478.
    fn step_payload(ka: &str) -> (Vec<u8>, Map<String, Json>, Vec<u8>) {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = rp.self_signed(&root_key).unwrap().der().to_vec();
        let root_issuer = Issuer::new(rp, root_key);
        let f9_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut fp = CertificateParams::new(Vec::<String>::new()).unwrap();
        fp.distinguished_name.push(rcgen::DnType::CommonName, "f9");
        fp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let f9 = fp.signed_by(&f9_key, &root_issuer).unwrap().der().to_vec();
        let f9_issuer = Issuer::new(fp, f9_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
        lp.custom_extensions.push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 41482, 3, 7],
            vec![0x02, 0x03, 0x5b, 0x1a, 0x2e],
        ));
        let leaf = lp.signed_by(&key, &f9_issuer).unwrap().der().to_vec();
        let att = AttObj {
            fmt: "step".into(),
            att_stmt: AttStmt::from_entries(vec![
                ("alg".into(), ciborium::value::Value::Integer((-7).into())),
                (
                    "sig".into(),
                    ciborium::value::Value::Bytes(key.sign(ka.as_bytes()).unwrap()),
                ),
                (
                    "x5c".into(),
                    ciborium::value::Value::Array(vec![
                        ciborium::value::Value::Bytes(leaf),
                        ciborium::value::Value::Bytes(f9),
                    ]),
                ),
            ]),
            auth_data: None,
        };
        use base64::Engine as _;
        let mut payload = Map::new();
        payload.insert(
            "attObj".into(),
            Json::String(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(attobj::to_cbor(&att)),
            ),
        );
        (root, payload, key.subject_public_key_info())
    }

    fn validator(root: Vec<u8>, hooks: Arc<Hooks>) -> DeviceAttest01 {
        let mut v = Verifiers::default();
        v.register(Arc::new(StepVerifier::with_roots(vec![root])));
        DeviceAttest01::new(v, Arc::new(SystemClock), hooks)
    }

    fn request(kind: &str, value: &str, ka: &str, payload: Map<String, Json>) -> ValidationRequest {
        ValidationRequest {
            identifier: Identifier {
                kind: kind.into(),
                value: value.into(),
            },
            token: ka.split('.').next().unwrap().into(),
            key_authorization: ka.into(),
            payload,
        }
    }

    const KA: &str = "tok3nTOKENtok3nTOKENtok3n.thumbprintTHUMBPRINTthumbprint";

    #[tokio::test]
    async fn attest_device_attest01_valid_and_recorded() {
        let (root, payload, spki) = step_payload(KA);
        let hooks = Arc::new(Hooks::default());
        let v = validator(root, hooks.clone());
        assert!(v.applies_to(&Identifier {
            kind: PERMANENT_IDENTIFIER.into(),
            value: "1".into()
        }));
        assert!(!v.applies_to(&Identifier::dns("example.com")));
        assert_eq!(v.kind(), "device-attest-01");
        v.validate(request(PERMANENT_IDENTIFIER, "5970478", KA, payload))
            .await
            .unwrap();
        let rec = hooks.recorded.lock().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(
            rec[0],
            ("5970478".into(), "tok3nTOKENtok3nTOKENtok3n".into(), spki)
        );
    }

    #[tokio::test]
    async fn attest_device_attest01_refusals_are_bad_attestation_statement() {
        let (root, payload, _) = step_payload(KA);
        let hooks = Arc::new(Hooks::default());
        let v = validator(root.clone(), hooks.clone());
        // Another device's serial.
        let p = v
            .validate(request(
                PERMANENT_IDENTIFIER,
                "5970479",
                KA,
                payload.clone(),
            ))
            .await
            .unwrap_err();
        assert_eq!(p.kind, ProblemType::BadAttestationStatement);
        assert!(
            p.detail.contains("do not include the order identifier"),
            "{p}"
        );
        // Another account's key authorization.
        let other = "tok3nTOKENtok3nTOKENtok3n.anotherACCOUNTthumbprint";
        let p = v
            .validate(request(
                PERMANENT_IDENTIFIER,
                "5970478",
                other,
                payload.clone(),
            ))
            .await
            .unwrap_err();
        assert_eq!(p.kind, ProblemType::BadAttestationStatement);
        assert!(p.detail.contains("sig does not verify"), "{p}");
        // Garbage payload; missing attObj.
        let mut garbage = Map::new();
        garbage.insert("attObj".into(), Json::String("AAAA".into()));
        let p = v
            .validate(request(PERMANENT_IDENTIFIER, "5970478", KA, garbage))
            .await
            .unwrap_err();
        assert_eq!(p.kind, ProblemType::BadAttestationStatement);
        let p = v
            .validate(request(PERMANENT_IDENTIFIER, "5970478", KA, Map::new()))
            .await
            .unwrap_err();
        assert!(p.detail.contains("attObj is missing"), "{p}");
        // A quarantined device.
        let quarantined = validator(
            root,
            Arc::new(Hooks {
                inactive: true,
                ..Hooks::default()
            }),
        );
        let p = quarantined
            .validate(request(PERMANENT_IDENTIFIER, "5970478", KA, payload))
            .await
            .unwrap_err();
        assert_eq!(p.kind, ProblemType::BadAttestationStatement);
        assert!(p.detail.contains("quarantined"), "{p}");
        assert!(hooks.recorded.lock().unwrap().is_empty());
    }

    #[test]
    fn attest_device_identifier_grammar() {
        let id = |k: &str, v: &str| Identifier {
            kind: k.into(),
            value: v.into(),
        };
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "5970478")).is_ok());
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "device-42/1.3.6.1.4.1.311")).is_ok());
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "a/b")).is_err());
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "/1.2.3")).is_err());
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "")).is_err());
        assert!(check_identifier(&id(PERMANENT_IDENTIFIER, "with space")).is_err());
        assert!(check_identifier(&id(HARDWARE_MODULE, "ab12/1.3.6.1.4.1.41482")).is_ok());
        assert!(check_identifier(&id(HARDWARE_MODULE, "ab12")).is_err());
        assert!(check_identifier(&id(HARDWARE_MODULE, "ab12/1.03")).is_err());
        assert!(check_identifier(&id(HARDWARE_MODULE, "ab12/3.1")).is_err());
        assert!(check_identifier(&id("dns", "example.com")).is_err());
        assert!(is_oid("2.23.133.8.3") && !is_oid("1") && !is_oid("1..2"));
    }
}
