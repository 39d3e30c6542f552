//! The HTTP face of [`super::Enrollment`]: two POST routes, JSON in and out, RFC 7807 problem
//! documents whose `detail` names the rule (and whose `rule` member carries it alone, for
//! agents). Bodies are bounded; unknown fields are refused. The work (a chain walk, an RSA
//! encryption, SQLite) runs on the blocking pool.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use serde::Serialize;

use super::error::{EnrollError, Rule};
use super::{Enrollment, FINISH_PATH, START_PATH};

/// Largest request body: an EK certificate, a few intermediates and an AK public area.
pub const MAX_BODY: usize = 64 << 10;

/// `POST /enroll/tpm/start` and `POST /enroll/tpm/finish`, with their state applied: merge into
/// the CA's router (`router.merge(enroll::routes(enrollment))`). Open to anyone: the EK
/// certificate (or pin), the credential activation and the inventory are the authentication.
pub fn routes(enrollment: Arc<Enrollment>) -> Router {
    Router::new()
        .route(START_PATH, post(start))
        .route(FINISH_PATH, post(finish))
        .with_state(enrollment)
}

/// `application/problem+json` (RFC 7807 §3), type `urn:portcullis:enroll:<kind>`.
#[derive(Debug, Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    /// The failed rule's stable name (an RFC 7807 §3.2 extension member).
    rule: &'static str,
}

fn problem(status: StatusCode, kind: &str, title: &'static str, e: &EnrollError) -> Response {
    let doc = Problem {
        kind: format!("urn:portcullis:enroll:{kind}"),
        title,
        status: status.as_u16(),
        detail: e.to_string(),
        rule: e.rule.name(),
    };
    let body = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl IntoResponse for EnrollError {
    fn into_response(self) -> Response {
        match self.rule {
            Rule::Request | Rule::EkMissing => problem(
                StatusCode::BAD_REQUEST,
                "malformed",
                "Malformed request",
                &self,
            ),
            Rule::SessionUnknown => {
                problem(StatusCode::NOT_FOUND, "not-found", "No such session", &self)
            }
            Rule::Capacity => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many pending enrollments",
                &self,
            ),
            Rule::Internal => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server-internal",
                "Internal error",
                &self,
            ),
            _ => problem(
                StatusCode::FORBIDDEN,
                "refused",
                "Enrollment refused",
                &self,
            ),
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => EnrollError::internal("serialising the answer", e).into_response(),
    }
}

/// The request as `T`: `application/json`, at most [`MAX_BODY`] bytes, no unknown fields.
async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, EnrollError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(EnrollError::new(
            Rule::Request,
            "the body must be application/json",
        ));
    }
    let bytes: Bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(EnrollError::new(
                Rule::Request,
                format!("the body could not be read or exceeds {MAX_BODY} bytes"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| EnrollError::new(Rule::Request, format!("invalid JSON: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnrollError> + Send + 'static,
) -> Result<T, EnrollError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(EnrollError::internal("the enrollment task", e)),
    }
}

async fn start(State(e): State<Arc<Enrollment>>, headers: HeaderMap, body: Body) -> Response {
    let req: super::StartRequest = match read_json(&headers, body).await {
        Ok(r) => r,
        Err(err) => {
            super::audit_refusal("start", "", &err);
            return err.into_response();
        }
    };
    match blocking(move || e.start(&req)).await {
        Ok(resp) => json(&resp),
        Err(err) => err.into_response(),
    }
}

async fn finish(State(e): State<Arc<Enrollment>>, headers: HeaderMap, body: Body) -> Response {
    let req: super::FinishRequest = match read_json(&headers, body).await {
        Ok(r) => r,
        Err(err) => {
            super::audit_refusal("finish", "", &err);
            return err.into_response();
        }
    };
    match blocking(move || e.finish(&req)).await {
        Ok(resp) => json(&resp),
        Err(err) => err.into_response(),
    }
}
