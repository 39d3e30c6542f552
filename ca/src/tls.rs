//! Serving the ACME endpoint over TLS (RFC 8555 §6.1: ACME runs over HTTPS), with a server
//! certificate the CA issues to itself from its own intermediate and renews on the fly.
//!
//! Clients trust it through the same `bundle.pem` enforcement points use; no external CA and
//! no certificate files to rotate by hand.
//!
//! When the admin API accepts client certificates, the server *requests* one (never requires
//! it: ACME clients present none) and verifies any that is presented against the admin roots
//! during the handshake; a certificate that does not verify fails the handshake. The verified
//! chain is handed to the router as a [`PeerCertificates`] request extension, which only this
//! module inserts — a request cannot forge it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::clock::{unix_seconds, Clock};
use crate::pki::{Authority, CertTemplate, IssueRequest, KeyAlgorithm, PkiError};
use crate::store::{AcmeStore, NewCert, StoreError};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("issuing the CA's TLS certificate: {0}")]
    Pki(#[from] PkiError),
    #[error("recording the CA's TLS certificate: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server certificate for the CA's own names, issued by the CA and re-issued once two thirds
/// of its lifetime have passed (checked on each handshake; issuing is one ECDSA signature).
pub struct SelfIssued {
    pki: Arc<Authority>,
    store: Arc<dyn AcmeStore>,
    clock: Arc<dyn Clock>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    template: CertTemplate,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for SelfIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfIssued")
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .finish_non_exhaustive()
    }
}

impl SelfIssued {
    /// Issues the first certificate now, so a misconfiguration fails at start.
    pub fn new(
        pki: Arc<Authority>,
        store: Arc<dyn AcmeStore>,
        clock: Arc<dyn Clock>,
        dns_names: Vec<String>,
        ip_addresses: Vec<IpAddr>,
    ) -> Result<Self, TlsError> {
        let mut template = CertTemplate::workload();
        template.name = "ca-tls".into();
        let first = issue(&pki, &*store, &*clock, &template, &dns_names, &ip_addresses)?;
        Ok(Self {
            pki,
            store,
            clock,
            dns_names,
            ip_addresses,
            template,
            current: Mutex::new(first),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if self.clock.now() >= cur.1 {
            match issue(
                &self.pki,
                &*self.store,
                &*self.clock,
                &self.template,
                &self.dns_names,
                &self.ip_addresses,
            ) {
                Ok(next) => *cur = next,
                // Keep serving the old certificate (still valid for a third of its life) and
                // try again on the next handshake.
                Err(e) => tracing::error!(error = %e, "renewing the CA's TLS certificate failed"),
            }
        }
        Some(cur.0.clone())
    }
}

impl ResolvesServerCert for SelfIssued {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn issue(
    pki: &Authority,
    store: &dyn AcmeStore,
    clock: &dyn Clock,
    template: &CertTemplate,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    let key = KeyAlgorithm::EcdsaP256.generate()?;
    let now = clock.now();
    let issued = pki.issue(
        &IssueRequest {
            spki_der: &rcgen::PublicKeyData::subject_public_key_info(&key),
            template,
            dns_names,
            ip_addresses,
            uris: &[],
            not_before: None,
            not_after: None,
        },
        now,
    )?;
    let serial = issued.serial.to_hex();
    store.record_certificate(&NewCert {
        serial: &serial,
        fingerprint: &issued.fingerprint,
        der: &issued.der,
        chain_pem: &issued.chain_pem,
        not_before: unix_seconds(issued.not_before),
        not_after: unix_seconds(issued.not_after),
        device_id: None,
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))?;
    let chain = vec![
        CertificateDer::from(issued.der.clone()),
        CertificateDer::from(pki.intermediate_der().to_vec()),
    ];
    let lifetime = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default();
    let renew_at = issued.not_before + lifetime * 2 / 3;
    tracing::info!(serial = %serial, names = ?dns_names, "CA TLS certificate issued");
    Ok((Arc::new(CertifiedKey::new(chain, signing_key)), renew_at))
}

/// The client certificate chain (leaf first) the TLS handshake verified, as a request
/// extension. Present only on connections where a client certificate was presented and
/// verified by the configured client verifier.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// A verifier that requests (never requires) a client certificate chaining to one of
/// `roots` (DER).
pub fn client_verifier(roots: &[Vec<u8>]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from(root.clone()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))
}

/// Accepts a client certificate that any of its verifiers accepts (the CA listener serves
/// node certificates of the status feed and admin certificates from another CA). Which one
/// accepted is not remembered: each handler verifies the chain again against its own roots.
#[derive(Debug)]
pub struct AnyOf {
    verifiers: Vec<Arc<dyn ClientCertVerifier>>,
    hints: Vec<rustls::DistinguishedName>,
}

impl AnyOf {
    /// `verifiers` must not be empty; all must allow unauthenticated clients.
    pub fn verifier(verifiers: Vec<Arc<dyn ClientCertVerifier>>) -> Arc<dyn ClientCertVerifier> {
        if verifiers.len() == 1 {
            return verifiers[0].clone();
        }
        let hints = verifiers
            .iter()
            .flat_map(|v| v.root_hint_subjects().iter().cloned())
            .collect();
        Arc::new(Self { verifiers, hints })
    }
}

impl ClientCertVerifier for AnyOf {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no client certificate verifier".into());
        for v in &self.verifiers {
            match v.verify_client_cert(end_entity, intermediates, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    // Signatures over the handshake do not depend on the roots: every verifier here is a
    // webpki verifier with the same crypto provider.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifiers[0].verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifiers[0].verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifiers[0].supported_verify_schemes()
    }
}

/// A rustls server configuration presenting `certs`, offering HTTP/2 and HTTP/1.1.
pub fn server_config(certs: Arc<SelfIssued>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_client_auth(certs, None)
}

/// Like [`server_config`]; with `client_verifier`, a client certificate is requested and, if
/// presented, must pass it (build it with `allow_unauthenticated` so that clients without one
/// still connect).
pub fn server_config_with_client_auth(
    certs: Arc<SelfIssued>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?;
    let mut config = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes. Each connection runs in
/// its own task; a failed handshake or connection only ends that connection.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // Read once per connection; a resumed TLS 1.3 session carries the chain verified
            // in the full handshake (the admin API checks its validity again per request).
            let client_chain = tls.get_ref().1.peer_certificates().map(|chain| {
                PeerCertificates(chain.iter().map(|c| c.clone().into_owned()).collect())
            });
            let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                router,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(chain) = &client_chain {
                        req.extensions_mut().insert(chain.clone());
                    }
                    req
                },
            ));
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
