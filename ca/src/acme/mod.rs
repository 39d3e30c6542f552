//! ACME (RFC 8555) protocol pieces.

pub mod jwk;
pub mod jws;
pub mod nonce;
pub mod problem;
