//! Orders: newOrder (RFC 8555 §7.4), reading an order, finalize, and the issuance step shared
//! by finalize and crash recovery.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::StatusCode;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use super::objects;
use super::request::{path_id, KeyRule};
use super::response::{no_such, Reply};
use super::AcmeServer;
use crate::acme::challenge::device_attest01::HARDWARE_MODULE;
use crate::acme::identifier::{
    check_device_order_identifiers, check_order_identifiers, device_id_of, is_device_identifier,
};
use crate::acme::model::{Identifier, OrderStatus};
use crate::acme::problem::{Problem, ProblemIdentifier, ProblemType};
use crate::clock::{from_unix_seconds, parse_rfc3339, unix_seconds};
use crate::inventory::AUDIT_TARGET;
use crate::pki::{jwk_of_spki_der, Csr, IssueExtras, IssueRequest, PkiError};
use crate::store::{DeviceAttestation, NewCert, NewOrder, OrderRecord, StoreError};

/// How often issuance is retried when the store refuses a serial (UNIQUE): each try draws a
/// new random serial, so a second collision of 128-bit values means something else is wrong.
const ISSUE_ATTEMPTS: usize = 3;

pub(super) async fn new_order(
    State(s): State<Arc<AcmeServer>>,
    req: Request,
) -> Result<Response, Problem> {
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let account = a.account()?.clone();
    let payload = a.object()?;
    let identifiers: Vec<Identifier> = payload
        .get("identifiers")
        .cloned()
        .ok_or_else(|| Problem::malformed("`identifiers` is missing"))
        .and_then(|v| {
            serde_json::from_value(v).map_err(|_| {
                Problem::malformed("`identifiers` must be an array of {type, value} objects")
            })
        })?;
    let allow = s.config.http01.as_ref().map(|h| h.allowed_names.as_slice());
    // An order that names a device anywhere is a device order, checked by its own rules
    // (draft-ietf-acme-device-attest §3, §4; one device, nothing else).
    let device_order = identifiers.iter().any(is_device_identifier);
    let identifiers = if device_order {
        check_device_order_identifiers(&identifiers)?
    } else {
        check_order_identifiers(&identifiers, allow)?
    };
    let template = if device_order {
        &s.config.device_template
    } else {
        &s.config.workload_template
    };

    let time_field = |k: &str| -> Result<Option<i64>, Problem> {
        match payload.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) => parse_rfc3339(t)
                .map(|t| Some(unix_seconds(t)))
                .ok_or_else(|| Problem::malformed(format!("`{k}` is not an RFC 3339 time"))),
            Some(_) => Err(Problem::malformed(format!("`{k}` must be a string"))),
        }
    };
    let (not_before, not_after) = (time_field("notBefore")?, time_field("notAfter")?);
    if let Some(replaces) = payload.get("replaces") {
        check_replaces(&s, replaces, account.id, &identifiers)?;
    }
    // Refuse now a window issuance would refuse later (§7.4: the server MAY reject it).
    s.pki
        .validity(
            template,
            not_before.map(from_unix_seconds),
            not_after.map(from_unix_seconds),
            s.now(),
        )
        .map_err(|e| Problem::malformed(format!("requested validity: {e}")))?;

    let mut challenges = Vec::with_capacity(identifiers.len());
    for ident in &identifiers {
        let kinds = s.validators.offered_for(ident);
        if kinds.is_empty() {
            return Err(Problem::new(
                ProblemType::RejectedIdentifier,
                format!("no challenge type can validate {}", ident.value),
            ));
        }
        let mut list = Vec::with_capacity(kinds.len());
        for kind in kinds {
            list.push((kind.to_string(), token()?));
        }
        challenges.push(list);
    }
    let now = s.now_unix();
    let expires = now + s.config.order_lifetime.as_secs() as i64;
    let order = s.store.create_order(
        &NewOrder {
            account_id: account.id,
            identifiers,
            not_before,
            not_after,
            expires,
            authz_expires: expires,
            challenges,
        },
        now,
    )?;
    Ok(
        Reply::json(StatusCode::CREATED, &objects::order(&s.urls, &order))
            .location(s.urls.order(order.id))
            .into_response(),
    )
}

