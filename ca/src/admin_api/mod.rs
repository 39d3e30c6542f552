//! The inventory admin API: JSON over the CA's HTTPS listener, under [`PREFIX`]
//! (`/admin/v1`). See `docs/admin-api.md` and `docs/openapi/admin-api.yaml`.
//!
//! | route | what |
//! |---|---|
//! | `GET /devices` | every device |
//! | `GET /devices/{id}` | one device and its status history |
//! | `PUT /devices/{id}` | create (201) or update (200) one device |
//! | `POST /devices/{id}/status` | set the status, with a reason; leaving `active` revokes |
//! | `POST /import?format=csv\|json&dry_run=` | an MDM/ITAM export, all or nothing |
//!
//! Every route needs a credential ([`auth`]); every error is an RFC 7807 problem document;
//! request bodies are bounded and JSON requests refuse unknown fields. Store calls run on the
//! blocking pool: an import of many thousand rows must not stall ACME on the same runtime.

pub mod auth;
pub mod client;
pub mod model;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::UnixTime;
use serde::Deserialize;

use crate::clock::Clock;
use crate::inventory::import::{self, DevicePatch, ImportFormat, ImportRow, RowError};
use crate::inventory::{Inventory, AUDIT_TARGET};
use crate::store::{DeviceChange, StoreError};
use crate::tls::PeerCertificates;

pub use auth::{Actor, AdminApiError, AdminAuth, AuthMethod, TokenTable};
use model::*;

/// Where the binary mounts [`AdminApi::router`].
pub const PREFIX: &str = "/admin/v1";
/// Largest import body.
pub const MAX_IMPORT_BODY: usize = 8 << 20;
/// Largest body of any other request.
pub const MAX_BODY: usize = 64 << 10;
/// `source` of devices the admin API creates without naming one.
pub const ADMIN_SOURCE: &str = "admin-api";
/// `source` of devices an import creates without naming one.
pub const IMPORT_SOURCE: &str = "import";

/// Where the admin API's credentials come from (`[ca.admin_api]`). Neither set: the API is
/// off, and `/admin/v1/...` is a 404 like any unknown path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminApiSettings {
    /// `name token` per line, `#` comments; must be 0600.
    pub tokens_file: Option<PathBuf>,
    /// PEM files of the roots admin client certificates must chain to.
    pub client_roots: Vec<PathBuf>,
}

impl AdminApiSettings {
    pub fn enabled(&self) -> bool {
        self.tokens_file.is_some() || !self.client_roots.is_empty()
    }
}

pub struct AdminApi {
    inventory: Arc<Inventory>,
    clock: Arc<dyn Clock>,
    auth: AdminAuth,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl AdminApi {
    /// Loads the credentials; `Ok(None)` when the settings enable nothing. `ca_certs` are the
    /// CA's own root and intermediate (DER), which may not be admin roots.
    pub fn from_settings(
        settings: &AdminApiSettings,
        inventory: Arc<Inventory>,
        clock: Arc<dyn Clock>,
        ca_certs: &[Vec<u8>],
    ) -> Result<Option<Arc<Self>>, AdminApiError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let tokens = settings
            .tokens_file
            .as_deref()
            .map(TokenTable::load)
            .transpose()?;
        let verifier = if settings.client_roots.is_empty() {
            None
        } else {
            Some(auth::client_verifier(&settings.client_roots, ca_certs)?)
        };
        Ok(Some(Arc::new(Self::new(
            inventory,
            clock,
            AdminAuth::new(tokens, verifier),
        ))))
    }

    pub fn new(inventory: Arc<Inventory>, clock: Arc<dyn Clock>, auth: AdminAuth) -> Self {
        Self {
            inventory,
            clock,
            auth,
        }
    }

