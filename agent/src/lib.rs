//! The Portcullis device agent (`portcullis agent enroll | renew | run | status`): the device
//! side of draft-ietf-acme-device-attest.
//!
//! - [`tpm`]: the TPM 2.0 operations (EK, AK, device key, Certify, ActivateCredential, Sign)
//!   over tpm2-tss, any TCTI.
//! - [`enroll`](mod@enroll): open TPM enrollment (AK certificate by credential activation).
//! - [`attestation`]: the `attObj` of device-attest-01 (`tpm`, and the dev-only software
//!   format).
//! - [`acme`]: the RFC 8555 order with device-attest-01 (instant-acme).
//! - [`renewal`]: when to renew (two thirds, ARI window, backoff with jitter), pure.
//! - [`keys`], [`output`], [`certificate`], [`config`], [`clock`], [`http`], [`error`].
//!
//! The public verbs: [`enroll()`], [`renew`], [`run`], [`status`], each over an
//! [`AgentConfig`]; time is injected ([`Clock`], `now`).

pub mod acme;
mod agent;
pub mod attestation;
pub mod certificate;
pub mod clock;
pub mod config;
pub(crate) mod der;
pub mod enroll;
pub mod error;
pub mod http;
pub mod keys;
pub mod output;
pub mod renewal;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tpm;

pub use agent::{enroll, renew, run, run_with, status, Issued, Status};
pub use clock::{Clock, Sleep, SystemClock, TokioSleep};
pub use config::AgentConfig;
pub use error::{AgentError, Result};
pub use keys::{KeyMode, TpmKeyConfig};