pub(super) async fn order(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "order")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    a.require_post_as_get()?;
    let order = owned_order(&s, id, a.account()?.id)?;
    Ok(order_reply(&s, &order, StatusCode::OK))
}

/// §7.4 finalize: the order must be ready; the CSR must be signed, of an accepted key type and
/// size, not the account key (§11.1), and name exactly the order's identifiers.
pub(super) async fn finalize(
    State(s): State<Arc<AcmeServer>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let id = path_id(&raw, "order")?;
    let a = s.authenticate(req, KeyRule::Kid).await?;
    let account = a.account()?.clone();
    let order = owned_order(&s, id, account.id)?;
    if order.status != OrderStatus::Ready {
        return Err(Problem::new(
            ProblemType::OrderNotReady,
            format!("the order is {}, not ready", order.status.as_str()),
        ));
    }
    let payload = a.object()?;
    let csr_der = payload
        .get("csr")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("`csr` is missing"))
        .and_then(|c| {
            B64.decode(c)
                .map_err(|_| Problem::new(ProblemType::BadCsr, "`csr` is not base64url DER"))
        })?;
    let csr =
        Csr::from_der(&csr_der).map_err(|e| Problem::new(ProblemType::BadCsr, e.to_string()))?;
    if csr.jwk == account.jwk {
        return Err(Problem::new(
            ProblemType::BadCsr,
            "the certificate key must not be the account key (RFC 8555 §11.1)",
        ));
    }
    match device_attestation(&s, &order)? {
        Some((_, attestation)) => check_device_csr(&csr, &attestation)?,
        None => check_csr_names(&csr, &order)?,
    }

    if !s.store.begin_finalize(order.id, &csr_der, s.now_unix())? {
        // Someone finalized (or the order expired) between our read and our write.
        return Err(Problem::new(
            ProblemType::OrderNotReady,
            "the order is no longer ready",
        ));
    }
    issue(&s, &order, &csr)?;
    let order = owned_order(&s, id, account.id)?;
    Ok(order_reply(&s, &order, StatusCode::OK))
}

/// Issues for an order that is `processing` with its CSR stored: used by crash recovery.
pub(super) fn issue_stored(s: &AcmeServer, order_id: i64) -> Result<(), Problem> {
    let order = s
        .store
        .order(order_id, s.now_unix())?
        .ok_or_else(|| no_such("order"))?;
    let csr = order
        .csr
        .as_deref()
        .ok_or_else(|| Problem::new(ProblemType::ServerInternal, "order has no stored CSR"))
        .and_then(|der| {
            Csr::from_der(der).map_err(|e| Problem::new(ProblemType::BadCsr, e.to_string()))
        });
    match csr {
        Ok(csr) => issue(s, &order, &csr),
        Err(p) => {
            s.store.fail_order(order_id, &problem_json(&p))?;
            Err(p)
        }
    }
}

