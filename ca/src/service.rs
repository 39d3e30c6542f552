//! The CA as one object, for the binary: `portcullis ca init` calls [`Ca::init`];
//! `portcullis serve`/`up` call [`Ca::open`] and then [`Ca::serve`] (HTTPS) or mount
//! [`Ca::router`] themselves.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::acme::{AcmeConfig, AcmeServer, Recovery};
use crate::admin_api::{AdminApi, AdminApiError, AdminApiSettings};
use crate::clock::Clock;
use crate::feed::FeedHub;
use crate::inventory::Inventory;
use crate::pki::{Authority, CaPaths, InitOptions, LifetimePolicy, PkiError, DEFAULT_MAX_LIFETIME};
use crate::revocation::{Revocation, RevocationError};
use crate::store::{SqliteStore, StoreError};
use crate::tls::{self, SelfIssued, TlsError};

/// Inventory events buffered per subscriber before it must resynchronise.
const INVENTORY_CHANNEL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("CA database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    AdminApi(#[from] AdminApiError),
    #[error("CRL/OCSP: {0}")]
    Revocation(#[from] RevocationError),
    #[error("TPM AK CA: {0}")]
    AkCa(#[from] crate::enroll::AkCaError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Holds `pki/` (the CA files) and `ca.db`.
    pub data_dir: PathBuf,
    /// Used when `data_dir` has no CA yet.
    pub init: InitOptions,
    /// The longest lifetime any certificate may get.
    pub max_lifetime: Duration,
    pub acme: AcmeConfig,
    /// Names and addresses on the CA's own HTTPS certificate (those in `acme.base_url`).
    pub tls_dns_names: Vec<String>,
    pub tls_ip_addresses: Vec<IpAddr>,
    /// The inventory admin API under `/admin/v1`; off when it names no credential source.
    pub admin_api: AdminApiSettings,
    /// Plain-HTTP listener for the CRL and OCSP ([`crate::revocation`]); `None`: HTTPS only.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `http://host:port` of the CRL and OCSP, put into issued certificates (CRL
    /// distribution point, authority information access); `None`: neither extension.
    pub http_base_url: Option<String>,
    /// Open TPM enrollment (`/enroll/tpm/*`): EK roots and limits.
    pub enroll: crate::enroll::EnrollSettings,
}

impl CaSettings {
    pub fn new(data_dir: impl Into<PathBuf>, acme: AcmeConfig) -> Self {
        Self {
            data_dir: data_dir.into(),
            init: InitOptions::default(),
            max_lifetime: DEFAULT_MAX_LIFETIME,
            acme,
            tls_dns_names: Vec::new(),
            tls_ip_addresses: Vec::new(),
            admin_api: AdminApiSettings::default(),
            http_listen: None,
            http_base_url: None,
            enroll: crate::enroll::EnrollSettings::default(),
        }
    }
}

pub struct Ca {
    pub paths: CaPaths,
    pub store: Arc<SqliteStore>,
    pub pki: Arc<Authority>,
    pub acme: Arc<AcmeServer>,
    pub inventory: Arc<Inventory>,
    /// Open TPM enrollment: the CA as the attestation CA of AK certificates.
    pub enroll: Arc<crate::enroll::Enrollment>,
    /// `None` when the admin API is off.
    pub admin: Option<Arc<AdminApi>>,
    /// The CRL and the OCSP responder, kept current by a task that lives as long as `Ca`.
    pub revocation: Arc<Revocation>,
    _revocation_task: AbortOnDrop,
    /// The status feed, kept current by a task that lives as long as `Ca`.
    pub feed: Arc<FeedHub>,
    _feed_task: AbortOnDrop,
    clock: Arc<dyn Clock>,
    settings: CaSettings,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Where the CA files of `data_dir` live.
    pub fn paths(data_dir: &Path) -> CaPaths {
        CaPaths::in_dir(&data_dir.join("pki"))
    }

    /// The CA database (inventory, certificates, ACME state) in `data_dir`.
    pub fn db_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("ca.db")
    }

    /// Creates a new root and intermediate in `data_dir` (refusing to overwrite one).
    pub fn init(
        data_dir: &Path,
        opts: &InitOptions,
        clock: &dyn Clock,
    ) -> Result<CaPaths, CaError> {
        let paths = Self::paths(data_dir);
        Authority::init(&paths, opts, clock.now())?;
        Ok(paths)
    }

    /// Opens the CA in `settings.data_dir`, creating the PKI if there is none, migrating the
    /// database, and finishing whatever a crash interrupted ([`AcmeServer::recover`]).
    pub async fn open(
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Recovery), CaError> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| CaError::Io {
            path: settings.data_dir.clone(),
            source,
        })?;
        let paths = Self::paths(&settings.data_dir);
        if !paths.exists() {
            Authority::init(&paths, &settings.init, clock.now())?;
            tracing::info!(dir = %paths.dir.display(), "created a new CA");
        }
        let pki = Arc::new(Authority::load(
            &paths,
            LifetimePolicy::new(settings.max_lifetime)?,
        )?);
        let store = Arc::new(SqliteStore::open(&Self::db_path(&settings.data_dir))?);
        let inventory = Arc::new(Inventory::new(
            store.clone(),
            clock.clone(),
            INVENTORY_CHANNEL,
        ));
        // Open TPM enrollment (issue 4): the AK CA beside the other CA files, created on first
        // start; the `tpm` verifier always trusts the AK certificates it issues.
        let enroll = Arc::new(crate::enroll::Enrollment::open(
            &paths.dir,
            &settings.init,
            settings.enroll.clone(),
            store.clone(),
            clock.clone(),
        )?);
        let mut acme_settings = settings.acme.clone();
        acme_settings.attestation.tpm_roots = Some(crate::enroll::ak_cert::tpm_roots_with(
            acme_settings.attestation.tpm_roots.take(),
            enroll.ak_ca().cert_der(),
        ));
        // device-attest-01 checks every device against this inventory.
        let acme = AcmeServer::with_inventory(
            acme_settings,
            store.clone(),
            pki.clone(),
            clock.clone(),
            inventory.clone(),
        );
        // The CA's own certificates may not be admin roots (every device would be an admin).
        let ca_certs = vec![
            crate::pki::pem::decode_first(pki.root_pem(), "CERTIFICATE").map_err(|e| {
                CaError::Io {
                    path: paths.root_cert.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                }
            })?,
            pki.intermediate_der().to_vec(),
        ];
        let admin = AdminApi::from_settings(
            &settings.admin_api,
            inventory.clone(),
            clock.clone(),
            &ca_certs,
        )?;
        // CRL and OCSP (issue 5): leaves name them once they are reachable over plain HTTP.
        if let Some(base) = &settings.http_base_url {
            let base = base.trim_end_matches('/');
            pki.set_revocation_urls(crate::pki::RevocationUrls {
                crl: Some(format!("{base}/crl/{}", crate::revocation::crl::CRL_FILE)),
                ocsp: Some(format!("{base}/ocsp")),
            });
        }
        let revocation = Arc::new(Revocation::new(
            pki.clone(),
            store.clone(),
            clock.clone(),
            &settings.init.name,
        )?);
        let revocation_task = AbortOnDrop(tokio::spawn(
            revocation
                .clone()
                .follow(inventory.clone(), std::future::pending()),
        ));
        let initial = crate::status::snapshot(&store, clock.now())?;
        let feed = Arc::new(FeedHub::new(initial, crate::feed::HEARTBEAT, clock.now()));
        let feed_task = AbortOnDrop(tokio::spawn(crate::feed::producer::produce(
            feed.clone(),
            inventory.clone(),
            store.clone(),
            clock.clone(),
            std::future::pending(),
        )));
        let recovery = acme.recover().await?;
        if recovery != Recovery::default() {
            tracing::warn!(?recovery, "finished work interrupted by a previous crash");
        }
        Ok((
            Self {
                paths,
                store,
                pki,
                acme,
                inventory,
                enroll,
                admin,
                revocation,
                _revocation_task: revocation_task,
                feed,
                _feed_task: feed_task,
                clock,
                settings,
            },
            recovery,
        ))
    }

    pub fn directory_url(&self) -> String {
        self.acme.urls().directory()
    }

    /// This CA's root certificate, DER.
    pub fn root_der(&self) -> Vec<u8> {
        crate::pki::pem::decode_first(self.pki.root_pem(), "CERTIFICATE").unwrap_or_default()
    }

    /// The trust bundle to hand to enforcement points and ACME clients.
    pub fn bundle_path(&self) -> &Path {
        &self.paths.bundle
    }

    /// ACME under `/acme/`, and the admin API under `/admin/v1/` when it is on. Mounted
    /// elsewhere than [`Ca::serve`], the admin API accepts bearer tokens only (client
    /// certificates reach it through [`tls::serve_tls`]).
    pub fn router(&self) -> axum::Router {
        let router = self
            .acme
            .router()
            .merge(self.revocation.router())
            .merge(crate::enroll::routes(self.enroll.clone()))
            .merge(crate::feed::sse::router(crate::feed::sse::FeedState {
                hub: self.feed.clone(),
                root: self.root_der().into(),
                trust_domain: self.settings.acme.trust_domain.as_str().into(),
                clock: self.clock.clone(),
                store: self.store.clone(),
            }));
        match &self.admin {
            Some(admin) => router.nest(crate::admin_api::PREFIX, admin.router()),
            None => router,
        }
    }

    /// Serves ACME (and the admin API, when on) over HTTPS on `listener` until `shutdown`,
    /// with a certificate for the configured TLS names issued by this CA.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CaError> {
        let certs = SelfIssued::new(
            self.pki.clone(),
            self.store.clone(),
            self.clock.clone(),
            self.settings.tls_dns_names.clone(),
            self.settings.tls_ip_addresses.clone(),
        )?;
        // A client certificate is requested (never required: ACME clients have none) and
        // verified in the handshake against this CA's root (node certificates of the status
        // feed) and the admin roots. Each handler verifies again against its own roots: a
        // device certificate passes the handshake but is neither a node nor an admin.
        let mut verifiers = vec![tls::client_verifier(&[self.root_der()])?];
        verifiers.extend(self.admin.as_ref().and_then(|a| a.client_verifier()));
        let config = tls::server_config_with_client_auth(
            Arc::new(certs),
            Some(tls::AnyOf::verifier(verifiers)),
        )?;
        let Some(addr) = self.settings.http_listen else {
            tls::serve_tls(listener, self.router(), config, shutdown).await;
            return Ok(());
        };
        // The plain-HTTP CRL/OCSP listener stops with the HTTPS one.
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CaError::Io {
                path: PathBuf::from(format!("ca.http_listen {addr}")),
                source,
            })?;
        tracing::info!(addr = %http.local_addr().unwrap_or(addr), "CRL and OCSP listening (plain HTTP)");
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut stopped2 = stopped.clone();
        let plain = tokio::spawn(crate::revocation::serve_http(
            http,
            self.revocation.plain_router(),
            async move {
                let _ = stopped2.changed().await;
            },
        ));
        tls::serve_tls(listener, self.router(), config, async move {
            shutdown.await;
            let _ = stop.send(());
        })
        .await;
        drop(stopped);
        match plain.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("CRL/OCSP listener: {e}"),
            Err(e) => tracing::warn!("CRL/OCSP listener task: {e}"),
        }
        Ok(())
    }
}

