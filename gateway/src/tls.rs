//! The TLS side of the listener: rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`, ring provider), a hot-swappable server certificate, and the device certificate
//! verifier.
//!
//! The verifier reads the *current* trust anchors from an `ArcSwap` on every handshake and calls
//! `policy::verify::verify_client_chain`, so a reload of `trust.roots` applies to the next
//! handshake. The hint list (CertificateRequest `certificate_authorities`) and whether a
//! certificate is mandatory are fixed per `ServerConfig`; a reload builds a new `ServerConfig`
//! that shares the session cache and ticketer of the old one, so TLS 1.3 resumption survives
//! reloads.
//!
//! A resumed session skips certificate verification inside rustls (it still carries the peer
//! chain). The listener therefore re-verifies the chain of every resumed connection against the
//! current anchors and time (see `listener.rs`), and status and policy are checked per request.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use arc_swap::ArcSwap;
use portcullis_policy::verify::verify_client_chain;
use portcullis_policy::{DeviceIdentity, TrustAnchors, VerifyError, VerifyOptions};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

use crate::audit::AuditSink;
use crate::metrics::Metrics;

tokio::task_local! {
    /// The client address of the handshake being run on this task: the verifier is called by
    /// rustls without it, and the audit line of a refusal must say who was refused.
    pub(crate) static HANDSHAKE_PEER: std::net::IpAddr;
}

/// The ring provider: the only crypto backend of Portcullis.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a device certificate is checked against; one `ArcSwap<TrustState>` holds it.
pub(crate) struct TrustState {
    /// Identifies what the state was built from (root PEM bytes, options, trust domain), so a
    /// reload can tell whether the anchors changed.
    pub source_hash: u64,
    pub anchors: TrustAnchors,
    pub options: VerifyOptions,
    pub trust_domain: String,
}

impl TrustState {
    /// Reads every file of `trust.roots` (PEM bundles).
    pub fn load(cfg: &portcullis_config::TrustConfig) -> anyhow::Result<Self> {
        let mut pem = Vec::new();
        for path in &cfg.roots {
            let bytes = std::fs::read(path)
                .with_context(|| format!("trust.roots: cannot read {}", path.display()))?;
            pem.extend_from_slice(&bytes);
            pem.push(b'\n');
        }
        let anchors = TrustAnchors::from_pem(&pem).map_err(|e| anyhow!("trust.roots: {e}"))?;
        let source_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            pem.hash(&mut h);
            cfg.clock_skew.hash(&mut h);
            cfg.max_lifetime.hash(&mut h);
            cfg.trust_domain.hash(&mut h);
            h.finish()
        };
        Ok(Self {
            source_hash,
            anchors,
            options: VerifyOptions {
                clock_skew: cfg.clock_skew,
                max_lifetime: cfg.max_lifetime,
            },
            trust_domain: cfg.trust_domain.clone(),
        })
    }

    /// Verifies a presented chain now.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<DeviceIdentity, VerifyError> {
        verify_client_chain(
            &self.anchors,
            end_entity,
            intermediates,
            SystemTime::now(),
            &self.options,
            &self.trust_domain,
        )
    }

    fn hints(&self) -> Vec<DistinguishedName> {
        self.anchors
            .subjects()
            .into_iter()
            .map(|dn| {
                // A DER Name starts with its SEQUENCE tag; the bare RDNSequence contents (as
                // webpki keeps them) start with a SET and need the SEQUENCE wrapped around.
                if dn.first() == Some(&0x30) {
                    DistinguishedName::from(dn)
                } else {
                    DistinguishedName::in_sequence(&dn)
                }
            })
            .collect()
    }
}

