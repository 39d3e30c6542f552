//! Revocation for enforcement points that are not ours (nginx, HAProxy, RADIUS/EAP-TLS,
//! VPNs): a CRL (RFC 5280 §5) and an OCSP responder (RFC 6960) for the intermediate.
//!
//! Our own enforcement points learn about revocations from the status feed within a second;
//! these two protocols are for everything else. Both are answered from the store, the truth:
//!
//! - [`crl`]: a complete CRL, re-signed on every change of the revoked set (an inventory
//!   event, an ACME revokeCert noticed by a once-a-second look at the revoked set, as
//!   [`crate::status`] does) and at half of its validity; held in an `ArcSwap` and served as
//!   DER (`application/pkix-crl`, RFC 5280 §4.2.1.13 / RFC 2585 §3).
//! - [`ocsp`]: answers per request from the store, signed by a delegated responder
//!   certificate that is re-issued before it expires.
//!
//! Both are served over plain HTTP (a relying party fetching a CRL or asking OCSP must not
//! need to trust our TLS first — RFC 5280 §4.2.1.13, RFC 6960 §A.1) on `[ca] http_listen`,
//! and on the HTTPS router under the same paths:
//!
//! | path | what |
//! |---|---|
//! | `GET /crl/intermediate.crl` | the CRL, DER |
//! | `POST /ocsp` (`application/ocsp-request`) | OCSP, RFC 6960 §A.1 |
//! | `GET /ocsp/{base64 of the DER request}` | OCSP, RFC 6960 §A.1 |
//! | `POST /`, `GET /{base64}` | the same, plain listener only: what `openssl ocsp -url http://host:port` and nginx `ssl_ocsp_responder http://host:port` send |

pub mod crl;
pub mod der;
pub mod ocsp;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use tokio::sync::broadcast::error::RecvError;

use crate::clock::{unix_seconds, Clock};
use crate::inventory::Inventory;
use crate::pki::{pem, Authority, PkiError};
use crate::store::{AcmeStore, NewCert, SqliteStore, StoreError};
use crl::Crl;
use ocsp::{IssuerHashes, Responder, ResponseStatus, Status};

/// How often the revoked set is compared with the CRL's (revocations made outside the
/// inventory: ACME revokeCert) and the CRL's and responder's ages are checked.
const RESYNC: Duration = Duration::from_secs(1);
/// Largest OCSP request body accepted; real ones are around a hundred bytes.
const MAX_REQUEST: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("CA database: {0}")]
    Store(#[from] StoreError),
}

/// The CRL and the OCSP responder of one issuing CA.
pub struct Revocation {
    pki: Arc<Authority>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    ca_name: String,
    crl: ArcSwap<Crl>,
    responder: ArcSwap<Responder>,
    issuer: IssuerHashes,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("crl_number", &self.crl.load().number)
            .field("responder", &self.responder.load())
            .finish_non_exhaustive()
    }
}

impl Revocation {
    /// Signs the first CRL and issues the first responder certificate (recording it in the
    /// store: every certificate the CA signs has its row).
    pub fn new(
        pki: Arc<Authority>,
        store: Arc<SqliteStore>,
        clock: Arc<dyn Clock>,
        ca_name: &str,
    ) -> Result<Self, RevocationError> {
        let now = clock.now();
        let revoked = store.revoked_certificates(unix_seconds(now))?;
        let crl = crl::build(&pki, revoked, crl::next_number(0, now), now)?;
        let responder = issue_responder(&pki, &store, ca_name, now)?;
        Ok(Self {
            issuer: IssuerHashes::of(pki.intermediate_der())?,
            pki,
            store,
            clock,
            ca_name: ca_name.to_string(),
            crl: ArcSwap::from_pointee(crl),
            responder: ArcSwap::from_pointee(responder),
        })
    }

    /// The current CRL.
    pub fn crl(&self) -> Arc<Crl> {
        self.crl.load_full()
    }

    /// The current responder certificate, PEM.
    pub fn responder_pem(&self) -> String {
        self.responder.load().pem()
    }

    /// Re-signs the CRL if the revoked set changed or it is half-way to nextUpdate, and
    /// re-issues the responder certificate when it is due. Blocking (store reads, signing).
    /// Returns whether a new CRL was published.
    pub fn refresh(&self) -> Result<bool, RevocationError> {
        let now = self.clock.now();
        if self.responder.load().is_due(now) {
            let next = issue_responder(&self.pki, &self.store, &self.ca_name, now)?;
            tracing::info!(serial = %next.serial, not_after = unix_seconds(next.not_after), "OCSP responder certificate renewed");
            self.responder.store(Arc::new(next));
        }
        let current = self.crl.load();
        let revoked = self.store.revoked_certificates(unix_seconds(now))?;
        if revoked == current.revoked && !current.is_due(now) {
            return Ok(false);
        }
        let next = crl::build(
            &self.pki,
            revoked,
            crl::next_number(current.number, now),
            now,
        )?;
        tracing::info!(
            number = next.number,
            entries = next.revoked.len(),
            "CRL published"
        );
        self.crl.store(Arc::new(next));
        Ok(true)
    }

