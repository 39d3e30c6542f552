//! Time, injected. Everything in the CA that depends on "now" (nonce expiry, order and
//! authorization expiry, certificate validity) asks a [`Clock`], so tests can travel in time
//! instead of sleeping, and a wrong system clock has exactly one place to be looked at.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// A manual clock starting at the current wall-clock second (certificates it dates must be
    /// valid for real verifiers such as `openssl verify`).
    pub fn starting_now() -> Self {
        let secs = unix_seconds(SystemTime::now());
        Self::new(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seconds since the Unix epoch; times before it (a broken clock) count as negative.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`unix_seconds`].
pub fn from_unix_seconds(s: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

/// RFC 3339 in UTC with second precision, as ACME objects carry times (RFC 8555 §7.1).
pub fn rfc3339(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Parses an RFC 3339 timestamp (as clients send for notBefore/notAfter).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let odt =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(from_unix_seconds(odt.unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(unix_seconds(c.now()), 10);
        c.advance(Duration::from_secs(5));
        assert_eq!(unix_seconds(c.now()), 15);
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = from_unix_seconds(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(unix_seconds(from_unix_seconds(-5)), -5);
    }
}
