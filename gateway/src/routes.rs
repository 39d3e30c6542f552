//! The route table: which upstream and which policy serve a request. One immutable table per
//! config, swapped whole (`ArcSwap<RouteTable>`) on reload; the table owns the decision cache, so
//! a reload can never serve a decision made under the old rules.
//!
//! Matching: the host (from `:authority` / `Host`, lowercased, port stripped) selects the most
//! specific host group — exact name, then `*.domain` (exactly one label in place of `*`), then
//! `*` — that has a route whose path prefix matches; within it the longest prefix wins.
//! A prefix ending in `/` matches as a plain string prefix; any other prefix matches on a
//! segment boundary (`/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::HeaderValue;
use portcullis_config::RouteConfig;
use portcullis_policy::{DecisionCache, RoutePolicy};

use crate::identity_headers::HeaderChoices;
use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::{route_tls, Target, UpstreamTls};

const DECISION_CACHE_CAPACITY: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com` → `example.com`.
    OneLabelUnder(String),
}

impl HostPattern {
    pub fn parse(from: &str) -> Result<Self, String> {
        let lower = from.trim().to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = lower.strip_prefix("*.") {
            let rest = rest.trim_end_matches('.');
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("`{from}` is not a host pattern"));
            }
            return Ok(HostPattern::OneLabelUnder(rest.to_string()));
        }
        let host = lower.trim_end_matches('.');
        if host.is_empty() || host.contains('*') || host.contains('/') {
            return Err(format!("`{from}` is not a host name, `*` or `*.domain`"));
        }
        Ok(HostPattern::Exact(host.to_string()))
    }
}

pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// Host and path prefix → route index. Kept apart from the routes so that it is testable alone.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: HashMap<String, Vec<(String, usize)>>,
    one_label: HashMap<String, Vec<(String, usize)>>,
    any: Vec<(String, usize)>,
}

impl HostIndex {
    /// Adds a route; refuses a second route with the same host pattern and prefix.
    pub fn insert(&mut self, host: &HostPattern, prefix: &str, index: usize) -> Result<(), usize> {
        let group = match host {
            HostPattern::Any => &mut self.any,
            HostPattern::Exact(h) => self.exact.entry(h.clone()).or_default(),
            HostPattern::OneLabelUnder(d) => self.one_label.entry(d.clone()).or_default(),
        };
        if let Some((_, other)) = group.iter().find(|(p, _)| p == prefix) {
            return Err(*other);
        }
        group.push((prefix.to_string(), index));
        // Longest prefix first; ties (impossible after the check above) keep config order.
        group.sort_by_key(|entry| std::cmp::Reverse(entry.0.len()));
        Ok(())
    }

    /// `host` must be lowercase without port.
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        let in_group = |group: &[(String, usize)]| {
            group
                .iter()
                .find(|(prefix, _)| prefix_matches(prefix, path))
                .map(|(_, i)| *i)
        };
        if let Some(i) = self.exact.get(host).and_then(|g| in_group(g)) {
            return Some(i);
        }
        if let Some((label, domain)) = host.split_once('.') {
            if !label.is_empty() {
                if let Some(i) = self.one_label.get(domain).and_then(|g| in_group(g)) {
                    return Some(i);
                }
            }
        }
        in_group(&self.any)
    }
}

pub(crate) struct Upstream {
    /// The path of `to` without its trailing `/` (empty for `/`); prepended to request paths.
    pub base_path: String,
    /// `Host` sent upstream unless the route preserves the client's.
    pub host_header: HeaderValue,
    pub target: Arc<Target>,
}

impl Upstream {
    fn parse(to: &str, tls: &UpstreamTls) -> anyhow::Result<Self> {
        let uri: Uri = to
            .parse()
            .map_err(|e| anyhow!("`{to}` is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => bail!("`{to}` is not an http(s) URL"),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow!("`{to}` has no host"))?;
        if uri.query().is_some() {
            bail!("`{to}`: an upstream URL cannot carry a query");
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| anyhow!("`{to}`: host is not a valid Host header"))?;
        let target = Target::new(&scheme, &authority, tls).with_context(|| format!("`{to}`"))?;
        Ok(Self {
            base_path,
            host_header,
            target: Arc::new(target),
        })
    }

    /// The upstream request target for a request's path and query (the route prefix is
    /// kept), in origin form (RFC 9112 §3.2.1): the connection already goes to the upstream.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = match path_and_query {
            // The common case: the client's path as is, shared rather than copied.
            Some(pq) if self.base_path.is_empty() => pq.clone(),
            pq => {
                let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
                PathAndQuery::try_from(format!("{}{}", self.base_path, pq))?
            }
        };
        Ok(Uri::from(pq))
    }
}

pub(crate) struct Route {
    pub index: usize,
    pub name: Arc<str>,
    pub policy: RoutePolicy,
    pub upstream: Upstream,
    pub headers: HeaderChoices,
    pub preserve_host: bool,
    pub metrics: RouteMetrics,
}

pub(crate) struct RouteTable {
    routes: Vec<Route>,
    index: HostIndex,
    pub cache: DecisionCache,
}

impl RouteTable {
    /// Compiles every route. Any error refuses the whole table and names the route.
    pub fn build(
        configs: &[RouteConfig],
        default_tls: &UpstreamTls,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let mut routes = Vec::with_capacity(configs.len());
        let mut index = HostIndex::default();
        for (i, cfg) in configs.iter().enumerate() {
            let name: Arc<str> = Arc::from(
                cfg.name
                    .clone()
                    .unwrap_or_else(|| format!("routes[{i}]"))
                    .as_str(),
            );
            let ctx = || format!("route `{name}` (routes[{i}])");
            let host = HostPattern::parse(&cfg.from)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("{}: from", ctx()))?;
            if !cfg.path_prefix.starts_with('/') {
                bail!(
                    "{}: path_prefix `{}` must start with `/`",
                    ctx(),
                    cfg.path_prefix
                );
            }
            index.insert(&host, &cfg.path_prefix, i).map_err(|other| {
                anyhow!("{}: same host and path_prefix as routes[{other}]", ctx())
            })?;
            let policy = RoutePolicy::compile(&cfg.allow, &cfg.deny)
                .map_err(|e| anyhow!("{}: rules: {e}", ctx()))?;
            let tls = if cfg.upstream_ca.is_some() || cfg.upstream_cert.is_some() {
                route_tls(
                    cfg.upstream_ca.as_deref(),
                    cfg.upstream_cert.as_deref(),
                    cfg.upstream_key.as_deref(),
                )
                .with_context(ctx)?
            } else {
                default_tls.clone()
            };
            let upstream =
                Upstream::parse(&cfg.to, &tls).with_context(|| format!("{}: to", ctx()))?;
            routes.push(Route {
                index: i,
                policy,
                upstream,
                headers: HeaderChoices::from_config(&cfg.identity_headers),
                preserve_host: cfg.preserve_host,
                metrics: metrics.for_route(&name),
                name,
            });
        }
        Ok(Self {
            routes,
            index,
            cache: DecisionCache::new(DECISION_CACHE_CAPACITY),
        })
    }

    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.index.find(host, path).and_then(|i| self.routes.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(routes: &[(&str, &str)]) -> HostIndex {
        let mut idx = HostIndex::default();
        for (i, (host, prefix)) in routes.iter().enumerate() {
            idx.insert(&HostPattern::parse(host).expect("pattern"), prefix, i)
                .expect("unique");
        }
        idx
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("App.Example.COM."),
            Ok(HostPattern::Exact("app.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::OneLabelUnder("example.com".into()))
        );
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(prefix_matches("/api", "/api?x=1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/ap", "/ap/"));
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let idx = index(&[
            ("*", "/"),                            // 0
            ("*.example.com", "/"),                // 1
            ("app.example.com", "/"),              // 2
            ("app.example.com", "/admin"),         // 3
            ("*.example.com", "/api"),             // 4
            ("app.example.com", "/admin/public/"), // 5
        ]);
        assert_eq!(idx.find("app.example.com", "/"), Some(2));
        assert_eq!(idx.find("app.example.com", "/admin"), Some(3));
        assert_eq!(idx.find("app.example.com", "/admin/x"), Some(3));
        assert_eq!(idx.find("app.example.com", "/admin/public/x"), Some(5));
        assert_eq!(idx.find("app.example.com", "/administrator"), Some(2));
        // The exact host group matched, so the wildcard's /api does not apply to it.
        assert_eq!(idx.find("app.example.com", "/api"), Some(2));
        assert_eq!(idx.find("wiki.example.com", "/api/x"), Some(4));
        assert_eq!(idx.find("wiki.example.com", "/"), Some(1));
        // One label only.
        assert_eq!(idx.find("a.b.example.com", "/"), Some(0));
        assert_eq!(idx.find("example.com", "/"), Some(0));
        assert_eq!(idx.find("other.org", "/x"), Some(0));
    }

    #[test]
    fn falls_through_to_a_less_specific_host_when_no_prefix_matches() {
        let idx = index(&[("app.example.com", "/only"), ("*", "/")]);
        assert_eq!(idx.find("app.example.com", "/only/x"), Some(0));
        assert_eq!(idx.find("app.example.com", "/else"), Some(1));
        let none = index(&[("app.example.com", "/only")]);
        assert_eq!(none.find("app.example.com", "/else"), None);
        assert_eq!(none.find("other", "/only"), None);
    }

    #[test]
    fn duplicate_host_and_prefix_is_refused() {
        let mut idx = HostIndex::default();
        let h = HostPattern::parse("a").expect("pattern");
        assert!(idx.insert(&h, "/", 0).is_ok());
        assert_eq!(idx.insert(&h, "/", 1), Err(0));
    }

    #[test]
    fn upstream_uris() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let _g = rt.enter();
        let tls = crate::upstream::default_tls().expect("tls");
        let up = Upstream::parse("http://127.0.0.1:8080", &tls).expect("parse");
        let pq = PathAndQuery::from_static("/a/b?x=1");
        assert_eq!(up.uri_for(Some(&pq)).expect("uri").to_string(), "/a/b?x=1");
        assert_eq!(up.uri_for(None).expect("uri").to_string(), "/");
        assert_eq!(up.host_header, "127.0.0.1:8080");
        let up = Upstream::parse("https://app.internal/base/", &tls).expect("parse");
        assert_eq!(
            up.uri_for(Some(&pq)).expect("uri").to_string(),
            "/base/a/b?x=1"
        );
        assert!(Upstream::parse("https://[::1]:8443/", &tls).is_ok());
        assert!(Upstream::parse("htp://x", &tls).is_err());
        assert!(Upstream::parse("http://x/?q=1", &tls).is_err());
    }
}
