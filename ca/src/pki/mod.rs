//! The CA's PKI: a root and an intermediate, issuance of leaf certificates from templates.
//!
//! # The signer seam
//! Issuance signs only through [`CaSigner`], which is rcgen's [`rcgen::SigningKey`] trait:
//! `sign(tbs) -> signature` plus the public key and algorithm. [`Authority::load`] builds one
//! from the intermediate's 0600 key file; [`Authority::from_parts`] takes any other signer, so an
//! HSM or PKCS#11 token is one new `SigningKey` implementation and a different constructor call.
//! Nothing above this module (ACME, finalize, revocation) ever sees key material.
//!
//! # Files (`CaPaths`)
//! `root.pem`, `root.key`, `intermediate.pem`, `intermediate.key` (keys 0600, directory 0700)
//! and `bundle.pem`, the trust anchor to hand to enforcement points (the root only; devices and
//! workloads present the intermediate in their chain).

mod authority;
mod csr;
mod keys;
pub mod pem;
mod serial;
mod template;

pub use authority::{Authority, CaPaths, InitOptions, IssueExtras, IssueRequest, IssuedCert};
pub use csr::{jwk_of_spki_der, subject_key, Csr, CsrError, SubjectKey};
pub use keys::{key_from_pem, CaSigner, KeyAlgorithm};
pub use serial::Serial;
pub use template::{
    CertTemplate, KeyUsage, LifetimePolicy, Purpose, RevocationUrls, BACKDATE, DEFAULT_LIFETIME,
    DEFAULT_MAX_LIFETIME, MIN_LIFETIME,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite an existing CA")]
    Exists(PathBuf),
    #[error("{0}: private key is readable by group or others (mode {1:o}); chmod 600 it")]
    KeyPermissions(PathBuf, u32),
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error("certificate template: {0}")]
    Template(String),
    #[error("validity: {0}")]
    Validity(String),
    #[error("certificate request: {0}")]
    Request(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("no randomness available")]
    Rng,
}

impl PkiError {
    fn invalid(what: impl Into<String>, detail: impl ToString) -> Self {
        PkiError::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}
