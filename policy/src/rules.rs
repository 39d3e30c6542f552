//! Route rules compiled from config `Criterion`s.
//!
//! Criteria are checked once, at compile time (so a bad rule fails the config load, not a
//! request), and turned into a tree that evaluates without allocating.
//!
//! # Three-valued evaluation
//!
//! Without a certificate, device facts (status, device id, tag, platform, attestation,
//! fingerprint, SAN) are *unknown*, not false, and `and` / `or` / `not` follow Kleene's logic:
//! `not unknown` is still unknown. The rule then is simple: **an unknown fact never grants
//! access**. An allow rule applies only if it is definitely true; a deny rule applies unless it
//! is definitely false. Otherwise `allow = [{ not = { tag = "contractor" } }]` would let in
//! anyone who simply does not present a certificate, and `deny = [{ not = { tag = "eng" } }]`
//! would not stop them. To exempt certificate-less requests from a device deny rule, say so:
//! `{ and = [{ authenticated = true }, { tag = "contractor" }] }`.
//!
//! With a certificate every fact is known (the inventory record is required before rules are
//! read, see `decision::decide`), so this only matters on routes that accept clients without
//! one.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use portcullis_config::{Criterion, DeviceStatus};
use wildmatch::WildMatch;

use crate::decision::RequestFacts;
use crate::identity::DeviceIdentity;
use crate::packed::DeviceView;

/// A route's compiled allow / deny rules.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    allow: Vec<Node>,
    deny: Vec<Node>,
    request_dependent: bool,
    /// Distinguishes policies in the decision cache, so a recompiled (reloaded) policy never
    /// serves a decision made under an older one. Clones share it: same rules, same decisions.
    id: u64,
}

/// Kleene truth value (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(b: bool) -> Self {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
    fn not(self) -> Self {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// What rules read: the certificate identity, its inventory record, the request.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// `None` when no certificate was presented.
    pub identity: Option<&'a DeviceIdentity>,
    /// The inventory record of `identity`'s device, if any.
    pub record: Option<DeviceView<'a>>,
    pub facts: &'a RequestFacts<'a>,
}

#[derive(Debug, Clone)]
enum Node {
    Accept(bool),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Authenticated(bool),
    Status(DeviceStatus),
    DeviceId(String),
    Tag(String),
    Platform(String),
    Attestation(String),
    Fingerprint([u8; 32]),
    San(String),
    SourceIp(IpNet),
    Method(String),
    PathPrefix(String),
    Path(String, WildMatch),
}

static NEXT_POLICY_ID: AtomicU64 = AtomicU64::new(1);

