//! The access decision with its reason, and the decision cache.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use portcullis_config::DeviceStatus;

use crate::identity::DeviceIdentity;
use crate::rules::{RoutePolicy, Subject, Truth};
use crate::status::StatusSnapshot;

/// The request attributes rules may read.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub source_ip: IpAddr,
    pub method: &'a str,
    /// The request path as routed (no query), already normalized by the caller.
    pub path: &'a str,
}

/// Machine-readable reason class plus a human detail (detail goes to the audit log only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Stable snake_case class: `allowed`, `no_certificate`, `unknown_device`,
    /// `device_quarantined`, `device_retired`, `certificate_revoked`, `no_device_id`,
    /// `denied_by_rule`, `no_rule_matched`.
    pub code: &'static str,
    /// E.g. "allow[0] matched" or "allow[0]: tag eng missing". Borrowed (no allocation) on the
    /// common paths; reads as `&str` through `Deref`.
    pub detail: Cow<'static, str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
}

impl Decision {
    fn allow(detail: Cow<'static, str>) -> Self {
        Self {
            allow: true,
            reason: Reason {
                code: "allowed",
                detail,
            },
        }
    }
    fn deny(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            allow: false,
            reason: Reason {
                code,
                detail: detail.into(),
            },
        }
    }
}

/// `"allow[i] matched"` / `"deny[i] matched"` without allocating for the first rules of a route
/// (nearly every route has fewer than 16).
macro_rules! indexed {
    ($prefix:literal) => {
        [
            concat!($prefix, "[0] matched"),
            concat!($prefix, "[1] matched"),
            concat!($prefix, "[2] matched"),
            concat!($prefix, "[3] matched"),
            concat!($prefix, "[4] matched"),
            concat!($prefix, "[5] matched"),
            concat!($prefix, "[6] matched"),
            concat!($prefix, "[7] matched"),
            concat!($prefix, "[8] matched"),
            concat!($prefix, "[9] matched"),
            concat!($prefix, "[10] matched"),
            concat!($prefix, "[11] matched"),
            concat!($prefix, "[12] matched"),
            concat!($prefix, "[13] matched"),
            concat!($prefix, "[14] matched"),
            concat!($prefix, "[15] matched"),
        ]
    };
}
static ALLOW_MATCHED: [&str; 16] = indexed!("allow");
static DENY_MATCHED: [&str; 16] = indexed!("deny");

fn matched(table: &'static [&'static str; 16], what: &str, i: usize) -> Cow<'static, str> {
    match table.get(i) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(format!("{what}[{i}] matched")),
    }
}

/// Decides one request. `identity` is `None` when no certificate was presented.
///
/// The order is the contract; each step can only deny, except the last:
/// 1. No certificate: allowed only if an allow rule is definitely true and no deny rule might
///    apply (device facts are unknown; see `rules` for the three-valued logic). Otherwise
///    `no_certificate`.
/// 2. A certificate that names no device: `no_device_id`. A strict enforcement point whose
///    status feed is stale (`StatusSnapshot::stale_since`) refuses every device:
///    `status_stale`.
/// 3. Its serial is revoked: `certificate_revoked`. Before the inventory, so a revoked
///    certificate of an active device is still refused.
/// 4. The device must be in the inventory (`unknown_device`) and `active`
///    (`device_quarantined`, `device_retired`). This is not a rule anyone can configure away:
///    it holds before any rule is read.
/// 5. Any deny rule that matches: `denied_by_rule`. Deny wins over allow.
/// 6. The first allow rule that matches: `allowed`; none: `no_rule_matched`, with each allow
///    rule's reason in the detail. No allow rules means default deny.
pub fn decide(
    policy: &RoutePolicy,
    snapshot: &StatusSnapshot,
    identity: Option<&DeviceIdentity>,
    facts: &RequestFacts<'_>,
) -> Decision {
    // 1.
    let Some(identity) = identity else {
        return decide_without_certificate(policy, facts);
    };
    // 2.
    let Some(device_id) = identity.device_id.as_deref() else {
        return Decision::deny("no_device_id", "certificate carries no device identifier");
    };
    if snapshot.stale_since.is_some() {
        return Decision::deny(
            "status_stale",
            "the status feed is silent past max_staleness and this point is strict",
        );
    }
    // 3.
    if snapshot.is_revoked(identity) {
        return Decision::deny(
            "certificate_revoked",
            format!("certificate serial {} is revoked", identity.serial),
        );
    }
    // 4.
    let Some(record) = snapshot.device(device_id) else {
        return Decision::deny(
            "unknown_device",
            format!("device {device_id} is not in the inventory"),
        );
    };
    match record.status() {
        DeviceStatus::Active => {}
        DeviceStatus::Quarantined => {
            return Decision::deny(
                "device_quarantined",
                format!("device {device_id} is quarantined"),
            )
        }
        DeviceStatus::Retired => {
            return Decision::deny("device_retired", format!("device {device_id} is retired"))
        }
    }
    let subject = Subject {
        identity: Some(identity),
        record: Some(record),
        facts,
    };
    // 5.
    if let Some((i, _)) = policy.first_deny(&subject) {
        return Decision::deny("denied_by_rule", matched(&DENY_MATCHED, "deny", i));
    }
    // 6.
    match policy.first_allow(&subject) {
        Some(i) => Decision::allow(matched(&ALLOW_MATCHED, "allow", i)),
        None => Decision::deny("no_rule_matched", policy.explain_allow_failures(&subject)),
    }
}

