//! http-01 (RFC 8555 §8.3): the client serves the key authorization at
//! `http://<name>:<port>/.well-known/acme-challenge/<token>`; we fetch it and compare.
//!
//! Lab settings like Pebble's: the port is configurable (80 per the RFC) and a static
//! name → address map is consulted before DNS, so real clients can be tested on loopback.
//! Redirects are not followed (the RFC allows following them; a lab does not need it, and not
//! following them keeps the validator from being pointed at arbitrary internal URLs).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::{ChallengeValidator, ValidationFuture, ValidationRequest};
use crate::acme::config::Http01Config;
use crate::acme::model::Identifier;
use crate::acme::problem::{Problem, ProblemType};

/// A key authorization is ~87 characters; anything much longer is not one.
const MAX_BODY: usize = 8 * 1024;

#[derive(Debug, Clone)]
pub struct Http01 {
    port: u16,
    hosts: HashMap<String, IpAddr>,
    timeout: Duration,
}

impl Http01 {
    pub fn new(config: &Http01Config) -> Self {
        Self {
            port: config.port,
            hosts: config
                .hosts
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                .collect(),
            timeout: config.timeout,
        }
    }

    async fn resolve(&self, name: &str) -> Result<SocketAddr, Problem> {
        if let Some(ip) = self.hosts.get(name) {
            return Ok(SocketAddr::new(*ip, self.port));
        }
        let mut addrs = tokio::net::lookup_host((name, self.port))
            .await
            .map_err(|e| Problem::new(ProblemType::Dns, format!("resolving {name}: {e}")))?;
        addrs
            .next()
            .ok_or_else(|| Problem::new(ProblemType::Dns, format!("{name} has no address")))
    }

    async fn fetch(self, name: String, token: String) -> Result<String, Problem> {
        let addr = self.resolve(&name).await?;
        let conn_err = |e: &dyn std::fmt::Display| {
            Problem::new(ProblemType::Connection, format!("{name} ({addr}): {e}"))
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| conn_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| conn_err(&e))?;
        tokio::spawn(conn);
        let host = if self.port == 80 {
            name.clone()
        } else {
            format!("{name}:{}", self.port)
        };
        let req = http::Request::get(format!("/.well-known/acme-challenge/{token}"))
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "portcullis-ca http-01 validator")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Problem::new(ProblemType::ServerInternal, e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| conn_err(&e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(Problem::new(
                ProblemType::Unauthorized,
                format!(
                    "http://{name}/.well-known/acme-challenge/{token} answered {}",
                    resp.status()
                ),
            ));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| {
                Problem::new(
                    ProblemType::IncorrectResponse,
                    format!("the challenge response from {name} is not a key authorization (too long or broken)"),
                )
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| {
            Problem::new(
                ProblemType::IncorrectResponse,
                format!("the challenge response from {name} is not UTF-8"),
            )
        })
    }
}

impl ChallengeValidator for Http01 {
    fn kind(&self) -> &'static str {
        "http-01"
    }

    fn applies_to(&self, identifier: &Identifier) -> bool {
        identifier.kind == "dns" && !identifier.value.starts_with("*.")
    }

    fn validate(&self, request: ValidationRequest) -> ValidationFuture {
        let this = self.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let name = request.identifier.value.clone();
            let body = tokio::time::timeout(timeout, this.fetch(name.clone(), request.token))
                .await
                .map_err(|_| {
                    Problem::new(
                        ProblemType::Connection,
                        format!("{name}: no answer within {}s", timeout.as_secs()),
                    )
                })??;
            // §8.3: "The server SHOULD ignore whitespace characters at the end of the body."
            if body.trim_end() == request.key_authorization {
                Ok(())
            } else {
                Err(Problem::new(
                    ProblemType::IncorrectResponse,
                    format!("the key authorization served by {name} does not match"),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    async fn answering(status: u16, body: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(move || async move {
                (http::StatusCode::from_u16(status).unwrap(), body)
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn validator(port: u16) -> Http01 {
        Http01::new(&Http01Config {
            allowed_names: vec![],
            port,
            hosts: [(
                "svc.lab.example".to_string(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )]
            .into(),
            timeout: Duration::from_secs(5),
        })
    }

    fn request(ka: &str) -> ValidationRequest {
        ValidationRequest {
            identifier: Identifier::dns("svc.lab.example"),
            token: "tok".into(),
            key_authorization: ka.into(),
            payload: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_key_authorization_must_match_with_trailing_whitespace_ignored() {
        let port = answering(200, "tok.thumb\r\n").await;
        assert!(validator(port).validate(request("tok.thumb")).await.is_ok());
        let err = validator(port)
            .validate(request("tok.other"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ProblemType::IncorrectResponse);
    }

    #[tokio::test]
    async fn a_non_200_answer_is_unauthorized() {
        let port = answering(404, "").await;
        let err = validator(port)
            .validate(request("tok.thumb"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ProblemType::Unauthorized);
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connection_problem() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = validator(port)
            .validate(request("tok.thumb"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ProblemType::Connection);
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_a_dns_problem() {
        let v = validator(80);
        let mut r = request("tok.thumb");
        r.identifier = Identifier::dns("does-not-exist.invalid");
        let err = v.validate(r).await.unwrap_err();
        assert!(
            matches!(err.kind, ProblemType::Dns | ProblemType::Connection),
            "{err}"
        );
    }
}