    /// Keeps the CRL and the responder current until `shutdown` resolves: at once on an
    /// inventory change, otherwise once a second. Errors are logged; the last good CRL
    /// stays (relying parties keep a valid, if older, CRL until its nextUpdate).
    pub async fn follow(
        self: Arc<Self>,
        inventory: Arc<Inventory>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut events = inventory.subscribe();
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                event = events.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("CRL/OCSP refresh: {e}"),
                Err(e) => tracing::error!("CRL/OCSP refresh task: {e}"),
            }
        }
    }

    /// The DER OCSPResponse for a DER OCSPRequest. Never fails: a bad request gets
    /// `malformedRequest`, a store failure `tryLater` (RFC 6960 §2.3). Blocking.
    pub fn respond(&self, request: &[u8]) -> Vec<u8> {
        let parsed = match ocsp::parse_request(request) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return ocsp::error_response(ResponseStatus::MalformedRequest);
            }
        };
        // RFC 5019 §2.2.3: a responder that cannot answer for an issuer says unauthorized.
        if !parsed.cert_ids.iter().any(|id| self.issuer.matches(id)) {
            return ocsp::error_response(ResponseStatus::Unauthorized);
        }
        let mut answers = Vec::with_capacity(parsed.cert_ids.len());
        for id in &parsed.cert_ids {
            let status = match ocsp::serial_key(id.serial) {
                Some(key) if self.issuer.matches(id) => match self.store.certificate_status(&key) {
                    Ok(row) => Status::of(row.as_ref()),
                    Err(e) => {
                        tracing::error!("OCSP status lookup: {e}");
                        return ocsp::error_response(ResponseStatus::TryLater);
                    }
                },
                _ => Status::Unknown,
            };
            answers.push((id.raw, status));
        }
        let nonce = parsed
            .nonce
            .filter(|n| n.len() <= ocsp::MAX_NONCE_EXTN_VALUE);
        let responder = self.responder.load();
        match responder.sign(
            &answers,
            nonce,
            self.pki.intermediate_der(),
            self.clock.now(),
        ) {
            Ok(der) => der,
            Err(e) => {
                tracing::error!("OCSP signing: {e}");
                ocsp::error_response(ResponseStatus::InternalError)
            }
        }
    }

    /// `/crl/…` and `/ocsp…`, for the HTTPS router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(&format!("/crl/{}", crl::CRL_FILE), get(get_crl))
            .route("/ocsp", post(post_ocsp))
            .route("/ocsp/", post(post_ocsp).get(get_ocsp))
            .route("/ocsp/{*request}", get(get_ocsp))
            .with_state(self.clone())
    }

    /// [`Revocation::router`] plus OCSP at `/`, for the plain-HTTP listener: OCSP clients
    /// given a bare `http://host:port` responder URL post to `/` or get `/{base64}`.
    pub fn plain_router(self: &Arc<Self>) -> Router {
        let root = Router::new()
            .route("/", post(post_ocsp))
            .fallback(get(get_ocsp))
            .with_state(self.clone());
        self.router().merge(root)
    }
}

fn issue_responder(
    pki: &Authority,
    store: &SqliteStore,
    ca_name: &str,
    now: SystemTime,
) -> Result<Responder, RevocationError> {
    let responder = Responder::issue(pki, ca_name, now)?;
    let pem = responder.pem();
    store.record_certificate(&NewCert {
        serial: &responder.serial.to_hex(),
        fingerprint: &responder.fingerprint(),
        der: &responder.cert_der,
        chain_pem: &format!(
            "{pem}{}",
            pem::encode("CERTIFICATE", pki.intermediate_der())
        ),
        not_before: unix_seconds(responder.not_before),
        not_after: unix_seconds(responder.not_after),
        device_id: None,
    })?;
    Ok(responder)
}

async fn get_crl(State(rev): State<Arc<Revocation>>) -> Response {
    let crl = rev.crl();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkix-crl"),
            ),
            // A revocation must reach the next fetch: no shared cache may keep an old CRL.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        crl.der.clone(),
    )
        .into_response()
}

async fn post_ocsp(
    State(rev): State<Arc<Revocation>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // RFC 6960 §A.1: POST carries Content-Type application/ocsp-request. Not insisting on it
    // keeps curl-and-shell clients working; the body is parsed strictly either way.
    let _ = headers;
    if body.len() > MAX_REQUEST {
        return ocsp_reply(ocsp::error_response(ResponseStatus::MalformedRequest));
    }
    answer(rev, body.to_vec()).await
}

async fn get_ocsp(State(rev): State<Arc<Revocation>>, uri: Uri) -> Response {
    // RFC 6960 §A.1: GET {url}/{url-encoding of base-64 encoding of the DER OCSPRequest}.
    // The raw path is decoded here rather than by a router parameter: base64 carries `/`
    // and `+`, which clients may or may not percent-encode.
    let path = uri.path();
    let encoded = path
        .strip_prefix("/ocsp/")
        .unwrap_or_else(|| path.trim_start_matches('/'));
    let request = percent_decode(encoded).and_then(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim_end())
            .ok()
    });
    match request {
        Some(der) if der.len() <= MAX_REQUEST => answer(rev, der).await,
        _ => ocsp_reply(ocsp::error_response(ResponseStatus::MalformedRequest)),
    }
}

async fn answer(rev: Arc<Revocation>, request: Vec<u8>) -> Response {
    match tokio::task::spawn_blocking(move || rev.respond(&request)).await {
        Ok(der) => ocsp_reply(der),
        Err(_) => ocsp_reply(ocsp::error_response(ResponseStatus::InternalError)),
    }
}

/// RFC 6960 §A.1: every answer, errors included, is an OCSPResponse with 200 and
/// `application/ocsp-response`.
fn ocsp_reply(der: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/ocsp-response"),
            ),
            // Responses are signed per request and may change with the next status change.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        der,
    )
        .into_response()
}

/// Percent-decoding of a path segment (RFC 3986 §2.1); `None` on a broken escape.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The plain-HTTP listener: CRL and OCSP only, until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("MEow%2Bab%2F%3D").as_deref(),
            Some("MEow+ab/=")
        );
        assert_eq!(percent_decode("a/b+c").as_deref(), Some("a/b+c"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