/// Signs and records: the certificate row and the order's move to `valid` commit in one
/// transaction, and the response is sent only after that commit, so a certificate a client was
/// told about is never lost. A crash before the commit leaves the order `processing`;
/// [`AcmeServer::recover`] re-issues it with a new serial.
fn issue(s: &AcmeServer, order: &OrderRecord, csr: &Csr) -> Result<(), Problem> {
    let device = match device_attestation(s, order)
        .and_then(|d| d.map(|d| device_shape(s, csr, d)).transpose())
    {
        Ok(d) => d,
        Err(p) => {
            s.store.fail_order(order.id, &problem_json(&p))?;
            return Err(p);
        }
    };
    let (template, dns, uris, extras) = match &device {
        Some(d) => (
            &s.config.device_template,
            Vec::new(),
            vec![d.uri.clone()],
            d.extras.clone(),
        ),
        None => (
            &s.config.workload_template,
            order.identifiers.iter().map(|i| i.value.clone()).collect(),
            Vec::new(),
            IssueExtras::default(),
        ),
    };
    let device_id = device.as_ref().map(|d| d.device_id.as_str());
    // A notBefore the order asked for may have passed while the client was validating; it
    // was checked against backdating at newOrder, so issue from now rather than refuse.
    let now = s.now();
    let not_before = order.not_before.map(|t| from_unix_seconds(t).max(now));
    for _ in 0..ISSUE_ATTEMPTS {
        let issued = s.pki.issue_with(
            &IssueRequest {
                spki_der: &csr.spki_der,
                template,
                dns_names: &dns,
                ip_addresses: &[],
                uris: &uris,
                not_before,
                not_after: order.not_after.map(from_unix_seconds),
            },
            &extras,
            now,
        );
        let cert = match issued {
            Ok(c) => c,
            Err(e) => {
                let p = match e {
                    PkiError::Request(_) => Problem::new(ProblemType::BadCsr, e.to_string()),
                    PkiError::Validity(_) => Problem::malformed(e.to_string()),
                    _ => {
                        tracing::error!(order = order.id, error = %e, "issuance failed");
                        Problem::new(ProblemType::ServerInternal, "issuance failed")
                    }
                };
                s.store.fail_order(order.id, &problem_json(&p))?;
                return Err(p);
            }
        };
        let serial = cert.serial.to_hex();
        let record = NewCert {
            serial: &serial,
            fingerprint: &cert.fingerprint,
            der: &cert.der,
            chain_pem: &cert.chain_pem,
            not_before: unix_seconds(cert.not_before),
            not_after: unix_seconds(cert.not_after),
            device_id,
        };
        match s.store.complete_issuance(order.id, &record) {
            Ok(()) => {
                tracing::info!(
                    order = order.id,
                    account = order.account_id,
                    serial = %serial,
                    fingerprint = %cert.fingerprint,
                    names = ?dns,
                    device = ?device_id,
                    "certificate issued"
                );
                if let Some(d) = &device {
                    tracing::info!(
                        target: AUDIT_TARGET,
                        action = "issue",
                        device = %d.device_id,
                        format = %d.format,
                        serial = %serial,
                        fingerprint = %cert.fingerprint,
                        account = order.account_id,
                        order = order.id,
                        "device certificate issued"
                    );
                }
                return Ok(());
            }
            // The device left `active` after its challenge: checked in the issuing
            // transaction itself, so no certificate commits for an untrusted device.
            Err(StoreError::DeviceNotActive { device, status }) => {
                let p = Problem::new(
                    ProblemType::Unauthorized,
                    format!("inventory rule device-active: device {device} is {status} (checked at issuance)"),
                );
                tracing::warn!(
                    target: AUDIT_TARGET,
                    action = "issue_refused",
                    device = %device,
                    status = %status,
                    order = order.id,
                    account = order.account_id,
                    "device certificate refused: device not active"
                );
                s.store.fail_order(order.id, &problem_json(&p))?;
                return Err(p);
            }
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                tracing::warn!(order = order.id, serial = %serial, "serial collision; issuing again");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Problem::new(
        ProblemType::ServerInternal,
        "could not record the certificate",
    ))
}

/// What a device certificate carries beyond the template: its names and the
/// attestation-format extension (ARCHITECTURE.md, "The device identity model").
struct DeviceShape {
    device_id: String,
    format: String,
    uri: String,
    extras: IssueExtras,
}

/// The device attestation of a device order: its one authorization's identifier and what its
/// device-attest-01 challenge recorded. `None` for an order without device identifiers; an
/// error for a device order whose attestation is missing (fail closed: never issue a device
/// certificate without the attested key to compare).
fn device_attestation(
    s: &AcmeServer,
    order: &OrderRecord,
) -> Result<Option<(Identifier, DeviceAttestation)>, Problem> {
    if !order.identifiers.iter().any(is_device_identifier) {
        return Ok(None);
    }
    let mut all = s.store.order_attestations(order.id)?;
    match (all.pop(), all.is_empty()) {
        (Some((ident, Some(att))), true) if is_device_identifier(&ident) => Ok(Some((ident, att))),
        _ => Err(Problem::new(
            ProblemType::Unauthorized,
            "device order without exactly one recorded device attestation",
        )),
    }
}

/// draft-ietf-acme-device-attest §5 / issue 4: the certificate is for the attested key, so
/// the CSR's public key must equal it; and the CSR may not ask for DNS names or IP addresses
/// (RFC 8555 §7.4: the CSR names exactly the order's identifiers, here a device, which the
/// CA writes itself from the validated authorization).
fn check_device_csr(csr: &Csr, attestation: &DeviceAttestation) -> Result<(), Problem> {
    // The subject (a CN included) is ignored like every other CSR field but the key: the CA
    // writes the device certificate's subject and names itself.
    if !csr.dns_names.is_empty() || !csr.ip_addresses.is_empty() {
        return Err(Problem::new(
            ProblemType::BadCsr,
            "rule csr-names: a device order's CSR must not request DNS names or IP addresses",
        ));
    }
    let same = csr.spki_der == attestation.spki_der
        || jwk_of_spki_der(&attestation.spki_der).is_some_and(|jwk| jwk == csr.jwk);
    if !same {
        return Err(Problem::new(
            ProblemType::BadCsr,
            format!(
                "rule csr-key-attested: the CSR public key is not the key the {} attestation proved to be in hardware",
                attestation.format
            ),
        ));
    }
    Ok(())
}

/// The names and extensions of a device certificate, from the order identifier (the device
/// id it names) and its recorded attestation. The CSR key is checked again here because
/// crash recovery issues from a stored CSR without passing through finalize.
fn device_shape(
    s: &AcmeServer,
    csr: &Csr,
    (ident, att): (Identifier, DeviceAttestation),
) -> Result<DeviceShape, Problem> {
    use portcullis_policy::identity as pid;
    check_device_csr(csr, &att)?;
    let internal = |what: &str| {
        tracing::error!(identifier = %ident.value, "{what}");
        Problem::new(ProblemType::ServerInternal, what.to_string())
    };
    let device_id = device_id_of(&ident).ok_or_else(|| internal("no device id"))?;
    if device_id != att.device_id {
        return Err(internal("recorded attestation names another device"));
    }
    let (head, oid) = match ident.value.rsplit_once('/') {
        Some((head, oid)) => (head, Some(oid)),
        None => (ident.value.as_str(), None),
    };
    // RFC 4043 §2 PermanentIdentifier {identifierValue, assigner}; RFC 4108 §5
    // HardwareModuleName {hwType, hwSerialNum}.
    let other_name = if ident.kind == HARDWARE_MODULE {
        oid.and_then(|oid| pid::encode_hardware_module_name_san(oid, head.as_bytes()))
    } else {
        pid::encode_permanent_identifier_san(head, oid)
    }
    .ok_or_else(|| internal("device identifier cannot be encoded"))?;
    let uri = pid::spiffe_device_uri(&s.config.trust_domain, &device_id)
        .ok_or_else(|| internal("device SPIFFE URI cannot be built"))?;
    Ok(DeviceShape {
        extras: IssueExtras {
            other_names: vec![other_name],
            extensions: vec![(
                pid::OID_ATTESTATION_FORMAT_ARCS.to_vec(),
                pid::encode_utf8_extension(&att.format),
            )],
        },
        format: att.format,
        device_id,
        uri,
    })
}

/// §7.4: "The CSR MUST indicate the exact same set of requested identifiers as the initial
/// newOrder request", as dNSName SANs and/or the commonName.
fn check_csr_names(csr: &Csr, order: &OrderRecord) -> Result<(), Problem> {
    let wanted: std::collections::BTreeSet<String> =
        order.identifiers.iter().map(|i| i.value.clone()).collect();
    let asked = csr.requested_dns_names();
    let extra: Vec<&String> = asked.difference(&wanted).collect();
    let missing: Vec<&String> = wanted.difference(&asked).collect();
    if extra.is_empty() && missing.is_empty() && csr.ip_addresses.is_empty() {
        return Ok(());
    }
    let mut p = Problem::new(
        ProblemType::BadCsr,
        "the CSR must name exactly the order's identifiers",
    );
    for name in extra {
        p = p.with_subproblem(
            ProblemType::RejectedIdentifier,
            "not in the order",
            Some(ProblemIdentifier {
                kind: "dns".into(),
                value: name.clone(),
            }),
        );
    }
    for ip in &csr.ip_addresses {
        p = p.with_subproblem(
            ProblemType::RejectedIdentifier,
            "IP addresses are not in the order",
            Some(ProblemIdentifier {
                kind: "ip".into(),
                value: ip.to_string(),
            }),
        );
    }
    for name in missing {
        p = p.with_subproblem(
            ProblemType::BadCsr,
            "in the order but missing from the CSR",
            Some(ProblemIdentifier {
                kind: "dns".into(),
                value: name.clone(),
            }),
        );
    }
    Err(p)
}

/// RFC 9773 §5: `replaces` names the certificate this order renews. It must be one of this
/// account's certificates and share at least one identifier with the new order.
fn check_replaces(
    s: &AcmeServer,
    replaces: &Value,
    account_id: i64,
    identifiers: &[Identifier],
) -> Result<(), Problem> {
    let id = replaces
        .as_str()
        .ok_or_else(|| Problem::malformed("`replaces` must be a certificate identifier"))?;
    let unknown = || Problem::malformed("`replaces` names no certificate of this CA");
    let serial = super::renewal::cert_id(s, id).ok_or_else(unknown)?;
    let cert = s.store.certificate(&serial.to_hex())?.ok_or_else(unknown)?;
    if cert.account_id != Some(account_id) {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "`replaces` names a certificate of another account",
        ));
    }
    let old = match cert.order_id {
        Some(o) => s.store.order(o, s.now_unix())?.map(|o| o.identifiers),
        None => None,
    }
    .unwrap_or_default();
    if !identifiers.iter().any(|i| old.contains(i)) {
        return Err(Problem::malformed(
            "`replaces` names a certificate that shares no identifier with this order",
        ));
    }
    Ok(())
}

fn owned_order(s: &AcmeServer, id: i64, account_id: i64) -> Result<OrderRecord, Problem> {
    let order = s
        .store
        .order(id, s.now_unix())?
        .ok_or_else(|| no_such("order"))?;
    if order.account_id != account_id {
        return Err(Problem::new(
            ProblemType::Unauthorized,
            "the order belongs to another account",
        ));
    }
    Ok(order)
}

fn order_reply(s: &AcmeServer, order: &OrderRecord, status: StatusCode) -> Response {
    let mut reply =
        Reply::json(status, &objects::order(&s.urls, order)).location(s.urls.order(order.id));
    if order.status == OrderStatus::Processing {
        reply = reply.retry_after(s.config.retry_after.as_secs());
    }
    reply.into_response()
}

fn problem_json(p: &Problem) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// A challenge token: 256 random bits, base64url (§8.1 asks for at least 128).
fn token() -> Result<String, Problem> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| Problem::new(ProblemType::ServerInternal, "no randomness available"))?;
    Ok(B64.encode(raw))
}
