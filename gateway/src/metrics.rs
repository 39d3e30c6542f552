//! Prometheus metrics of the gateway. Registered once on the registry the caller passes to
//! `Gateway::new`; the admin listener renders that registry.

use std::sync::OnceLock;

use http::StatusCode;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub(crate) struct Metrics {
    /// `portcullis_requests_total{route,code}`: every response the gateway sends.
    pub requests: IntCounterVec,
    /// `portcullis_decisions_total{decision,reason}`: every access decision.
    pub decisions: IntCounterVec,
    /// `portcullis_handshake_failures_total{reason}`: refused or failed TLS handshakes.
    pub handshake_failures: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`: time to the response head.
    pub request_duration: HistogramVec,
    /// `portcullis_status_generation`: generation of the status snapshot in force.
    pub status_generation: IntGauge,
    /// `portcullis_status_snapshot_age_seconds`: now − the snapshot's `produced_at`.
    pub status_age: Gauge,
    /// `portcullis_status_feed_silence_seconds`: time since the status feed was last heard
    /// (absent when the status source is not a feed).
    pub feed_silence: Gauge,
    /// `portcullis_status_feed_stale{mode}`: 1 while the feed is silent past `max_staleness`
    /// (strict: every device refused; best_effort: the last known state in force).
    pub feed_stale: IntGaugeVec,
    /// `portcullis_connections_open`: client connections currently open (tunnels included).
    pub connections_open: IntGauge,
    /// `portcullis_connections_cut_total`: connections closed because their device lost trust.
    pub connections_cut: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Responses sent, by route and status code",
            ),
            &["route", "code"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_decisions_total",
                "Access decisions, by decision and reason",
            ),
            &["decision", "reason"],
        )?;
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_handshake_failures_total",
                "TLS handshakes refused or failed, by reason",
            ),
            &["reason"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )?;
        let status_generation = IntGauge::new(
            "portcullis_status_generation",
            "Generation of the device status snapshot in force",
        )?;
        let status_age = Gauge::new(
            "portcullis_status_snapshot_age_seconds",
            "Seconds since the status source produced the snapshot in force",
        )?;
        let feed_silence = Gauge::new(
            "portcullis_status_feed_silence_seconds",
            "Seconds since the status feed was last heard (event or heartbeat)",
        )?;
        let feed_stale = IntGaugeVec::new(
            Opts::new(
                "portcullis_status_feed_stale",
                "1 while the status feed is silent past max_staleness, by staleness mode",
            ),
            &["mode"],
        )?;
        let connections_open = IntGauge::new(
            "portcullis_connections_open",
            "Client connections currently open",
        )?;
        let connections_cut = IntCounter::new(
            "portcullis_connections_cut_total",
            "Connections closed because their device stopped being trusted",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(status_generation.clone()))?;
        registry.register(Box::new(status_age.clone()))?;
        registry.register(Box::new(feed_silence.clone()))?;
        registry.register(Box::new(feed_stale.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_cut.clone()))?;
        Ok(Self {
            requests,
            decisions,
            handshake_failures,
            request_duration,
            status_generation,
            status_age,
            feed_silence,
            feed_stale,
            connections_open,
            connections_cut,
        })
    }

    /// The per-route series, resolved once per route table rather than per request (a label
    /// lookup hashes the label values and takes a lock).
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: self.requests.clone(),
            route: route.into(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.request_duration.with_label_values(&[route]),
        }
    }

    pub fn handshake_failed(&self, reason: &str) {
        self.handshake_failures.with_label_values(&[reason]).inc();
    }

    /// Updates the feed gauges; a source that is not a feed leaves them unset.
    pub fn observe_liveness(
        &self,
        liveness: &portcullis_policy::Liveness,
        now: std::time::SystemTime,
    ) {
        use portcullis_policy::Freshness;
        let Some(policy) = liveness.policy() else {
            return;
        };
        let (silence, stale) = match liveness.freshness(now) {
            Freshness::Untracked | Freshness::NeverHeard => (f64::INFINITY, true),
            Freshness::Fresh { silent_for } => (silent_for.as_secs_f64(), false),
            Freshness::Stale { silent_for } => (silent_for.as_secs_f64(), true),
        };
        self.feed_silence.set(silence);
        self.feed_stale
            .with_label_values(&[policy.mode.as_str()])
            .set(i64::from(stale));
    }

    /// Updates the status gauges from a snapshot.
    pub fn observe_snapshot(&self, snapshot: &portcullis_policy::StatusSnapshot) {
        self.status_generation
            .set(i64::try_from(snapshot.generation).unwrap_or(i64::MAX));
        if let Some(produced) = snapshot.produced_at {
            let age = std::time::SystemTime::now()
                .duration_since(produced)
                .unwrap_or_default();
            self.status_age.set(age.as_secs_f64());
        }
    }
}

/// `portcullis_requests_total` and `portcullis_request_duration_seconds` of one route.
pub(crate) struct RouteMetrics {
    requests: IntCounterVec,
    route: Box<str>,
    /// `requests{route, code}`, by status code − 100, resolved on first use.
    by_status: Box<[OnceLock<IntCounter>]>,
    pub duration: Histogram,
}

impl RouteMetrics {
    /// Counts one response with `status`.
    pub fn count(&self, status: StatusCode) {
        let resolve = || {
            self.requests
                .with_label_values(&[&*self.route, status.as_str()])
        };
        // `StatusCode` goes up to 999; codes past 599 are not worth a slot.
        match self.by_status.get(usize::from(status.as_u16() - 100)) {
            Some(slot) => slot.get_or_init(resolve).inc(),
            None => resolve().inc(),
        }
    }
}

/// Renders a registry in the Prometheus text exposition format.
pub(crate) fn render(registry: &Registry) -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::with_capacity(8 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot render metrics");
    }
    out
}