fn decide_without_certificate(policy: &RoutePolicy, facts: &RequestFacts<'_>) -> Decision {
    let subject = Subject {
        identity: None,
        record: None,
        facts,
    };
    match policy.first_deny(&subject) {
        Some((i, Truth::Unknown)) => Decision::deny(
            "no_certificate",
            format!("deny[{i}] cannot be ruled out without a certificate"),
        ),
        Some((i, _)) => Decision::deny("no_certificate", matched(&DENY_MATCHED, "deny", i)),
        None => match policy.first_allow(&subject) {
            Some(i) => Decision::allow(matched(&ALLOW_MATCHED, "allow", i)),
            None => Decision::deny("no_certificate", policy.explain_allow_failures(&subject)),
        },
    }
}

/// (certificate fingerprint, route index, snapshot generation, policy id).
///
/// The policy id makes a reloaded route table safe even if the cache were kept across the
/// reload: a decision is only ever reused for the same certificate, the same compiled rules and
/// the same inventory snapshot — everything `decide` reads when the route does not read the
/// request.
type CacheKey = ([u8; 32], usize, u64, u64);

/// A cheap, unkeyed hash for cache keys. SipHash's protection against chosen keys (HashDoS)
/// buys nothing here: every key starts with the SHA-256 fingerprint of a certificate that
/// chained to our CA, which a client cannot choose at will. It saves ~40 ns per lookup.
#[derive(Clone, Copy, Default)]
struct KeyHashBuilder;

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl KeyHasher {
    fn mix(&mut self, word: u64) {
        // FxHash step.
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.mix(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    fn finish(&self) -> u64 {
        // murmur3 fmix64, so that every output bit depends on every input bit (moka uses
        // both the high and the low bits).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// moka cache of decisions keyed by (cert fingerprint, route index, snapshot generation); used
/// only for routes whose rules do not read the request.
pub struct DecisionCache {
    cache: moka::sync::Cache<CacheKey, Decision, KeyHashBuilder>,
}

impl DecisionCache {
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(KeyHashBuilder),
        }
    }

    /// Returns the cached decision or computes, stores and returns it.
    ///
    /// Computes directly, without the cache, when there is no certificate (nothing to key on)
    /// or when the route's rules read the request.
    pub fn decide(
        &self,
        route_index: usize,
        policy: &RoutePolicy,
        snapshot: &StatusSnapshot,
        identity: Option<&DeviceIdentity>,
        facts: &RequestFacts<'_>,
    ) -> Decision {
        let Some(id) = identity.filter(|_| !policy.is_request_dependent()) else {
            return decide(policy, snapshot, identity, facts);
        };
        let key = (
            id.fingerprint,
            route_index,
            snapshot.generation,
            policy.id(),
        );
        if let Some(hit) = self.cache.get(&key) {
            return hit;
        }
        let decision = decide(policy, snapshot, identity, facts);
        self.cache.insert(key, decision.clone());
        decision
    }

    /// Number of cached decisions (approximate; for metrics).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Drops every cached decision.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DeviceRecord;
    use crate::testutil;
    use portcullis_config::Criterion;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    const FACTS: RequestFacts<'static> = RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        method: "GET",
        path: "/",
    };

    fn identity() -> DeviceIdentity {
        let ca = testutil::ca("root");
        let cert = testutil::device(&ca)
            .serial(&[0x0a, 0x1b])
            .attestation("tpm")
            .build();
        DeviceIdentity::from_der(cert.der(), testutil::TRUST_DOMAIN).unwrap()
    }

    fn snapshot(status: Option<DeviceStatus>, revoked: &[&str]) -> StatusSnapshot {
        let records = status.map(|status| DeviceRecord {
            id: "dev-1".into(),
            status,
            tags: BTreeSet::from(["eng".to_owned()]),
            owner: None,
            platform: Some("linux".into()),
        });
        StatusSnapshot::from_records(records, revoked.iter().map(|s| s.to_string()))
    }

    #[test]
    fn a_strict_stale_point_refuses_every_device() {
        let mut snap = snapshot(Some(DeviceStatus::Active), &[]);
        let p = policy(&[tag("eng")], &[]);
        assert!(decide(&p, &snap, Some(&identity()), &FACTS).allow);
        snap.stale_since = Some(std::time::SystemTime::UNIX_EPOCH);
        let d = decide(&p, &snap, Some(&identity()), &FACTS);
        assert!(!d.allow);
        assert_eq!(d.reason.code, "status_stale");
    }

    fn policy(allow: &[Criterion], deny: &[Criterion]) -> RoutePolicy {
        RoutePolicy::compile(allow, deny).unwrap()
    }

    fn tag(t: &str) -> Criterion {
        Criterion::Tag(t.into())
    }

    fn check(d: &Decision, allow: bool, code: &str, detail: &str) {
        assert_eq!(
            (d.allow, d.reason.code, &*d.reason.detail),
            (allow, code, detail)
        );
    }

    #[test]
    fn active_device_allowed_by_rule() {
        let p = policy(&[tag("ops"), tag("eng")], &[]);
        let d = decide(
            &p,
            &snapshot(Some(DeviceStatus::Active), &[]),
            Some(&identity()),
            &FACTS,
        );
        check(&d, true, "allowed", "allow[1] matched");
        assert!(
            matches!(d.reason.detail, Cow::Borrowed(_)),
            "no allocation on allow"
        );
    }

    #[test]
    fn step_1_without_certificate() {
        let snap = snapshot(Some(DeviceStatus::Active), &[]);
        let anon = policy(&[Criterion::Authenticated(false)], &[]);
        check(
            &decide(&anon, &snap, None, &FACTS),
            true,
            "allowed",
            "allow[0] matched",
        );

        let device_only = policy(&[tag("eng")], &[]);
        check(
            &decide(&device_only, &snap, None, &FACTS),
            false,
            "no_certificate",
            "allow[0]: tag eng: no certificate",
        );
        // Negating an unknown fact does not let a certificate-less client in…
        let negated = policy(&[Criterion::Not(Box::new(tag("contractor")))], &[]);
        assert_eq!(
            decide(&negated, &snap, None, &FACTS).reason.code,
            "no_certificate"
        );
        // …nor out of a deny rule.
        let with_deny = policy(
            &[Criterion::Accept(true)],
            &[Criterion::Not(Box::new(tag("eng")))],
        );
        check(
            &decide(&with_deny, &snap, None, &FACTS),
            false,
            "no_certificate",
            "deny[0] cannot be ruled out without a certificate",
        );
        // A deny that is definitely false does not stop an anonymous allow.
        let exempt = policy(
            &[Criterion::Accept(true)],
            &[Criterion::And(vec![
                Criterion::Authenticated(true),
                tag("contractor"),
            ])],
        );
        assert!(decide(&exempt, &snap, None, &FACTS).allow);
        let request_deny = policy(
            &[Criterion::Accept(true)],
            &[Criterion::Method("GET".into())],
        );
        check(
            &decide(&request_deny, &snap, None, &FACTS),
            false,
            "no_certificate",
            "deny[0] matched",
        );
    }

    #[test]
    fn step_2_no_device_id() {
        let mut id = identity();
        id.device_id = None;
        let p = policy(&[Criterion::Accept(true)], &[]);
        let d = decide(
            &p,
            &snapshot(Some(DeviceStatus::Active), &[]),
            Some(&id),
            &FACTS,
        );
        assert_eq!((d.allow, d.reason.code), (false, "no_device_id"));
    }

    #[test]
    fn step_3_revoked_before_status() {
        let p = policy(&[Criterion::Accept(true)], &[]);
        let id = identity();
        let d = decide(
            &p,
            &snapshot(Some(DeviceStatus::Active), &["0A:1B"]),
            Some(&id),
            &FACTS,
        );
        check(
            &d,
            false,
            "certificate_revoked",
            "certificate serial 0a1b is revoked",
        );
        // Even for a device that is also unknown.
        let d = decide(&p, &snapshot(None, &["0a1b"]), Some(&id), &FACTS);
        assert_eq!(d.reason.code, "certificate_revoked");
    }

    #[test]
    fn step_4_inventory_status_is_mandatory() {
        let p = policy(&[Criterion::Accept(true)], &[]);
        let id = identity();
        for (status, code) in [
            (None, "unknown_device"),
            (Some(DeviceStatus::Quarantined), "device_quarantined"),
            (Some(DeviceStatus::Retired), "device_retired"),
        ] {
            let d = decide(&p, &snapshot(status, &[]), Some(&id), &FACTS);
            assert_eq!((d.allow, d.reason.code), (false, code));
        }
        // Not even an explicit rule for the status gets a quarantined device in.
        let q = policy(&[Criterion::Status(DeviceStatus::Quarantined)], &[]);
        let d = decide(
            &q,
            &snapshot(Some(DeviceStatus::Quarantined), &[]),
            Some(&id),
            &FACTS,
        );
        assert_eq!(d.reason.code, "device_quarantined");
    }

    #[test]
    fn step_5_deny_wins() {
        let p = policy(&[tag("eng")], &[Criterion::Platform("Linux".into())]);
        let d = decide(
            &p,
            &snapshot(Some(DeviceStatus::Active), &[]),
            Some(&identity()),
            &FACTS,
        );
        check(&d, false, "denied_by_rule", "deny[0] matched");
    }

    #[test]
    fn step_6_no_rule_matched_explains() {
        let snap = snapshot(Some(DeviceStatus::Active), &[]);
        let p = policy(
            &[
                tag("ops"),
                Criterion::Not(Box::new(Criterion::Platform("linux".into()))),
            ],
            &[],
        );
        check(
            &decide(&p, &snap, Some(&identity()), &FACTS),
            false,
            "no_rule_matched",
            "allow[0]: tag ops missing; allow[1]: not (platform linux) failed",
        );
        let none = policy(&[], &[]);
        check(
            &decide(&none, &snap, Some(&identity()), &FACTS),
            false,
            "no_rule_matched",
            "no allow rules (default deny)",
        );
    }

    #[test]
    fn many_rules_still_name_the_index() {
        let mut allow: Vec<Criterion> = (0..20).map(|i| tag(&format!("t{i}"))).collect();
        allow.push(tag("eng"));
        let p = policy(&allow, &[]);
        let d = decide(
            &p,
            &snapshot(Some(DeviceStatus::Active), &[]),
            Some(&identity()),
            &FACTS,
        );
        check(&d, true, "allowed", "allow[20] matched");
    }

    #[test]
    fn cache_hits_until_the_generation_changes() {
        let cache = DecisionCache::new(100);
        let p = policy(&[tag("eng")], &[]);
        let id = identity();
        let mut snap = snapshot(Some(DeviceStatus::Active), &[]);
        snap.generation = 1;
        assert!(cache.decide(0, &p, &snap, Some(&id), &FACTS).allow);

        // Same generation, different content: the cached decision is served. (A real store
        // never does this; it proves the cache is consulted.)
        let mut same_gen = snapshot(Some(DeviceStatus::Quarantined), &[]);
        same_gen.generation = 1;
        assert!(cache.decide(0, &p, &same_gen, Some(&id), &FACTS).allow);
        // Another route index is another entry.
        assert_eq!(
            cache
                .decide(1, &p, &same_gen, Some(&id), &FACTS)
                .reason
                .code,
            "device_quarantined"
        );

        // New generation: recomputed.
        same_gen.generation = 2;
        let d = cache.decide(0, &p, &same_gen, Some(&id), &FACTS);
        assert_eq!((d.allow, d.reason.code), (false, "device_quarantined"));

        // A recompiled policy (config reload) does not reuse decisions either.
        let stricter = policy(&[tag("ops")], &[]);
        let d = cache.decide(0, &stricter, &snap, Some(&id), &FACTS);
        assert_eq!(d.reason.code, "no_rule_matched");
    }

    #[test]
    fn key_hash_depends_on_every_component() {
        let base: CacheKey = ([1; 32], 0, 1, 1);
        let h = |k: &CacheKey| KeyHashBuilder.hash_one(k);
        let mut fp = base;
        fp.0[31] = 2;
        for other in [
            fp,
            ([1; 32], 1, 1, 1),
            ([1; 32], 0, 2, 1),
            ([1; 32], 0, 1, 2),
        ] {
            assert_ne!(h(&base), h(&other), "{other:?}");
        }
        assert_eq!(h(&base), h(&base.clone()));
    }

    #[test]
    fn cache_is_bypassed_without_certificate_or_for_request_rules() {
        let cache = DecisionCache::new(100);
        let snap = snapshot(Some(DeviceStatus::Active), &[]);
        let id = identity();
        let p = policy(&[Criterion::Method("GET".into())], &[]);
        assert!(cache.decide(0, &p, &snap, Some(&id), &FACTS).allow);
        let post = RequestFacts {
            method: "POST",
            ..FACTS
        };
        assert!(
            !cache.decide(0, &p, &snap, Some(&id), &post).allow,
            "not served from cache"
        );

        let anon = policy(&[Criterion::Authenticated(false)], &[]);
        assert!(cache.decide(0, &anon, &snap, None, &FACTS).allow);
        cache.cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0);
    }
}
