//! When to renew (pure functions of the certificate, the CA's advice and an injected "now"
//! and randomness).
//!
//! - Default: at two thirds of the certificate's lifetime (ARCHITECTURE.md, "renewal at two
//!   thirds of the lifetime"), moved earlier by up to 1/30 of the lifetime at random so that
//!   a fleet enrolled at once does not renew at once.
//! - When the CA offers ACME Renewal Information (RFC 9773), a uniformly random instant inside
//!   its `suggestedWindow` (RFC 9773 §4.2: "select a uniform random time within the suggested
//!   window"); a window that already ended means now.
//! - After a failure: exponential backoff with full jitter, capped, and never later than the
//!   certificate's expiry minus a margin while it is still valid.

use std::time::{Duration, SystemTime};

/// The default renewal instant for a certificate valid `[not_before, not_after]`.
/// `rand01` in [0, 1) picks the jitter.
pub fn two_thirds(not_before: SystemTime, not_after: SystemTime, rand01: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let at = not_before + lifetime * 2 / 3;
    let jitter = (lifetime / 30).mul_f64(rand01.clamp(0.0, 1.0));
    at.checked_sub(jitter).unwrap_or(at)
}

/// A uniformly random instant in the ARI window `[start, end)` (RFC 9773 §4.2).
pub fn in_window(start: SystemTime, end: SystemTime, rand01: f64) -> SystemTime {
    let width = end.duration_since(start).unwrap_or(Duration::ZERO);
    start + width.mul_f64(rand01.clamp(0.0, 1.0))
}

/// When to renew: the ARI window's choice when there is one, else two thirds.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    ari_window: Option<(SystemTime, SystemTime)>,
    rand01: f64,
) -> SystemTime {
    match ari_window {
        Some((start, end)) if start <= end => in_window(start, end, rand01),
        _ => two_thirds(not_before, not_after, rand01),
    }
}

/// How long to wait until `at` from `now` (zero when it has passed).
pub fn wait(now: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Exponential backoff with full jitter (the "Full Jitter" of exponential backoff practice:
/// a uniform wait in [base·2^(n-1)/2, base·2^(n-1)], capped at `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            attempt: 0,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt after one more failure.
    pub fn next(&mut self, rand01: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let exp = self.attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.max);
        // Half fixed, half random: never a burst of immediate retries.
        ceiling / 2 + (ceiling / 2).mul_f64(rand01.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// `next`, but no later than `deadline` (e.g. shortly before the certificate expires)
    /// while that is still ahead.
    pub fn next_before(&mut self, rand01: f64, now: SystemTime, deadline: SystemTime) -> Duration {
        let d = self.next(rand01);
        match deadline.duration_since(now) {
            Ok(left) if left > Duration::ZERO => d.min(left.max(self.base)),
            _ => d,
        }
    }
}

/// A uniform random number in [0, 1) from the OS (jitter only; not secret).
pub fn rand01() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_two_thirds_with_bounded_earlier_jitter() {
        // 24 h certificate: 16 h, up to 48 min earlier.
        let (nb, na) = (t(1_000_000), t(1_000_000 + 24 * 3600));
        assert_eq!(two_thirds(nb, na, 0.0), t(1_000_000 + 16 * 3600));
        assert_eq!(two_thirds(nb, na, 1.0), t(1_000_000 + 16 * 3600 - 48 * 60));
        let mid = two_thirds(nb, na, 0.5);
        assert!(mid < t(1_000_000 + 16 * 3600) && mid > t(1_000_000 + 15 * 3600));
        // Out-of-range randomness is clamped; an inverted validity renews at once.
        assert_eq!(two_thirds(nb, na, 7.0), two_thirds(nb, na, 1.0));
        assert_eq!(two_thirds(na, nb, 0.3), na);
    }

    #[test]
    fn renewal_ari_window_wins_and_is_uniform_inside_it() {
        let (nb, na) = (t(0), t(90_000));
        let w = Some((t(70_000), t(80_000)));
        assert_eq!(renew_at(nb, na, w, 0.0), t(70_000));
        assert_eq!(renew_at(nb, na, w, 0.5), t(75_000));
        assert!(renew_at(nb, na, w, 0.999_999) < t(80_000));
        // A nonsense window (end before start) is ignored.
        assert_eq!(renew_at(nb, na, Some((t(9), t(1))), 0.0), t(60_000));
        assert_eq!(renew_at(nb, na, None, 0.0), t(60_000));
    }

    #[test]
    fn renewal_time_to_wait_from_an_injected_now() {
        let at = renew_at(t(0), t(3 * 3600), None, 0.0);
        assert_eq!(wait(t(0), at), Duration::from_secs(2 * 3600));
        assert_eq!(wait(t(3600), at), Duration::from_secs(3600));
        assert_eq!(wait(t(3 * 3600), at), Duration::ZERO);
    }

    #[test]
    fn renewal_backoff_grows_caps_and_resets() {
        let mut b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(100),
            attempt: 0,
        };
        assert_eq!(b.next(0.0), Duration::from_secs(5));
        assert_eq!(b.next(1.0), Duration::from_secs(20));
        assert_eq!(b.next(0.0), Duration::from_secs(20));
        for _ in 0..50 {
            assert!(b.next(1.0) <= Duration::from_secs(100));
        }
        assert_eq!(b.next(1.0), Duration::from_secs(100));
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_secs(5));
        // Close to expiry the wait shrinks to what is left (but not below the base).
        let mut b = Backoff {
            attempt: 10,
            ..Backoff::default()
        };
        let d = b.next_before(1.0, t(0), t(60));
        assert_eq!(d, Duration::from_secs(60));
        let d = b.next_before(1.0, t(0), t(1));
        assert_eq!(d, Duration::from_secs(10));
    }

    #[test]
    fn renewal_rand01_is_in_range() {
        for _ in 0..100 {
            let r = rand01();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
