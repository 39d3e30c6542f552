//! A client of the admin API, for the binary's `portcullis ca device ...` commands: hyper 1
//! over rustls, trusting only the CA bundle given (the CA serves HTTPS with a certificate it
//! issues itself), authenticating with a bearer token or an admin client certificate.
//!
//! Errors carry the server's RFC 7807 problem document, per-row import errors included, so the
//! CLI can print exactly what the server said.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_config::DeviceStatus;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::model::{
    DeviceDetail, DeviceList, DeviceResult, DeviceView, EkList, ImportReport, PinEkRequest,
    ProblemDocument, PutDevice, StatusRequest, UnbindEksRequest, UnbindEksResult,
};
use crate::inventory::import::{check_device_id, ImportFormat};
use crate::pki::pem;

/// A whole request, connection included. Imports of large files take a while on the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response read (a list of many devices).
const MAX_RESPONSE: usize = 64 << 20;

/// How the client authenticates.
#[derive(Clone)]
pub enum Credential {
    /// A bearer token from the server's tokens file.
    Token(String),
    /// PEM files: the admin certificate (chain, leaf first) and its private key.
    ClientCert { cert: PathBuf, key: PathBuf },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::ClientCert { cert, key } => f
                .debug_struct("ClientCert")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("admin API client: {0}")]
    Config(String),
    #[error("invalid device id: {0}")]
    InvalidId(String),
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("request to {url} timed out after {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    /// The server answered with a problem document.
    #[error("{}", describe(.0))]
    Problem(ProblemDocument),
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer (HTTP {status}): {message}")]
    Unexpected { status: u16, message: String },
}

