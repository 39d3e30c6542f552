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
use crate::inventory::Inventory;
use crate::pki::{Authority, CaPaths, InitOptions, LifetimePolicy, PkiError, DEFAULT_MAX_LIFETIME};
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
        }
    }
}

pub struct Ca {
    pub paths: CaPaths,
    pub store: Arc<SqliteStore>,
    pub pki: Arc<Authority>,
    pub acme: Arc<AcmeServer>,
    pub inventory: Arc<Inventory>,
    /// `None` when the admin API is off.
    pub admin: Option<Arc<AdminApi>>,
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
        let store = Arc::new(SqliteStore::open(&settings.data_dir.join("ca.db"))?);
        let acme = AcmeServer::new(
            settings.acme.clone(),
            store.clone(),
            pki.clone(),
            clock.clone(),
        );
        let inventory = Arc::new(Inventory::new(
            store.clone(),
            clock.clone(),
            INVENTORY_CHANNEL,
        ));
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
                admin,
                clock,
                settings,
            },
            recovery,
        ))
    }

    pub fn directory_url(&self) -> String {
        self.acme.urls().directory()
    }

    /// The trust bundle to hand to enforcement points and ACME clients.
    pub fn bundle_path(&self) -> &Path {
        &self.paths.bundle
    }

    /// ACME under `/acme/`, and the admin API under `/admin/v1/` when it is on. Mounted
    /// elsewhere than [`Ca::serve`], the admin API accepts bearer tokens only (client
    /// certificates reach it through [`tls::serve_tls`]).
    pub fn router(&self) -> axum::Router {
        let router = self.acme.router();
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
        // With admin client roots, a client certificate is requested (never required: ACME
        // clients have none) and verified against them in the handshake.
        let client_verifier = self.admin.as_ref().and_then(|a| a.client_verifier());
        let config = tls::server_config_with_client_auth(Arc::new(certs), client_verifier)?;
        tls::serve_tls(listener, self.router(), config, shutdown).await;
        Ok(())
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
}