    /// The verifier the HTTPS listener must request client certificates with, if admin
    /// client certificates are configured.
    pub fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.auth.verifier()
    }

    /// The routes, relative to [`PREFIX`]: mount with `Router::nest(PREFIX, api.router())`.
    /// Everything under it, unknown paths included, requires a credential first, so the API
    /// cannot be mapped without one.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/devices", get(list_devices))
            .route("/devices/{id}", get(show_device).put(put_device))
            .route("/devices/{id}/status", post(set_status))
            .route("/devices/{id}/eks", get(list_eks).post(pin_ek))
            .route("/devices/{id}/eks/unbind", post(unbind_eks))
            .route("/import", post(import_devices))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authenticate,
            ))
            .with_state(self.clone())
    }

    fn now(&self) -> UnixTime {
        UnixTime::since_unix_epoch(
            self.clock
                .now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Problems (RFC 7807)

/// An error answer: `application/problem+json` with a `type` URI of the form
/// `urn:portcullis:admin:<kind>`.
#[derive(Debug)]
pub(crate) struct ApiProblem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<RowError>,
}

impl ApiProblem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token or admin client certificate is required",
        )
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "Malformed request",
            detail,
        )
    }

    fn invalid_device(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-device",
            "Invalid device",
            detail,
        )
    }

    /// A store's bare "no such device" becomes one that names `id`.
    fn naming_device(self, id: &str) -> Self {
        if self.status == StatusCode::NOT_FOUND {
            Self::no_device(id)
        } else {
            self
        }
    }

    fn no_device(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no device `{id}`"),
        )
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server-internal",
            "Internal error",
            "the request could not be completed; see the CA's log",
        )
    }
}

impl From<StoreError> for ApiProblem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no such {what}"),
            ),
            StoreError::Conflict(detail) => {
                Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            e => {
                // Database errors are for the log, not for clients.
                tracing::error!(error = %e, "admin API storage failure");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiProblem {
    fn into_response(self) -> Response {
        let doc = ProblemDocument {
            kind: format!("urn:portcullis:admin:{}", self.kind),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let body = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3; no error code: we do not say what was wrong.
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiProblem>;

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (status, body).into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "admin API response serialisation");
            ApiProblem::internal().into_response()
        }
    }
}

async fn not_found() -> ApiProblem {
    ApiProblem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such resource",
    )
}

async fn method_not_allowed() -> ApiProblem {
    ApiProblem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this resource does not support the method",
    )
}

// ---------------------------------------------------------------------------------------------
// Plumbing

async fn authenticate(State(api): State<Arc<AdminApi>>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerCertificates>();
    match api.auth.authenticate(req.headers(), peer, api.now()) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(why) => {
            // The caller learns nothing; the log says everything but secrets.
            tracing::warn!(
                target: AUDIT_TARGET,
                action = "authenticate",
                outcome = "denied",
                reason = ?why,
                method = %req.method(),
                path = req.uri().path(),
                "admin API request refused"
            );
            ApiProblem::unauthorized().into_response()
        }
    }
}

/// Reads at most `limit` bytes; more is a 413 without reading the rest.
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiProblem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                format!("the body exceeds {limit} bytes"),
            ))
        }
        Err(_) => Err(ApiProblem::malformed("the request body could not be read")),
    }
}

/// JSON requests must say so (`application/json`, parameters allowed).
fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let ok = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ApiProblem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the body must be application/json",
        ))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiProblem::malformed(format!("invalid JSON: {e}")))
}

fn path_id(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiProblem::malformed(format!("bad path: {}", e.body_text())))
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiProblem::from),
        Err(e) => {
            tracing::error!(error = %e, "admin API task failed");
            Err(ApiProblem::internal())
        }
    }
}

