//! The attesting ACME CA: the RFC 8555 server, issuance from a root + intermediate, storage and
//! the trusted inventory.
//!
//! - [`pki`]: CA files, the signer seam (HSM-ready), templates, CSR checks, issuance.
//! - [`acme`]: protocol pieces (JWS, JWK, nonces, problems) and the axum server.
//! - [`store`]: SQLite (WAL) with versioned migrations; issuance is transactional.
//! - [`clock`]: injected time.
//! - [`inventory`]: devices and their status; trust removal revokes, changes are broadcast.
//! - [`service`]: the CA as one object for the binary (init, open + recover, serve).
//! - [`tls`]: HTTPS for the ACME endpoint with a self-issued, self-renewing certificate.

pub mod acme;
pub mod clock;
pub mod inventory;
pub mod pki;
pub mod service;
pub mod store;
pub mod tls;
