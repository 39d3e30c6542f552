//! Enrollments waiting for their second round trip: the credential the CA encrypted, and what
//! it was bound to (device, EK, AK). In memory, short-lived and one-shot.
//!
//! - Memory, not the database: the credential is a secret that is useless after a few minutes
//!   and should not outlive the process in a file. The cost: a `finish` must reach the CA node
//!   that served `start` (noted in the module doc of `enroll`).
//! - One-shot: [`Sessions::take`] removes the session whatever the outcome, so a credential can
//!   be tried once; a replayed or guessed session id finds nothing.
//! - Bounded: one pending session per device (a new `start` replaces the older one), and at
//!   most `capacity` in all; expired ones are purged before refusing for capacity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use super::ak::Ak;
use super::ek::Ek;
use super::error::{refuse, EnrollError, Rule};

/// Bytes of the credential (TPM2B_DIGEST, at most the EK nameAlg's digest: 32 fits all).
pub const CREDENTIAL_LEN: usize = 32;

/// One pending enrollment.
#[derive(Debug, Clone)]
pub struct Pending {
    pub device_id: String,
    pub ek: Ek,
    pub ak: Ak,
    pub credential: [u8; CREDENTIAL_LEN],
    pub expires: SystemTime,
}

#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<Inner>,
    capacity: usize,
    rng: SystemRandom,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Pending>,
    /// device id → its pending session id.
    by_device: HashMap<String, String>,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<Pending> {
        let p = self.by_id.remove(id)?;
        if self.by_device.get(&p.device_id).is_some_and(|s| s == id) {
            self.by_device.remove(&p.device_id);
        }
        Some(p)
    }

    fn purge(&mut self, now: SystemTime) {
        let expired: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }
}

impl Sessions {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            rng: SystemRandom::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation leaves the maps consistent before it can panic, so a poisoned lock
        // is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh random credential.
    pub fn new_credential(&self) -> Result<[u8; CREDENTIAL_LEN], EnrollError> {
        let mut c = [0u8; CREDENTIAL_LEN];
        self.rng
            .fill(&mut c)
            .map_err(|_| EnrollError::internal("drawing a credential", "no randomness"))?;
        Ok(c)
    }

    /// Stores `pending` under a new random id (128 bits, base64url), replacing the device's
    /// previous pending session.
    pub fn insert(&self, pending: Pending, now: SystemTime) -> Result<String, EnrollError> {
        let mut raw = [0u8; 16];
        self.rng
            .fill(&mut raw)
            .map_err(|_| EnrollError::internal("drawing a session id", "no randomness"))?;
        let id = B64.encode(raw);
        let mut inner = self.lock();
        if let Some(old) = inner.by_device.get(&pending.device_id).cloned() {
            inner.remove(&old);
        }
        if inner.by_id.len() >= self.capacity {
            inner.purge(now);
        }
        if inner.by_id.len() >= self.capacity {
            return refuse(
                Rule::Capacity,
                format!(
                    "{} enrollments are waiting for their finish; try again in a minute",
                    inner.by_id.len()
                ),
            );
        }
        inner
            .by_device
            .insert(pending.device_id.clone(), id.clone());
        inner.by_id.insert(id.clone(), pending);
        Ok(id)
    }

    /// Removes and returns the session `id` if it exists and has not expired. Removal happens
    /// in any case: one attempt per session.
    pub fn take(&self, id: &str, now: SystemTime) -> Option<Pending> {
        let p = self.lock().remove(id)?;
        (p.expires > now).then_some(p)
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
