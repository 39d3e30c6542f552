//! The HTTPS client the agent talks to the CA with (ACME and enrollment alike): rustls with
//! the ring provider, trusting either the `--ca-roots` PEM or the system's roots.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::BodyWrapper;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io, AgentError, Result};

/// The client type instant-acme implements its `HttpClient` for.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// Builds the client. `roots`: a PEM file of CA certificates to trust instead of the system's.
pub fn client(roots: Option<&Path>) -> Result<HttpClient> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Some(path) => {
            let pem = std::fs::read(path).map_err(io(path))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(io(path))?;
                store.add(cert).map_err(|e| {
                    AgentError::Config(format!(
                        "{}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(AgentError::Config(format!(
                    "{}: no CERTIFICATE in the --ca-roots file",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Unparseable system roots are skipped, as every rustls user does.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(AgentError::Config(
                    "no system CA roots found; give the CA's roots with --ca-roots".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("TLS configuration: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
    // http:// is allowed for a CA on loopback in tests and dev setups; the CA's own URLs
    // decide, the agent never downgrades an https URL.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// POSTs `body` as JSON and decodes a JSON answer; an error status becomes
/// [`AgentError::Refused`] (or [`AgentError::DeviceNotTrusted`]) with the problem document
/// (RFC 7807) the server sent.
pub async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
    client: &HttpClient,
    during: &'static str,
    url: &str,
    body: &Req,
) -> Result<Resp> {
    let http_err = |detail: String| AgentError::Http {
        during,
        url: url.to_owned(),
        detail,
    };
    let bytes = serde_json::to_vec(body).map_err(|e| http_err(format!("encoding: {e}")))?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("portcullis-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(BodyWrapper::from(bytes))
        .map_err(|e| http_err(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| http_err(crate::error::with_sources(&e)))?;
    let status = response.status();
    // Answers are small JSON documents; a CA sending more is refused, not buffered.
    const MAX: usize = 1 << 20;
    let body = http_body_util::Limited::new(response.into_body(), MAX)
        .collect()
        .await
        .map_err(|e| http_err(format!("reading the response: {e}")))?
        .to_bytes();
    if !status.is_success() {
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let kind = problem["type"].as_str().unwrap_or("about:blank").to_owned();
        let detail = problem["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        // The enrollment endpoints name the failed rule in an RFC 7807 extension member
        // `rule` (ca/src/enroll/http.rs); `device-known` / `device-active` mean the inventory
        // refuses the device.
        let rule = problem["rule"].as_str().unwrap_or_default();
        if crate::error::is_device_refusal(&kind, &detail)
            || matches!(rule, "device-known" | "device-active")
        {
            return Err(AgentError::DeviceNotTrusted {
                during,
                kind,
                detail,
            });
        }
        return Err(AgentError::Refused {
            during,
            status: status.as_u16(),
            kind,
            detail,
        });
    }
    serde_json::from_slice(&body)
        .map_err(|e| http_err(format!("the answer is not the expected JSON: {e}")))
}