/// The device id of the path and the JSON body of a request that changes that device: the
/// checks every such route makes, in the same order (a bad body is a 4xx before the id is
/// looked at; an id that could never be stored is a 404).
async fn device_change_request<T: serde::de::DeserializeOwned>(
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(String, T)> {
    let id = path_id(path)?;
    require_json(headers)?;
    let body = read_body(body, MAX_BODY).await?;
    let req: T = parse_json(&body)?;
    if import::check_device_id(&id).is_err() {
        return Err(ApiProblem::no_device(&id));
    }
    Ok((id, req))
}

/// The device id of the path; an id that could never be stored cannot exist (404).
fn device_path(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let id = path_id(path)?;
    if import::check_device_id(&id).is_err() {
        return Err(ApiProblem::no_device(&id));
    }
    Ok(id)
}

fn check_reason(reason: &str) -> ApiResult<()> {
    if reason.trim().is_empty() {
        return Err(ApiProblem::invalid_device(
            "a non-empty `reason` is required",
        ));
    }
    import::check_text(reason).map_err(|m| ApiProblem::invalid_device(format!("reason: {m}")))
}

fn device_result(change: DeviceChange) -> (StatusCode, DeviceResult) {
    match change {
        DeviceChange::Added(d) => (
            StatusCode::CREATED,
            DeviceResult {
                outcome: Outcome::Created,
                device: DeviceView::from(&d),
                changes: Vec::new(),
                revoked_serials: Vec::new(),
            },
        ),
        DeviceChange::Updated {
            before,
            after,
            revoked,
        } => (
            StatusCode::OK,
            DeviceResult {
                outcome: Outcome::Updated,
                changes: import::field_changes(&before, &after),
                device: DeviceView::from(&after),
                revoked_serials: revoked,
            },
        ),
        DeviceChange::Unchanged(d) => (
            StatusCode::OK,
            DeviceResult {
                outcome: Outcome::Unchanged,
                device: DeviceView::from(&d),
                changes: Vec::new(),
                revoked_serials: Vec::new(),
            },
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn list_devices(State(api): State<Arc<AdminApi>>) -> ApiResult<Response> {
    let inv = api.inventory.clone();
    let devices = blocking(move || inv.devices()).await?;
    Ok(json(
        StatusCode::OK,
        &DeviceList {
            devices: devices.iter().map(DeviceView::from).collect(),
        },
    ))
}

async fn show_device(
    State(api): State<Arc<AdminApi>>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = device_path(path)?;
    let inv = api.inventory.clone();
    let key = id.clone();
    let found = blocking(move || {
        let Some(device) = inv.device(&key)? else {
            return Ok(None);
        };
        Ok(Some((device, inv.history(&key)?)))
    })
    .await?;
    let Some((device, history)) = found else {
        return Err(ApiProblem::no_device(&id));
    };
    Ok(json(
        StatusCode::OK,
        &DeviceDetail {
            device: DeviceView::from(&device),
            history: history.iter().map(HistoryView::from).collect(),
        },
    ))
}

async fn put_device(
    State(api): State<Arc<AdminApi>>,
    Extension(actor): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = path_id(path)?;
    require_json(&headers)?;
    let body = read_body(body, MAX_BODY).await?;
    let put: PutDevice = parse_json(&body)?;
    import::check_device_id(&id).map_err(ApiProblem::invalid_device)?;
    if put.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiProblem::invalid_device(
            "the `id` in the body differs from the one in the path",
        ));
    }
    for (name, value) in [
        ("hardware_module", &put.hardware_module),
        ("platform", &put.platform),
        ("owner", &put.owner),
        ("source", &put.source),
    ] {
        if let Some(v) = value {
            import::check_text(v)
                .map_err(|m| ApiProblem::invalid_device(format!("{name}: {m}")))?;
        }
    }
    if put.source.as_deref() == Some("") {
        return Err(ApiProblem::invalid_device("source: empty"));
    }
    let tags = import::check_tags(put.tags.iter().map(String::as_str))
        .map_err(|m| ApiProblem::invalid_device(format!("tags: {m}")))?;
    // A status change through PUT is a trust decision like any other: it needs a reason.
    let reason = match (&put.status, &put.reason) {
        (_, Some(r)) => {
            check_reason(r)?;
            r.clone()
        }
        (Some(_), None) => {
            return Err(ApiProblem::invalid_device(
                "a `reason` is required when `status` is given",
            ))
        }
        (None, None) => "set through the admin API".to_string(),
    };
    // The descriptive fields are replaced; status and source are kept when not given, merged
    // inside the store's transaction.
    let patch = DevicePatch {
        id: id.clone(),
        hw_module_id: Some(put.hardware_module),
        platform: Some(put.platform),
        owner: Some(put.owner),
        tags: Some(tags),
        status: put.status,
        source: put.source,
    };
    let inv = api.inventory.clone();
    let who = actor.name.clone();
    let change = blocking(move || {
        let rows = [ImportRow { line: 0, patch }];
        let mut outcome = inv.apply(&rows, ADMIN_SOURCE, "put", &who, &reason, false)?;
        outcome
            .changes
            .pop()
            .map(|(_, c)| c)
            .ok_or(StoreError::NotFound("device"))
    })
    .await?;
    let (status, result) = device_result(change);
    Ok(json(status, &result))
}

async fn set_status(
    State(api): State<Arc<AdminApi>>,
    Extension(actor): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (id, req): (String, StatusRequest) = device_change_request(path, &headers, body).await?;
    check_reason(&req.reason)?;
    let inv = api.inventory.clone();
    let key = id.clone();
    let change = blocking(move || inv.set_status(&key, req.status, &actor.name, &req.reason))
        .await
        .map_err(|p| p.naming_device(&id))?;
    let device_change = if change.before == change.after {
        DeviceChange::Unchanged(change.after)
    } else {
        DeviceChange::Updated {
            before: change.before,
            after: change.after,
            revoked: change.revoked,
        }
    };
    let (_, result) = device_result(device_change);
    Ok(json(StatusCode::OK, &result))
}

async fn list_eks(
    State(api): State<Arc<AdminApi>>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = device_path(path)?;
    let inv = api.inventory.clone();
    let key = id.clone();
    let eks = blocking(move || {
        if inv.device(&key)?.is_none() {
            return Ok(None);
        }
        inv.device_eks(&key).map(Some)
    })
    .await?
    .ok_or_else(|| ApiProblem::no_device(&id))?;
    let list = EkList {
        eks: eks.iter().map(EkView::from).collect(),
    };
    Ok(json(StatusCode::OK, &list))
}

async fn pin_ek(
    State(api): State<Arc<AdminApi>>,
    Extension(actor): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (id, req): (String, PinEkRequest) = device_change_request(path, &headers, body).await?;
    check_reason(&req.reason)?;
    let hash = req.ek_sha256.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiProblem::invalid_device(
            "ek_sha256: 64 hex digits, the SHA-256 of the EK's SubjectPublicKeyInfo DER",
        ));
    }
    let inv = api.inventory.clone();
    let key = id.clone();
    blocking(move || inv.pin_ek(&key, &hash, &actor.name, &req.reason))
        .await
        .map_err(|p| p.naming_device(&id))?;
    list_eks(State(api), Ok(Path(id))).await
}

