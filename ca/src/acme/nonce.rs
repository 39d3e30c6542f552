//! Anti-replay nonces (RFC 8555 §6.5): unpredictable, single-use, expiring.
//!
//! A nonce is 128 random bits, base64url. The pool remembers issued nonces until they are used
//! or expire; it is bounded so a client fetching nonces in a loop cannot grow it without limit
//! (the oldest are dropped, and a client holding one gets `badNonce` and simply retries).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

pub struct NoncePool {
    inner: Mutex<Pool>,
    lifetime: Duration,
    capacity: usize,
    rng: SystemRandom,
}

#[derive(Default)]
struct Pool {
    issued: HashMap<String, SystemTime>,
    order: VecDeque<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("nonce is unknown or was already used")]
    Unknown,
    #[error("nonce has expired")]
    Expired,
    #[error("no randomness available")]
    Rng,
}

impl NoncePool {
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Pool::default()),
            lifetime,
            capacity: capacity.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// A fresh nonce issued at `now`.
    pub fn issue(&self, now: SystemTime) -> Result<String, NonceError> {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw).map_err(|_| NonceError::Rng)?;
        let nonce = B64.encode(raw);
        let mut pool = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while pool.order.len() >= self.capacity {
            if let Some(old) = pool.order.pop_front() {
                pool.issued.remove(&old);
            }
        }
        pool.issued.insert(nonce.clone(), now);
        pool.order.push_back(nonce.clone());
        Ok(nonce)
    }

    /// Consumes `nonce`: succeeds once per issued nonce, within its lifetime.
    pub fn consume(&self, nonce: &str, now: SystemTime) -> Result<(), NonceError> {
        let mut pool = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let issued = pool.issued.remove(nonce).ok_or(NonceError::Unknown)?;
        // The order queue keeps the stale entry; it is skipped when it reaches the front.
        if now.duration_since(issued).unwrap_or_default() > self.lifetime {
            return Err(NonceError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once() {
        let pool = NoncePool::new(Duration::from_secs(60), 100);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let n = pool.issue(t).unwrap();
        assert_eq!(n.len(), 22);
        assert_eq!(pool.consume(&n, t), Ok(()));
        assert_eq!(pool.consume(&n, t), Err(NonceError::Unknown));
        assert_eq!(pool.consume("made-up", t), Err(NonceError::Unknown));
    }

    #[test]
    fn nonces_expire() {
        let pool = NoncePool::new(Duration::from_secs(60), 100);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let n = pool.issue(t).unwrap();
        assert_eq!(
            pool.consume(&n, t + Duration::from_secs(61)),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn the_pool_is_bounded_and_drops_the_oldest() {
        let pool = NoncePool::new(Duration::from_secs(60), 2);
        let t = SystemTime::UNIX_EPOCH;
        let first = pool.issue(t).unwrap();
        let second = pool.issue(t).unwrap();
        let third = pool.issue(t).unwrap();
        assert_eq!(pool.consume(&first, t), Err(NonceError::Unknown));
        assert_eq!(pool.consume(&second, t), Ok(()));
        assert_eq!(pool.consume(&third, t), Ok(()));
    }
}
