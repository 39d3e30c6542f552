//! When an enforcement point last heard from its status source, and whether that is too long
//! ago. The feed client calls [`Liveness::heard`] on every event and heartbeat; metrics and
//! `/readyz` read [`Liveness::freshness`]. Time is always an argument.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use portcullis_config::StaleMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalenessPolicy {
    pub max_staleness: Duration,
    pub mode: StaleMode,
}

/// What a point knows of its status source's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The source is not a feed (a file, or the CA in this process): never stale.
    Untracked,
    /// Nothing heard yet: every device is unknown, and so refused.
    NeverHeard,
    Fresh {
        silent_for: Duration,
    },
    Stale {
        silent_for: Duration,
    },
}

#[derive(Debug, Default)]
pub struct Liveness {
    policy: Option<StalenessPolicy>,
    /// Milliseconds since the Unix epoch; 0 = never.
    last_heard_ms: AtomicU64,
    /// Set by the feed client when it acted on staleness (strict: refusing), for `/readyz`.
    acting_stale: AtomicBool,
}

impl Liveness {
    pub fn tracked(policy: StalenessPolicy) -> Self {
        Self {
            policy: Some(policy),
            ..Self::default()
        }
    }

    pub fn policy(&self) -> Option<StalenessPolicy> {
        self.policy
    }

    pub fn heard(&self, now: SystemTime) {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis().max(1) as u64);
        self.last_heard_ms.fetch_max(ms, Ordering::Release);
    }

    pub fn last_heard(&self) -> Option<SystemTime> {
        match self.last_heard_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    pub fn freshness(&self, now: SystemTime) -> Freshness {
        let Some(policy) = self.policy else {
            return Freshness::Untracked;
        };
        let Some(last) = self.last_heard() else {
            return Freshness::NeverHeard;
        };
        let silent_for = now.duration_since(last).unwrap_or_default();
        if silent_for > policy.max_staleness {
            Freshness::Stale { silent_for }
        } else {
            Freshness::Fresh { silent_for }
        }
    }

    /// Why the point is not ready, if it is not: never heard (no state at all), or stale in
    /// strict mode (every device refused). Stale in best-effort mode is ready: it serves the
    /// last known state on purpose.
    pub fn unready_reason(&self, now: SystemTime) -> Option<String> {
        let policy = self.policy?;
        match self.freshness(now) {
            Freshness::NeverHeard => Some("status feed not heard from yet".into()),
            Freshness::Stale { silent_for } if policy.mode == StaleMode::Strict => Some(format!(
                "status feed silent for {}s (max_staleness {}s, mode strict): every device is refused",
                silent_for.as_secs(),
                policy.max_staleness.as_secs()
            )),
            _ => None,
        }
    }

    pub fn set_acting_stale(&self, stale: bool) {
        self.acting_stale.store(stale, Ordering::Release);
    }

    pub fn acting_stale(&self) -> bool {
        self.acting_stale.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_last_heard_time() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(Liveness::default().freshness(t0), Freshness::Untracked);
        let l = Liveness::tracked(StalenessPolicy {
            max_staleness: Duration::from_secs(10),
            mode: StaleMode::Strict,
        });
        assert_eq!(l.freshness(t0), Freshness::NeverHeard);
        assert!(l.unready_reason(t0).unwrap().contains("not heard"));
        l.heard(t0);
        assert_eq!(
            l.freshness(t0 + Duration::from_secs(10)),
            Freshness::Fresh {
                silent_for: Duration::from_secs(10)
            }
        );
        assert!(l.unready_reason(t0 + Duration::from_secs(10)).is_none());
        let late = t0 + Duration::from_secs(11);
        assert!(matches!(l.freshness(late), Freshness::Stale { .. }));
        assert!(l.unready_reason(late).unwrap().contains("strict"));
        // An older time never moves the clock back.
        l.heard(t0 - Duration::from_secs(5));
        assert_eq!(l.last_heard(), Some(t0));
    }

    #[test]
    fn best_effort_stays_ready_when_stale() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let l = Liveness::tracked(StalenessPolicy {
            max_staleness: Duration::from_secs(10),
            mode: StaleMode::BestEffort,
        });
        l.heard(t0);
        let late = t0 + Duration::from_secs(60);
        assert!(matches!(l.freshness(late), Freshness::Stale { .. }));
        assert_eq!(l.unready_reason(late), None);
    }
}