/// Aborts the task when dropped: the CRL follower lives exactly as long as its `Ca`.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn open_creates_the_ca_once_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = CaSettings::new(dir.path(), AcmeConfig::new("https://127.0.0.1:1"));
        let (ca, recovery) = Ca::open(settings.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        assert_eq!(recovery, Recovery::default());
        assert!(ca.bundle_path().exists());
        assert_eq!(ca.directory_url(), "https://127.0.0.1:1/acme/directory");
        let root = std::fs::read(&ca.paths.root_cert).unwrap();
        drop(ca);
        let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
        assert_eq!(
            std::fs::read(&ca.paths.root_cert).unwrap(),
            root,
            "same CA after reopen"
        );
        assert!(matches!(
            Ca::init(dir.path(), &InitOptions::default(), &SystemClock),
            Err(CaError::Pki(PkiError::Exists(_)))
        ));
    }

    /// One HTTP/1.0 GET over a plain TCP connection: (status line, body).
    async fn plain_get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        (
            head.lines().next().unwrap_or_default().to_string(),
            out[split + 4..].to_vec(),
        )
    }

    #[tokio::test]
    async fn serve_runs_the_plain_http_crl_listener_beside_https_and_stops_both() {
        let dir = tempfile::tempdir().unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http = free.local_addr().unwrap();
        drop(free);
        let mut settings = CaSettings::new(dir.path(), AcmeConfig::new("https://127.0.0.1:1"));
        settings.http_listen = Some(http);
        settings.http_base_url = Some(format!("http://{http}"));
        settings.tls_ip_addresses = vec![http.ip()];
        let (ca, _) = Ca::open(settings, Arc::new(SystemClock)).await.unwrap();
        let ca = Arc::new(ca);
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn({
            let ca = ca.clone();
            async move {
                ca.serve(tls, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let start = std::time::Instant::now();
        let (status, body) = loop {
            if tokio::net::TcpStream::connect(http).await.is_ok() {
                break plain_get(http, "/crl/intermediate.crl").await;
            }
            if serving.is_finished() {
                panic!("serve ended early: {:?}", serving.await);
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no plain listener"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(status.contains("200"), "{status}");
        assert_eq!(body, ca.revocation.crl().der);
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(http).await.is_err(),
            "the plain listener stopped with HTTPS"
        );
    }
}
