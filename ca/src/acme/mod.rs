//! ACME (RFC 8555): protocol pieces (JWS, JWK, nonces, problems, identifiers, challenge
//! validators) and the axum server built from them.

pub mod challenge;
pub mod config;
pub mod device;
pub mod eab;
pub mod identifier;
pub mod jwk;
pub mod jws;
pub mod model;
pub mod nonce;
pub mod problem;
pub mod server;

pub use config::{AcmeConfig, AttestationConfig, DirectoryMeta, Http01Config};
pub use server::{cert_id_of, AcmeServer, Recovery, Urls};