impl RoutePolicy {
    /// Compiles and validates the rules. The error names the offending criterion, e.g.
    /// `allow[1].and[0]: fingerprint must be 64 hex digits`.
    pub fn compile(allow: &[Criterion], deny: &[Criterion]) -> Result<Self, String> {
        let compile_list = |list: &[Criterion], what: &str| {
            list.iter()
                .enumerate()
                .map(|(i, c)| compile(c, &format!("{what}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = compile_list(allow, "allow")?;
        let deny = compile_list(deny, "deny")?;
        let request_dependent = allow.iter().chain(&deny).any(Node::reads_request);
        Ok(Self {
            allow,
            deny,
            request_dependent,
            id: NEXT_POLICY_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// True if any criterion reads the request (method, path, source IP), so a decision cannot
    /// be cached per (certificate, route, generation) alone.
    pub fn is_request_dependent(&self) -> bool {
        self.request_dependent
    }

    pub fn allow_len(&self) -> usize {
        self.allow.len()
    }

    pub fn deny_len(&self) -> usize {
        self.deny.len()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Index of the first allow rule that is definitely true.
    pub fn first_allow(&self, subject: &Subject<'_>) -> Option<usize> {
        self.allow
            .iter()
            .position(|rule| rule.eval(subject) == Truth::True)
    }

    /// Index and truth of the first deny rule that is not definitely false (module docs).
    pub fn first_deny(&self, subject: &Subject<'_>) -> Option<(usize, Truth)> {
        self.deny.iter().enumerate().find_map(|(i, rule)| {
            let truth = rule.eval(subject);
            (truth != Truth::False).then_some((i, truth))
        })
    }

    /// Why no allow rule applies: `allow[0]: tag eng missing; allow[1]: …`, or
    /// `no allow rules (default deny)`. Built only on the deny path.
    pub fn explain_allow_failures(&self, subject: &Subject<'_>) -> String {
        if self.allow.is_empty() {
            return "no allow rules (default deny)".to_owned();
        }
        let mut out = String::new();
        for (i, rule) in self.allow.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = write!(out, "allow[{i}]: ");
            rule.explain(subject, &mut out);
        }
        out
    }
}

fn compile(c: &Criterion, at: &str) -> Result<Node, String> {
    let fail = |msg: &str| Err(format!("{at}: {msg}"));
    let non_empty = |kind: &str, s: &str| {
        if s.is_empty() {
            Err(format!("{at}: {kind} must not be empty"))
        } else {
            Ok(s.to_owned())
        }
    };
    Ok(match c {
        Criterion::Accept(b) => Node::Accept(*b),
        Criterion::And(list) | Criterion::Or(list) => {
            let kind = if matches!(c, Criterion::And(_)) {
                "and"
            } else {
                "or"
            };
            if list.is_empty() {
                // An empty `and` would be vacuously true: almost certainly a mistake in an
                // allow rule, so refuse it instead of guessing.
                return fail(&format!("`{kind}` needs at least one criterion"));
            }
            let nodes = list
                .iter()
                .enumerate()
                .map(|(i, c)| compile(c, &format!("{at}.{kind}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
                .into_boxed_slice();
            if kind == "and" {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            }
        }
        Criterion::Not(inner) => Node::Not(Box::new(compile(inner, &format!("{at}.not"))?)),
        Criterion::Authenticated(b) => Node::Authenticated(*b),
        Criterion::Status(s) => Node::Status(*s),
        Criterion::DeviceId(id) => Node::DeviceId(non_empty("device_id", id)?),
        Criterion::Tag(t) => Node::Tag(non_empty("tag", t)?),
        Criterion::Platform(p) => Node::Platform(non_empty("platform", p)?),
        Criterion::Attestation(a) => Node::Attestation(non_empty("attestation", a)?),
        Criterion::Fingerprint(f) => match parse_fingerprint(f) {
            Some(fp) => Node::Fingerprint(fp),
            None => return fail("fingerprint must be 64 hex digits (colons allowed)"),
        },
        Criterion::San(s) => Node::San(non_empty("san", s)?),
        Criterion::SourceIp(net) => Node::SourceIp(*net),
        Criterion::Method(m) => Node::Method(non_empty("method", m)?),
        Criterion::PathPrefix(p) => {
            if !p.starts_with('/') {
                return fail("path_prefix must start with '/'");
            }
            Node::PathPrefix(p.clone())
        }
        Criterion::Path(glob) => {
            let glob = non_empty("path", glob)?;
            let matcher = WildMatch::new(&glob);
            Node::Path(glob, matcher)
        }
    })
}

/// SHA-256 fingerprint as 64 hex digits, optionally colon-separated, any case.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.chars().filter(|&c| c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).ok()?;
    Some(out)
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack listener reports for an
/// IPv4 client) is the IPv4 address, so `10.0.0.0/8` rules apply to it.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Node {
    fn reads_request(&self) -> bool {
        match self {
            Node::And(list) | Node::Or(list) => list.iter().any(Node::reads_request),
            Node::Not(inner) => inner.reads_request(),
            Node::SourceIp(_) | Node::Method(_) | Node::PathPrefix(_) | Node::Path(..) => true,
            _ => false,
        }
    }

    fn eval(&self, s: &Subject<'_>) -> Truth {
        match self {
            Node::Accept(b) => Truth::from_bool(*b),
            Node::And(list) => {
                let mut acc = Truth::True;
                for node in list.iter() {
                    match node.eval(s) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                acc
            }
            Node::Or(list) => {
                let mut acc = Truth::False;
                for node in list.iter() {
                    match node.eval(s) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                acc
            }
            Node::Not(inner) => inner.eval(s).not(),
            Node::Authenticated(b) => Truth::from_bool(s.identity.is_some() == *b),
            Node::SourceIp(net) => Truth::from_bool(net.contains(&canonical_ip(s.facts.source_ip))),
            // RFC 9110 §9.1: the method token is case-sensitive.
            Node::Method(m) => Truth::from_bool(s.facts.method == m),
            Node::PathPrefix(p) => Truth::from_bool(s.facts.path.starts_with(p.as_str())),
            Node::Path(_, glob) => Truth::from_bool(glob.matches(s.facts.path)),
            device => match s.identity {
                None => Truth::Unknown,
                Some(identity) => Truth::from_bool(device.device_fact(identity, s.record)),
            },
        }
    }

    /// Device criteria, with a certificate. A missing inventory record has no status, tags or
    /// platform.
    fn device_fact(&self, identity: &DeviceIdentity, record: Option<DeviceView<'_>>) -> bool {
        match self {
            Node::Status(want) => record.is_some_and(|r| r.status() == *want),
            Node::DeviceId(want) => identity.device_id.as_deref() == Some(want.as_str()),
            Node::Tag(tag) => record.is_some_and(|r| r.has_tag(tag)),
            Node::Platform(want) => record
                .and_then(|r| r.platform())
                .is_some_and(|p| p.eq_ignore_ascii_case(want)),
            Node::Attestation(want) => identity.attestation.as_deref() == Some(want.as_str()),
            Node::Fingerprint(fp) => identity.fingerprint == *fp,
            Node::San(san) => identity
                .dns_sans
                .iter()
                .chain(&identity.uri_sans)
                .any(|s| s == san),
            _ => false,
        }
    }

    /// Short form for explanations: `tag eng`, `and(tag eng, platform linux)`.
    fn describe(&self, out: &mut String) {
        let _ = match self {
            Node::Accept(b) => write!(out, "accept {b}"),
            Node::And(list) | Node::Or(list) => {
                out.push_str(if matches!(self, Node::And(_)) {
                    "and("
                } else {
                    "or("
                });
                for (i, node) in list.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    node.describe(out);
                }
                out.push(')');
                Ok(())
            }
            Node::Not(inner) => {
                out.push_str("not (");
                inner.describe(out);
                out.push(')');
                Ok(())
            }
            Node::Authenticated(b) => write!(out, "authenticated {b}"),
            Node::Status(st) => write!(out, "status {st}"),
            Node::DeviceId(id) => write!(out, "device_id {id}"),
            Node::Tag(t) => write!(out, "tag {t}"),
            Node::Platform(p) => write!(out, "platform {p}"),
            Node::Attestation(a) => write!(out, "attestation {a}"),
            Node::Fingerprint(fp) => write!(out, "fingerprint {}", hex::encode(fp)),
            Node::San(san) => write!(out, "san {san}"),
            Node::SourceIp(net) => write!(out, "source_ip {net}"),
            Node::Method(m) => write!(out, "method {m}"),
            Node::PathPrefix(p) => write!(out, "path_prefix {p}"),
            Node::Path(glob, _) => write!(out, "path {glob}"),
        };
    }

    /// Why this node is not definitely true for `s`. Request values that a client controls
    /// (path, method) are not echoed: the explanation names the rule, not the input.
    fn explain(&self, s: &Subject<'_>, out: &mut String) {
        let truth = self.eval(s);
        if truth == Truth::True {
            out.push_str("matched");
            return;
        }
        let _ = match self {
            Node::Accept(_) => write!(out, "accept = false"),
            Node::And(list) => {
                // The first child that is not true is the reason.
                if let Some(node) = list.iter().find(|n| n.eval(s) != Truth::True) {
                    node.explain(s, out);
                }
                Ok(())
            }
            Node::Or(list) => {
                out.push_str("no alternative matched (");
                for (i, node) in list.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" | ");
                    }
                    node.explain(s, out);
                }
                out.push(')');
                Ok(())
            }
            Node::Not(inner) => {
                out.push_str("not (");
                inner.describe(out);
                if truth == Truth::Unknown {
                    out.push_str("): unknown without a certificate");
                } else {
                    out.push_str(") failed");
                }
                Ok(())
            }
            Node::Authenticated(true) => write!(out, "no certificate"),
            Node::Authenticated(false) => write!(out, "a certificate was presented"),
            Node::SourceIp(net) => write!(out, "source ip {} not in {net}", s.facts.source_ip),
            Node::Method(m) => write!(out, "method is not {m}"),
            Node::PathPrefix(p) => write!(out, "path does not start with {p}"),
            Node::Path(glob, _) => write!(out, "path does not match {glob}"),
            device => {
                device.describe(out);
                match s.identity {
                    None => out.push_str(": no certificate"),
                    Some(identity) => device.explain_device(identity, s.record, out),
                }
                Ok(())
            }
        };
    }

    fn explain_device(
        &self,
        identity: &DeviceIdentity,
        record: Option<DeviceView<'_>>,
        out: &mut String,
    ) {
        let _ = match (self, record) {
            (Node::Status(_) | Node::Tag(_) | Node::Platform(_), None) => {
                write!(out, ": device not in inventory")
            }
            (Node::Status(_), Some(r)) => write!(out, " required, device is {}", r.status()),
            (Node::Tag(_), Some(_)) => write!(out, " missing"),
            (Node::Platform(_), Some(r)) => write!(
                out,
                " required, device has {}",
                r.platform().unwrap_or("none")
            ),
            (Node::DeviceId(_), _) => write!(
                out,
                " required, certificate names {}",
                identity.device_id.as_deref().unwrap_or("no device")
            ),
            (Node::Attestation(_), _) => write!(
                out,
                " required, certificate has {}",
                identity.attestation.as_deref().unwrap_or("none")
            ),
            (Node::Fingerprint(_), _) => write!(out, " required, certificate differs"),
            (Node::San(_), _) => write!(out, " missing"),
            _ => Ok(()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DeviceRecord;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::time::UNIX_EPOCH;

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            device_id: Some("dev-1".into()),
            id_source: Some(crate::IdSource::PermanentIdentifier),
            serial: "0a".into(),
            fingerprint: [0xab; 32],
            spki_sha256: [0; 32],
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH,
            issuer: "CN=root".into(),
            subject: "CN=device".into(),
            dns_sans: vec!["dev-1.corp.example".into()],
            uri_sans: vec!["spiffe://corp.example/device/dev-1".into()],
            attestation: Some("tpm".into()),
            platform: None,
        }
    }

    fn record() -> DeviceRecord {
        DeviceRecord {
            id: "dev-1".into(),
            status: DeviceStatus::Active,
            tags: BTreeSet::from(["eng".to_owned()]),
            owner: None,
            platform: Some("macOS".into()),
        }
    }

    const FACTS: RequestFacts<'static> = RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        method: "GET",
        path: "/api/v1/items",
    };

    fn crit(toml_text: &str) -> Criterion {
        #[derive(serde::Deserialize)]
        struct W {
            c: Criterion,
        }
        toml::from_str::<W>(&format!("c = {toml_text}"))
            .unwrap_or_else(|e| panic!("{toml_text}: {e}"))
            .c
    }

    fn node(toml_text: &str) -> Node {
        compile(&crit(toml_text), "t").unwrap()
    }

    /// Truth with certificate + record, and without a certificate.
    fn truth(toml_text: &str) -> (Truth, Truth) {
        let n = node(toml_text);
        let (id, rec) = (identity(), record());
        let with = Subject {
            identity: Some(&id),
            record: Some(rec.view()),
            facts: &FACTS,
        };
        let without = Subject {
            identity: None,
            record: None,
            facts: &FACTS,
        };
        (n.eval(&with), n.eval(&without))
    }

    use Truth::{False as F, True as T, Unknown as U};

    #[test]
    fn accept_and_authenticated() {
        assert_eq!(truth("{ accept = true }"), (T, T));
        assert_eq!(truth("{ accept = false }"), (F, F));
        assert_eq!(truth("{ authenticated = true }"), (T, F));
        assert_eq!(truth("{ authenticated = false }"), (F, T));
    }

    #[test]
    fn device_criteria() {
        assert_eq!(truth(r#"{ status = "active" }"#), (T, U));
        assert_eq!(truth(r#"{ status = "retired" }"#), (F, U));
        assert_eq!(truth(r#"{ device_id = "dev-1" }"#), (T, U));
        assert_eq!(truth(r#"{ device_id = "dev-2" }"#), (F, U));
        assert_eq!(truth(r#"{ tag = "eng" }"#), (T, U));
        assert_eq!(truth(r#"{ tag = "ENG" }"#), (F, U), "tags are exact");
        assert_eq!(
            truth(r#"{ platform = "MACOS" }"#),
            (T, U),
            "case-insensitive"
        );
        assert_eq!(truth(r#"{ platform = "linux" }"#), (F, U));
        assert_eq!(truth(r#"{ attestation = "tpm" }"#), (T, U));
        assert_eq!(truth(r#"{ attestation = "apple" }"#), (F, U));
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(truth(&format!(r#"{{ fingerprint = "{fp}" }}"#)), (T, U));
        let other = "ab".repeat(31) + "ac";
        assert_eq!(truth(&format!(r#"{{ fingerprint = "{other}" }}"#)), (F, U));
        assert_eq!(truth(r#"{ san = "dev-1.corp.example" }"#), (T, U));
        assert_eq!(
            truth(r#"{ san = "spiffe://corp.example/device/dev-1" }"#),
            (T, U)
        );
        assert_eq!(truth(r#"{ san = "dev-2.corp.example" }"#), (F, U));
    }

    #[test]
    fn device_criteria_without_record_are_false() {
        let id = identity();
        let s = Subject {
            identity: Some(&id),
            record: None,
            facts: &FACTS,
        };
        for c in [
            r#"{ status = "active" }"#,
            r#"{ tag = "eng" }"#,
            r#"{ platform = "macos" }"#,
        ] {
            assert_eq!(node(c).eval(&s), F, "{c}");
        }
        assert_eq!(node(r#"{ device_id = "dev-1" }"#).eval(&s), T);
    }

    #[test]
    fn request_criteria() {
        assert_eq!(truth(r#"{ source_ip = "10.0.0.0/8" }"#), (T, T));
        assert_eq!(truth(r#"{ source_ip = "192.168.0.0/16" }"#), (F, F));
        assert_eq!(truth(r#"{ method = "GET" }"#), (T, T));
        assert_eq!(
            truth(r#"{ method = "get" }"#),
            (F, F),
            "RFC 9110: case-sensitive"
        );
        assert_eq!(truth(r#"{ path_prefix = "/api/" }"#), (T, T));
        assert_eq!(truth(r#"{ path_prefix = "/admin" }"#), (F, F));
        assert_eq!(truth(r#"{ path = "/api/*/items" }"#), (T, T));
        assert_eq!(truth(r#"{ path = "/api/v?/items" }"#), (T, T));
        assert_eq!(truth(r#"{ path = "/api/v1" }"#), (F, F));
    }

    #[test]
    fn ipv4_mapped_source_matches_ipv4_networks() {
        let facts = RequestFacts {
            source_ip: "::ffff:10.1.2.3".parse().unwrap(),
            ..FACTS
        };
        let s = Subject {
            identity: None,
            record: None,
            facts: &facts,
        };
        assert_eq!(node(r#"{ source_ip = "10.0.0.0/8" }"#).eval(&s), T);
        assert_eq!(node(r#"{ source_ip = "::/0" }"#).eval(&s), F);
    }

    #[test]
    fn kleene_combinators() {
        assert_eq!(
            truth(r#"{ and = [{ tag = "eng" }, { method = "GET" }] }"#),
            (T, U)
        );
        assert_eq!(
            truth(r#"{ and = [{ tag = "eng" }, { method = "PUT" }] }"#),
            (F, F)
        );
        assert_eq!(
            truth(r#"{ or = [{ tag = "x" }, { method = "GET" }] }"#),
            (T, T)
        );
        assert_eq!(
            truth(r#"{ or = [{ tag = "x" }, { method = "PUT" }] }"#),
            (F, U)
        );
        assert_eq!(truth(r#"{ not = { tag = "eng" } }"#), (F, U));
        assert_eq!(truth(r#"{ not = { tag = "x" } }"#), (T, U));
        assert_eq!(truth(r#"{ not = { method = "PUT" } }"#), (T, T));
        assert_eq!(
            truth(r#"{ or = [{ authenticated = false }, { status = "active" }] }"#),
            (T, T)
        );
    }

    #[test]
    fn compile_validation() {
        let err = |c: &str| compile(&crit(c), "allow[0]").unwrap_err();
        assert_eq!(
            err("{ and = [] }"),
            "allow[0]: `and` needs at least one criterion"
        );
        assert_eq!(
            err("{ or = [] }"),
            "allow[0]: `or` needs at least one criterion"
        );
        assert_eq!(
            err(r#"{ and = [{ tag = "a" }, { not = { or = [] } }] }"#),
            "allow[0].and[1].not: `or` needs at least one criterion"
        );
        assert!(err(r#"{ fingerprint = "abcd" }"#).contains("64 hex digits"));
        assert!(err(&format!(r#"{{ fingerprint = "{}" }}"#, "zz".repeat(32))).contains("hex"));
        assert!(err(r#"{ path = "" }"#).contains("path must not be empty"));
        assert!(err(r#"{ method = "" }"#).contains("method must not be empty"));
        assert!(err(r#"{ path_prefix = "api" }"#).contains("must start with '/'"));
        assert!(err(r#"{ tag = "" }"#).contains("tag must not be empty"));
        // The list index is part of the message.
        let e =
            RoutePolicy::compile(&[crit("{ accept = true }")], &[crit("{ or = [] }")]).unwrap_err();
        assert!(e.starts_with("deny[0]:"), "{e}");
    }

    #[test]
    fn request_dependence_is_found_when_nested() {
        let p = |allow: &[&str], deny: &[&str]| {
            let a: Vec<_> = allow.iter().map(|c| crit(c)).collect();
            let d: Vec<_> = deny.iter().map(|c| crit(c)).collect();
            RoutePolicy::compile(&a, &d).unwrap().is_request_dependent()
        };
        assert!(!p(&[r#"{ tag = "eng" }"#], &[r#"{ status = "retired" }"#]));
        assert!(p(
            &[r#"{ and = [{ tag = "eng" }, { not = { path = "/x*" } }] }"#],
            &[]
        ));
        assert!(p(&[], &[r#"{ or = [{ method = "DELETE" }] }"#]));
        assert!(p(&[r#"{ source_ip = "10.0.0.0/8" }"#], &[]));
        assert!(p(&[r#"{ path_prefix = "/a" }"#], &[]));
    }

    #[test]
    fn explanations() {
        let allow = [
            crit(r#"{ tag = "ops" }"#),
            crit(r#"{ not = { platform = "macos" } }"#),
            crit(r#"{ and = [{ tag = "eng" }, { method = "POST" }] }"#),
            crit(r#"{ or = [{ attestation = "apple" }, { path_prefix = "/admin" }] }"#),
        ];
        let policy = RoutePolicy::compile(&allow, &[]).unwrap();
        let (id, rec) = (identity(), record());
        let s = Subject {
            identity: Some(&id),
            record: Some(rec.view()),
            facts: &FACTS,
        };
        assert_eq!(policy.first_allow(&s), None);
        assert_eq!(
            policy.explain_allow_failures(&s),
            "allow[0]: tag ops missing; \
             allow[1]: not (platform macos) failed; \
             allow[2]: method is not POST; \
             allow[3]: no alternative matched (attestation apple required, certificate has tpm \
             | path does not start with /admin)"
        );
        let anon = Subject {
            identity: None,
            record: None,
            facts: &FACTS,
        };
        assert_eq!(
            policy.explain_allow_failures(&anon),
            "allow[0]: tag ops: no certificate; \
             allow[1]: not (platform macos): unknown without a certificate; \
             allow[2]: tag eng: no certificate; \
             allow[3]: no alternative matched (attestation apple: no certificate \
             | path does not start with /admin)"
        );
        let empty = RoutePolicy::compile(&[], &[]).unwrap();
        assert_eq!(
            empty.explain_allow_failures(&s),
            "no allow rules (default deny)"
        );
    }

    #[test]
    fn first_allow_and_first_deny() {
        let allow = [crit(r#"{ tag = "x" }"#), crit(r#"{ tag = "eng" }"#)];
        let deny = [
            crit(r#"{ method = "PUT" }"#),
            crit(r#"{ not = { tag = "eng" } }"#),
        ];
        let policy = RoutePolicy::compile(&allow, &deny).unwrap();
        let (id, rec) = (identity(), record());
        let s = Subject {
            identity: Some(&id),
            record: Some(rec.view()),
            facts: &FACTS,
        };
        assert_eq!(policy.first_allow(&s), Some(1));
        assert_eq!(policy.first_deny(&s), None);
        let anon = Subject {
            identity: None,
            record: None,
            facts: &FACTS,
        };
        assert_eq!(policy.first_allow(&anon), None);
        assert_eq!(
            policy.first_deny(&anon),
            Some((1, U)),
            "unknown never exempts"
        );
        assert_eq!((policy.allow_len(), policy.deny_len()), (2, 2));
    }

    #[test]
    fn fingerprints_parse() {
        let hex64 = "0123456789abcdef".repeat(4);
        assert!(parse_fingerprint(&hex64).is_some());
        assert!(parse_fingerprint(&hex64.to_uppercase()).is_some());
        assert!(parse_fingerprint(&hex64[..62]).is_none());
        assert!(parse_fingerprint(&(hex64.clone() + "00")).is_none());
    }

    #[test]
    fn recompiled_policies_get_new_ids() {
        let a = RoutePolicy::compile(&[], &[]).unwrap();
        let b = RoutePolicy::compile(&[], &[]).unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.clone().id(), a.id());
    }
}
