//! The ACME server (RFC 8555) on axum.
//!
//! One [`AcmeServer`] holds the state: store, nonce pool, PKI, clock, configuration and the
//! challenge validators. Handlers are thin: every POST goes through [`AcmeServer::authenticate`]
//! (the one place §6.2–§6.5 are enforced) and then applies one resource's rules. A middleware
//! adds `Replay-Nonce` and `Link: rel="index"` to every response, errors included (§6.5, §7.1).
//!
//! Store calls are synchronous SQLite calls made on the async worker (one mutex-guarded
//! connection, sub-millisecond statements); moving them to `spawn_blocking` is a local change
//! if profiling shows the fsync of issuance commits stalling other requests.

mod account;
mod authz;
mod cert;
mod directory;
mod objects;
mod order;
mod renewal;
mod request;
mod response;
mod urls;

use std::sync::Arc;
use std::time::SystemTime;

use axum::routing::{get, post};
use axum::Router;

use super::challenge::http01::Http01;
use super::challenge::Validators;
use super::config::AcmeConfig;
use super::nonce::NoncePool;
use crate::clock::{unix_seconds, Clock};
use crate::pki::Authority;
use crate::store::{AcmeStore, StoreError};

pub use renewal::cert_id_of;
pub use urls::Urls;

pub struct AcmeServer {
    store: Arc<dyn AcmeStore>,
    nonces: NoncePool,
    pki: Arc<Authority>,
    clock: Arc<dyn Clock>,
    config: AcmeConfig,
    validators: Validators,
    urls: Urls,
}

/// What [`AcmeServer::recover`] found and did after a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Orders found `processing` and issued (with fresh serials).
    pub orders_issued: Vec<i64>,
    /// Orders found `processing` whose issuance failed again; now `invalid`.
    pub orders_failed: Vec<i64>,
    /// Challenges found `processing` whose validation was started again.
    pub challenges_restarted: Vec<i64>,
}

impl AcmeServer {
    /// A server with the challenge types the configuration enables (http-01 when configured).
    pub fn new(
        config: AcmeConfig,
        store: Arc<dyn AcmeStore>,
        pki: Arc<Authority>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let mut validators = Validators::default();
        if let Some(h) = &config.http01 {
            validators.register(Arc::new(Http01::new(h)));
        }
        Self::with_validators(config, store, pki, clock, validators)
    }

    /// [`AcmeServer::new`] plus `device-attest-01` (draft-ietf-acme-device-attest), its
    /// attestation roots from `config.attestation` and its device checks on `inventory`.
    pub fn with_inventory(
        config: AcmeConfig,
        store: Arc<dyn AcmeStore>,
        pki: Arc<Authority>,
        clock: Arc<dyn Clock>,
        inventory: Arc<crate::inventory::Inventory>,
    ) -> Arc<Self> {
        let mut validators = Validators::default();
        if let Some(h) = &config.http01 {
            validators.register(Arc::new(Http01::new(h)));
        }
        let hooks = super::device::InventoryHooks::new(inventory, store.clone(), clock.clone());
        validators.register(Arc::new(hooks.validator(config.attestation.verifiers())));
        Self::with_validators(config, store, pki, clock, validators)
    }

    /// A server with an explicit set of challenge validators (e.g. device-attest-01).
    pub fn with_validators(
        config: AcmeConfig,
        store: Arc<dyn AcmeStore>,
        pki: Arc<Authority>,
        clock: Arc<dyn Clock>,
        validators: Validators,
    ) -> Arc<Self> {
        Arc::new(Self {
            nonces: NoncePool::new(config.nonce_lifetime, config.nonce_capacity),
            urls: Urls::new(&config.base_url),
            store,
            pki,
            clock,
            config,
            validators,
        })
    }

    pub fn urls(&self) -> &Urls {
        &self.urls
    }

    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn now_unix(&self) -> i64 {
        unix_seconds(self.clock.now())
    }

    /// The axum router serving the ACME resources under `/acme/`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/acme/directory", get(directory::directory))
            .route(
                "/acme/new-nonce",
                get(directory::new_nonce_get).head(directory::new_nonce_head),
            )
            .route("/acme/new-account", post(account::new_account))
            .route("/acme/account/{id}", post(account::account))
            .route("/acme/account/{id}/orders", post(account::orders))
            .route("/acme/key-change", post(account::key_change))
            .route("/acme/new-order", post(order::new_order))
            .route("/acme/order/{id}", post(order::order))
            .route("/acme/order/{id}/finalize", post(order::finalize))
            .route("/acme/authz/{id}", post(authz::authz))
            .route("/acme/challenge/{id}", post(authz::challenge))
            .route("/acme/cert/{serial}", post(cert::download))
            .route("/acme/revoke-cert", post(cert::revoke))
            .route("/acme/issuer", get(cert::issuer))
            .route("/acme/renewal-info/{id}", get(renewal::renewal_info))
            .fallback(response::not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                response::acme_headers,
            ))
            .with_state(self.clone())
    }

    /// Finishes what a crash interrupted: orders left `processing` are issued from their
    /// stored CSR (a new serial each; the certificate row and the order's `valid` commit
    /// together, so none was recorded before), and challenges left `processing` are validated
    /// again. Call once at start, before serving.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        for id in self.store.processing_orders()? {
            match order::issue_stored(self, id) {
                Ok(()) => report.orders_issued.push(id),
                Err(p) => {
                    tracing::warn!(order = id, problem = %p, "recovery could not issue");
                    report.orders_failed.push(id);
                }
            }
        }
        for id in self.store.processing_challenges()? {
            authz::restart_validation(self, id)?;
            report.challenges_restarted.push(id);
        }
        Ok(report)
    }
}
