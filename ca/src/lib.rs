//! The attesting ACME CA. This first part holds the protocol pieces that need no I/O: JWS
//! verification (RFC 8555 §6.2), JWK thumbprints (RFC 7638) and problem documents (RFC 7807).

pub mod acme;
pub mod store;
