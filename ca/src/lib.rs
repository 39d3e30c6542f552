//! The attesting ACME CA: the RFC 8555 server, issuance from a root + intermediate, storage and
//! the trusted inventory.
//!
//! - [`pki`]: CA files, the signer seam (HSM-ready), templates, CSR checks, issuance.
//! - [`acme`]: protocol pieces (JWS, JWK, nonces, problems) and the axum server.
//! - [`store`]: SQLite (WAL) with versioned migrations; issuance is transactional.
//! - [`clock`]: injected time.
//! - [`configure`]: the `[ca]` config section → [`service::CaSettings`].
//! - [`inventory`]: devices and their status; trust removal revokes, changes are broadcast;
//!   imports of MDM/ITAM exports (CSV, JSON).
//! - [`enroll`]: open TPM enrollment, the CA as the attestation CA of AK certificates.
//! - [`admin_api`]: the inventory's HTTPS admin API (`/admin/v1`) and its client.
//! - [`revocation`]: CRL (RFC 5280) and OCSP responder (RFC 6960) for third-party enforcement points.
//! - [`service`]: the CA as one object for the binary (init, open + recover, serve).
//! - [`status`]: the inventory as the in-process status source of enforcement points.
//! - [`tls`]: HTTPS for the ACME endpoint with a self-issued, self-renewing certificate.

pub mod acme;
pub mod admin_api;
pub mod attest;
pub mod clock;
pub mod configure;
pub mod enroll;
pub mod feed;
pub mod inventory;
pub mod pki;
pub mod revocation;
pub mod service;
pub mod status;
pub mod store;
pub mod tls;