async fn unbind_eks(
    State(api): State<Arc<AdminApi>>,
    Extension(actor): Extension<Actor>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (id, req): (String, UnbindEksRequest) = device_change_request(path, &headers, body).await?;
    check_reason(&req.reason)?;
    let inv = api.inventory.clone();
    let key = id.clone();
    let removed = blocking(move || inv.unbind_eks(&key, &actor.name, &req.reason))
        .await
        .map_err(|p| p.naming_device(&id))?;
    Ok(json(StatusCode::OK, &UnbindEksResult { removed }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    format: String,
    #[serde(default)]
    dry_run: bool,
    /// Goes into the history of every status an import changes.
    #[serde(default)]
    reason: Option<String>,
}

async fn import_devices(
    State(api): State<Arc<AdminApi>>,
    Extension(actor): Extension<Actor>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let Query(q) =
        query.map_err(|e| ApiProblem::malformed(format!("bad query: {}", e.body_text())))?;
    let format: ImportFormat = q.format.parse().map_err(ApiProblem::malformed)?;
    let reason = match q.reason {
        Some(r) => {
            check_reason(&r)?;
            r
        }
        None => format!("import ({format})"),
    };
    let body = read_body(body, MAX_IMPORT_BODY).await?;
    // Parsing is CPU work proportional to the body: off the async workers too.
    let rows = match tokio::task::spawn_blocking(move || import::parse(&body, format)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(errors)) => {
            let n = errors.len();
            let mut p = ApiProblem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-import",
                "Invalid import",
                format!("{n} error(s); nothing was applied"),
            );
            p.errors = errors;
            return Err(p);
        }
        Err(e) => {
            tracing::error!(error = %e, "import parser task failed");
            return Err(ApiProblem::internal());
        }
    };
    let inv = api.inventory.clone();
    let dry_run = q.dry_run;
    let outcome = blocking(move || {
        inv.apply(
            &rows,
            IMPORT_SOURCE,
            "import",
            &actor.name,
            &reason,
            dry_run,
        )
    })
    .await?;
    let mut report = ImportReport {
        format: format.to_string(),
        dry_run,
        applied: !dry_run,
        summary: ImportSummary::default(),
        added: Vec::new(),
        updated: Vec::new(),
        unchanged: Vec::new(),
    };
    for (line, change) in outcome.changes {
        match change {
            DeviceChange::Added(d) => report.added.push(ImportAdded {
                line,
                device: DeviceView::from(&d),
            }),
            DeviceChange::Updated {
                before,
                after,
                revoked,
            } => {
                report.summary.revoked += revoked.len();
                report.updated.push(ImportUpdated {
                    line,
                    id: after.id.clone(),
                    changes: import::field_changes(&before, &after),
                    revoked_serials: revoked,
                })
            }
            DeviceChange::Unchanged(d) => report.unchanged.push(ImportUnchanged { line, id: d.id }),
        }
    }
    report.summary.added = report.added.len();
    report.summary.updated = report.updated.len();
    report.summary.unchanged = report.unchanged.len();
    Ok(json(StatusCode::OK, &report))
}