impl ClientError {
    /// The problem document, if the server sent one.
    pub fn problem(&self) -> Option<&ProblemDocument> {
        match self {
            ClientError::Problem(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem(p) => Some(p.status),
            ClientError::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn describe(p: &ProblemDocument) -> String {
    let mut s = format!("{} (HTTP {}): {}", p.title, p.status, p.detail);
    for e in &p.errors {
        s.push_str(&format!("\n  {e}"));
    }
    s
}

pub struct AdminClient {
    /// `https://host:port`, no trailing slash.
    base: String,
    authorization: Option<HeaderValue>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// `base_url` is the CA's (`https://ca.example:8443`; the API lives under `/admin/v1`).
    /// The server must present a certificate chaining to a root in `ca_bundle_pem` (the CA's
    /// `bundle.pem`); nothing else is trusted. Reads the files now, so a wrong path fails
    /// here and not on the first call.
    pub fn new(
        base_url: &str,
        ca_bundle_pem: &Path,
        credential: Credential,
    ) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| ClientError::Config(format!("base URL `{base}`: {e}")))?;
        // A bearer token over plain HTTP would be readable by anyone on the path.
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ClientError::Config(format!(
                "base URL `{base}` must be https://host[:port]"
            )));
        }
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            return Err(ClientError::Config(format!(
                "base URL `{base}` must not have a path"
            )));
        }
        let file_err = |path: &Path, message: String| ClientError::File {
            path: path.to_path_buf(),
            message,
        };
        let bundle = std::fs::read_to_string(ca_bundle_pem)
            .map_err(|e| file_err(ca_bundle_pem, e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let ders = pem::decode_all(&bundle, "CERTIFICATE")
            .map_err(|e| file_err(ca_bundle_pem, e.to_string()))?;
        if ders.is_empty() {
            return Err(file_err(ca_bundle_pem, "no CERTIFICATE in the file".into()));
        }
        for der in ders {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| file_err(ca_bundle_pem, e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
        let (tls, authorization) = match credential {
            Credential::Token(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| {
                        ClientError::Config("the token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                (builder.with_no_client_auth(), Some(value))
            }
            Credential::ClientCert { cert, key } => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                    .map_err(|e| file_err(&cert, e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| file_err(&cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(file_err(&cert, "no CERTIFICATE in the file".into()));
                }
                let key_der = PrivateKeyDer::from_pem_file(&key)
                    .map_err(|e| file_err(&key, e.to_string()))?;
                let config = builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| file_err(&key, e.to_string()))?;
                (config, None)
            }
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            base,
            authorization,
            http,
        })
    }

    /// `GET /admin/v1/devices`.
    pub async fn list(&self) -> Result<Vec<DeviceView>, ClientError> {
        let list: DeviceList = self
            .call(Method::GET, "/admin/v1/devices".into(), None, Bytes::new())
            .await?;
        Ok(list.devices)
    }

    /// `GET /admin/v1/devices/{id}`: the device and its history.
    pub async fn show(&self, id: &str) -> Result<DeviceDetail, ClientError> {
        check_device_id(id).map_err(ClientError::InvalidId)?;
        self.call(
            Method::GET,
            format!("/admin/v1/devices/{id}"),
            None,
            Bytes::new(),
        )
        .await
    }

    /// `PUT /admin/v1/devices/{id}` with `device.id` as the id (required here).
    pub async fn put(&self, device: &PutDevice) -> Result<DeviceResult, ClientError> {
        let id = device
            .id
            .as_deref()
            .ok_or_else(|| ClientError::InvalidId("PutDevice.id must be set".into()))?;
        check_device_id(id).map_err(ClientError::InvalidId)?;
        let body = serde_json::to_vec(device).map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(
            Method::PUT,
            format!("/admin/v1/devices/{id}"),
            Some("application/json"),
            body.into(),
        )
        .await
    }

    /// `POST /admin/v1/devices/{id}/status`.
    pub async fn set_status(
        &self,
        id: &str,
        status: DeviceStatus,
        reason: &str,
    ) -> Result<DeviceResult, ClientError> {
        check_device_id(id).map_err(ClientError::InvalidId)?;
        let body = serde_json::to_vec(&StatusRequest {
            status,
            reason: reason.to_string(),
        })
        .map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(
            Method::POST,
            format!("/admin/v1/devices/{id}/status"),
            Some("application/json"),
            body.into(),
        )
        .await
    }

    /// `GET /admin/v1/devices/{id}/eks`.
    pub async fn eks(&self, id: &str) -> Result<EkList, ClientError> {
        check_device_id(id).map_err(ClientError::InvalidId)?;
        self.call(
            Method::GET,
            format!("/admin/v1/devices/{id}/eks"),
            None,
            Bytes::new(),
        )
        .await
    }

    /// `POST /admin/v1/devices/{id}/eks`: pin the EK whose SPKI hashes to `ek_sha256`.
    pub async fn pin_ek(
        &self,
        id: &str,
        ek_sha256: &str,
        reason: &str,
    ) -> Result<EkList, ClientError> {
        check_device_id(id).map_err(ClientError::InvalidId)?;
        let body = serde_json::to_vec(&PinEkRequest {
            ek_sha256: ek_sha256.to_string(),
            reason: reason.to_string(),
        })
        .map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(
            Method::POST,
            format!("/admin/v1/devices/{id}/eks"),
            Some("application/json"),
            body.into(),
        )
        .await
    }

    /// `POST /admin/v1/devices/{id}/eks/unbind`.
    pub async fn unbind_eks(&self, id: &str, reason: &str) -> Result<UnbindEksResult, ClientError> {
        check_device_id(id).map_err(ClientError::InvalidId)?;
        let body = serde_json::to_vec(&UnbindEksRequest {
            reason: reason.to_string(),
        })
        .map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(
            Method::POST,
            format!("/admin/v1/devices/{id}/eks/unbind"),
            Some("application/json"),
            body.into(),
        )
        .await
    }

    /// `POST /admin/v1/import`. On a 422 the error's problem document lists every row error.
    pub async fn import(
        &self,
        body: impl Into<Bytes>,
        format: ImportFormat,
        dry_run: bool,
    ) -> Result<ImportReport, ClientError> {
        let content_type = match format {
            ImportFormat::Csv => "text/csv",
            ImportFormat::Json => "application/json",
        };
        self.call(
            Method::POST,
            format!("/admin/v1/import?format={format}&dry_run={dry_run}"),
            Some(content_type),
            body.into(),
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url).header(
            http::header::ACCEPT,
            "application/json, application/problem+json",
        );
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Config(format!("building the request: {e}")))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    message: error_chain(&e),
                })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    message: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })??;
        decode(status, &bytes)
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| ClientError::Unexpected {
            status: status.as_u16(),
            message: format!("not the expected JSON: {e}"),
        });
    }
    match serde_json::from_slice::<ProblemDocument>(body) {
        Ok(p) => Err(ClientError::Problem(p)),
        Err(_) => Err(ClientError::Unexpected {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        }),
    }
}

/// hyper's client errors say "client error (Connect)"; the cause (a TLS alert, a refused
/// connection) is further down the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