/// Loads the listener certificate chain and key (PEM; PKCS#8, SEC1 or PKCS#1) and checks that
/// they belong together.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("gateway.cert: cannot read {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("gateway.cert: {} is not a PEM file", cert.display()))?;
    if chain.is_empty() {
        bail!("gateway.cert: no CERTIFICATE in {}", cert.display());
    }
    let key_pem = std::fs::read(key)
        .with_context(|| format!("gateway.key: cannot read {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("gateway.key: {} is not a PEM file", key.display()))?
        .ok_or_else(|| anyhow!("gateway.key: no private key in {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow!("gateway.key: {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| anyhow!("gateway.key does not match gateway.cert: {e}"))?;
    Ok(Arc::new(certified))
}

/// Serves whatever certificate is current; `store` swaps it for the next handshake.
pub(crate) struct CertResolver(ArcSwap<CertifiedKey>);

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self(ArcSwap::new(key))
    }
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The device certificate verifier.
pub(crate) struct DeviceCertVerifier {
    trust: Arc<ArcSwap<TrustState>>,
    hints: Vec<DistinguishedName>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
    metrics: Arc<Metrics>,
    audit: Arc<AuditSink>,
}

impl fmt::Debug for DeviceCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertVerifier")
            .field("mandatory", &self.mandatory)
            .field("hints", &self.hints.len())
            .finish()
    }
}

/// The TLS alert a refusal maps to, so that `openssl s_client` shows a meaningful one.
fn tls_error(e: &VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Malformed(_) => CertificateError::BadEncoding,
        VerifyError::UntrustedIssuer(_) | VerifyError::NoTrustAnchors => {
            CertificateError::UnknownIssuer
        }
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::WrongUsage => CertificateError::InvalidPurpose,
        VerifyError::LifetimeTooLong { .. } | VerifyError::NoDeviceId => {
            CertificateError::ApplicationVerificationFailure
        }
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.trust.load().verify(end_entity, intermediates) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                let code = e.code();
                let fingerprint = hex::encode(Sha256::digest(end_entity.as_ref()));
                let peer = HANDSHAKE_PEER.try_with(|p| *p).ok();
                // Best effort: a refused certificate may still name the device it claims to be.
                let claimed =
                    DeviceIdentity::from_der(end_entity.as_ref(), &self.trust.load().trust_domain)
                        .ok()
                        .and_then(|i| i.device_id);
                self.metrics.handshake_failed(code);
                self.audit.handshake_refused(
                    peer,
                    Some(&fingerprint),
                    claimed.as_deref(),
                    code,
                    &e.to_string(),
                );
                tracing::warn!(
                    reason = code,
                    detail = %e,
                    fingerprint = %fingerprint,
                    peer = ?peer,
                    "client certificate refused"
                );
                Err(tls_error(&e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What all `ServerConfig`s of one gateway share across reloads.
pub(crate) struct TlsShared {
    pub resolver: Arc<CertResolver>,
    session_storage: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl TlsShared {
    pub fn new(key: Arc<CertifiedKey>) -> anyhow::Result<Self> {
        Ok(Self {
            resolver: Arc::new(CertResolver::new(key)),
            session_storage: rustls::server::ServerSessionMemoryCache::new(16 * 1024),
            ticketer: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| anyhow!("cannot create the TLS session ticketer: {e}"))?,
        })
    }

    /// A `ServerConfig` whose verifier reads `trust` on each handshake; `current` gives the
    /// hint list.
    pub fn server_config(
        &self,
        trust: &Arc<ArcSwap<TrustState>>,
        current: &TrustState,
        mandatory: bool,
        metrics: &Arc<Metrics>,
        audit: &Arc<AuditSink>,
    ) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier = Arc::new(DeviceCertVerifier {
            trust: trust.clone(),
            hints: current.hints(),
            mandatory,
            algorithms: provider.signature_verification_algorithms,
            metrics: metrics.clone(),
            audit: audit.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.session_storage.clone();
        config.ticketer = self.ticketer.clone();
        Ok(Arc::new(config))
    }
}

/// Classifies a failed `accept`: the reason label of `portcullis_handshake_failures_total`, or
/// `None` when the verifier already counted it (a refused certificate).
pub(crate) fn handshake_failure_reason(e: &std::io::Error) -> Option<&'static str> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => None,
        Some(rustls::Error::NoCertificatesPresented) => Some("no_certificate"),
        Some(rustls::Error::NoApplicationProtocol) => Some("no_application_protocol"),
        Some(rustls::Error::PeerIncompatible(_)) => Some("peer_incompatible"),
        Some(rustls::Error::AlertReceived(_)) => Some("alert_received"),
        Some(_) => Some("tls_protocol"),
        None => Some("io"),
    }
}
