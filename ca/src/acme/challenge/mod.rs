//! Challenge types (RFC 8555 §8), pluggable: each type is one [`ChallengeValidator`] in its own
//! module, registered in [`Validators`] under its type name. The server offers, for each
//! identifier of a new order, every registered type that [`ChallengeValidator::applies_to`] it,
//! and runs `validate` in the background when the client answers a challenge (§7.5.1).
//!
//! Adding `device-attest-01` (draft-ietf-acme-device-attest) is one new module: a validator
//! that applies to `permanent-identifier` identifiers, reads `attObj` from the challenge
//! payload, and verifies the attestation against the expected key authorization.

pub mod device_attest01;
pub mod http01;
pub mod unattested;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::model::Identifier;
use super::problem::Problem;

/// What a validator gets to decide one challenge.
#[derive(Debug, Clone)]
pub struct ValidationRequest {
    pub identifier: Identifier,
    pub token: String,
    /// `token || '.' || base64url(JWK thumbprint)` (RFC 8555 §8.1).
    pub key_authorization: String,
    /// The JSON object the client POSTed to the challenge URL (`{}` for http-01; the
    /// attestation object for device-attest-01).
    pub payload: Map<String, Value>,
}

pub type ValidationFuture = Pin<Box<dyn Future<Output = Result<(), Problem>> + Send + 'static>>;

pub trait ChallengeValidator: Send + Sync + 'static {
    /// The challenge `type`, e.g. `http-01`.
    fn kind(&self) -> &'static str;
    /// Whether this challenge can prove control of `identifier`.
    fn applies_to(&self, identifier: &Identifier) -> bool;
    /// Decides the challenge: `Ok` proves control, `Err` is the problem recorded on it.
    fn validate(&self, request: ValidationRequest) -> ValidationFuture;
}

/// The registered challenge types, by name.
#[derive(Clone, Default)]
pub struct Validators {
    by_kind: BTreeMap<&'static str, Arc<dyn ChallengeValidator>>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_kind.keys()).finish()
    }
}

impl Validators {
    pub fn register(&mut self, v: Arc<dyn ChallengeValidator>) {
        self.by_kind.insert(v.kind(), v);
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn ChallengeValidator>> {
        self.by_kind.get(kind)
    }

    /// The challenge types offered for `identifier`.
    pub fn offered_for(&self, identifier: &Identifier) -> Vec<&'static str> {
        self.by_kind
            .values()
            .filter(|v| v.applies_to(identifier))
            .map(|v| v.kind())
            .collect()
    }
}

pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}
