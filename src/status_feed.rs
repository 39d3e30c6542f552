//! The status feed client of an enforcement point in another process than the CA
//! (`[status_feed]`): subscribes to the CA's `GET /feed/v2/status` over mTLS with its node
//! certificate, reads the Server-Sent Events, and hands them to the
//! [`Follower`](portcullis_policy::Follower) that keeps the status store current.
//!
//! On any failure (connection refused, TLS, a gap in generations, a silent connection) it
//! reconnects with backoff and jitter, resuming from the last generation it applied; the CA
//! answers with the missed deltas or a snapshot. Four times a second it applies the staleness
//! policy (`max_staleness`, `mode`), so a strict point starts refusing on time even while
//! the CA is unreachable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use portcullis_config::StatusFeedConfig;
use portcullis_gateway::CancellationToken;
use portcullis_policy::feed::MAX_EVENT_BYTES;
use portcullis_policy::{FeedError, FeedEvent, Follower, Freshness, StatusStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::feed_state::StateFile;

const STALENESS_CHECK: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything needed to connect, built from the config: at startup (bad files fail it) and
/// again before every reconnection, so a renewed node certificate is picked up.
pub struct FeedClient {
    config: StatusFeedConfig,
    url: http::Uri,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl FeedClient {
    pub fn new(config: &StatusFeedConfig) -> anyhow::Result<Self> {
        let url: http::Uri = config
            .url
            .parse()
            .with_context(|| format!("status_feed.url `{}`", config.url))?;
        if url.scheme_str() != Some("https") {
            bail!("status_feed.url must be https://");
        }
        let host = url
            .host()
            .ok_or_else(|| anyhow!("status_feed.url has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("status_feed.url host `{host}`"))?;

        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&config.ca_roots)? {
            roots
                .add(cert)
                .with_context(|| format!("status_feed.ca_roots {}", config.ca_roots.display()))?;
        }
        let chain = read_certs(&config.cert)?;
        let key_pem = std::fs::read(&config.key)
            .with_context(|| format!("status_feed.key {}", config.key.display()))?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .with_context(|| format!("status_feed.key {}", config.key.display()))?
            .ok_or_else(|| anyhow!("status_feed.key {}: no private key", config.key.display()))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("status_feed: node certificate and key do not match")?;
        Ok(Self {
            config: config.clone(),
            url,
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
        })
    }

    /// Opens one subscription, resuming from `since`; returns the response body.
    async fn subscribe(&self, since: Option<(&str, u64)>) -> anyhow::Result<hyper::body::Incoming> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
        tcp.set_nodelay(true)?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake timed out"))??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("status feed connection: {e}");
            }
        });
        let path = self.url.path();
        let target = match since {
            Some((stream, generation)) => {
                format!("{path}?stream={stream}&generation={generation}")
            }
            None => path.to_string(),
        };
        let authority = self
            .url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let request = http::Request::get(target)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        if response.status() != http::StatusCode::OK {
            bail!("the CA answered {}", response.status());
        }
        Ok(response.into_body())
    }
}

fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE", path.display());
    }
    Ok(certs)
}

/// Splits a byte stream into Server-Sent Events (WHATWG HTML §9.2.6: lines end in LF, CRLF
/// or CR; an empty line dispatches; `event:` names it, `data:` lines are joined with LF;
/// lines starting with `:` are comments; other fields are ignored).
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a line end: a long event arriving in many reads
    /// is scanned once, not once per read.
    scanned: usize,
    /// A CR ended the last read: an LF starting the next one belongs to it.
    after_cr: bool,
    name: String,
    data: String,
}

impl SseParser {
    /// Feeds bytes; returns the complete events (name, data) in them.
    pub fn push(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
        let mut bytes = bytes;
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) =
            memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]).map(|at| self.scanned + at)
        {
            self.scanned = 0;
            let line = self.buf.split_to(end);
            // CRLF counts as one line end, also when the LF comes in the next read.
            let skip = match self.buf.get(..2) {
                Some(b"\r\n") => 2,
                _ if self.buf.len() == 1 && self.buf[0] == b'\r' => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            self.buf.advance(skip);
            let line = std::str::from_utf8(&line).context("status feed: not UTF-8")?;
            if line.is_empty() {
                if !self.data.is_empty() || !self.name.is_empty() {
                    out.push((
                        std::mem::take(&mut self.name),
                        std::mem::take(&mut self.data),
                    ));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = value.to_string(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        self.scanned = self.buf.len();
        if self.buf.len() + self.data.len() > MAX_EVENT_BYTES {
            bail!("status feed: an event larger than {MAX_EVENT_BYTES} bytes");
        }
        Ok(out)
    }
}

/// Follows the feed until `shutdown`, keeping `status` current.
pub async fn follow(mut client: FeedClient, status: Arc<StatusStore>, shutdown: CancellationToken) {
    let mut follower = Follower::new(status.clone());
    let mut state = client.config.state_file.as_deref().map(StateFile::new);
    if let Some(state) = state.as_mut() {
        if state.restore(&mut follower).is_some() {
            retire(follower.take_retired());
            check(&mut follower, &status);
        }
    }
    let mut backoff = Duration::from_millis(100);
    let mut staleness = tokio::time::interval(STALENESS_CHECK);
    staleness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let since = follower.position().map(|(s, g)| (s.to_string(), g));
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = client.subscribe(since.as_ref().map(|(s, g)| (s.as_str(), *g))) => r,
        };
        let outcome = match subscribed {
            Ok(body) => {
                tracing::info!(url = %client.url, resume = since.is_some(), "status feed connected");
                backoff = Duration::from_millis(100);
                read(
                    body,
                    &mut follower,
                    &status,
                    &mut state,
                    &mut staleness,
                    &shutdown,
                )
                .await
            }
            Err(e) => Err(e),
        };
        follower.disconnected();
        match outcome {
            Ok(()) => return, // shutdown
            Err(e) => tracing::warn!(url = %client.url, "status feed: {e:#}; reconnecting"),
        }
        // Jitter spreads a fleet of points reconnecting to a restarted CA.
        let jitter =
            Duration::from_millis(u64::from(rand_u16()) % (backoff.as_millis() as u64 / 2 + 1));
        let wait = tokio::time::sleep(backoff + jitter);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut wait => break,
                _ = staleness.tick() => check(&mut follower, &status),
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match FeedClient::new(&client.config) {
            Ok(fresh) => client = fresh,
            Err(e) => tracing::warn!("status feed: {e:#}; reconnecting with the files read before"),
        }
    }
}

/// Reads one subscription until it fails or `shutdown`.
async fn read(
    mut body: hyper::body::Incoming,
    follower: &mut Follower,
    status: &StatusStore,
    state: &mut Option<StateFile>,
    staleness: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut parser = SseParser::default();
    // Until the hello says how often the CA beats, assume the default and allow three.
    let mut silence_limit = Duration::from_secs(3);
    let mut last_bytes = tokio::time::Instant::now();
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = staleness.tick() => {
                check(follower, status);
                if last_bytes.elapsed() > silence_limit {
                    bail!("no heartbeat for {}s", last_bytes.elapsed().as_secs());
                }
                continue;
            }
            frame = body.frame() => frame,
        };
        let Some(frame) = frame else {
            bail!("the CA closed the feed");
        };
        let frame = frame.context("reading the feed")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        last_bytes = tokio::time::Instant::now();
        for (name, data) in parser.push(&data)? {
            let event = FeedEvent::parse(&name, &data)?;
            if let FeedEvent::Hello(h) = &event {
                silence_limit = Duration::from_millis(h.heartbeat_ms.saturating_mul(3))
                    .max(Duration::from_secs(1));
            }
            apply(follower, event)?;
            retire(follower.take_retired());
        }
        if let Some(state) = state.as_mut() {
            state.save(follower);
        }
    }
}

/// Applies one event. Every event of a snapshot costs O(its chunk) (the table is built as
/// chunks arrive; completing it costs O(shards)), but a delta of many devices copies up to
/// the whole table: that one runs under `block_in_place`, so that this worker's other tasks
/// (requests) move to another worker meanwhile. Not on a current-thread runtime (tests),
/// where `block_in_place` is not allowed.
pub fn apply(follower: &mut Follower, event: FeedEvent) -> Result<(), FeedError> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if event.is_heavy() && multi_thread {
        tokio::task::block_in_place(|| follower.on_event(event, SystemTime::now()))
    } else {
        follower.on_event(event, SystemTime::now())
    }
}

/// Frees replaced snapshots off the request path (see `Follower::take_retired`).
pub fn retire(snapshots: Vec<Arc<portcullis_policy::StatusSnapshot>>) {
    portcullis_policy::feed::retire_later(snapshots, |free| {
        tokio::task::spawn_blocking(free);
    });
}

/// Applies the staleness policy and logs when the point starts or stops acting on it.
fn check(follower: &mut Follower, status: &StatusStore) {
    let liveness = status.liveness();
    let before = liveness.acting_stale();
    let freshness = follower.check_staleness(SystemTime::now());
    retire(follower.take_retired());
    let after = liveness.acting_stale();
    if !before && after {
        let mode = liveness.policy().map_or("", |p| p.mode.as_str());
        if let Freshness::Stale { silent_for } = freshness {
            tracing::warn!(
                mode,
                silent_secs = silent_for.as_secs(),
                "status feed stale: {}",
                if mode == "strict" {
                    "refusing every device until it is heard again"
                } else {
                    "keeping the last known state"
                }
            );
        }
    } else if before && !after {
        tracing::info!("status feed heard again; stale mode ended");
    }
}

/// A little randomness for jitter, without a dependency: the low bits of the clock.
fn rand_u16() -> u16 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads_and_line_ends() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: hel").unwrap().is_empty());
        let got = p
            .push(b"lo\r\ndata: {\"a\":1}\r\n\r\n: comment\nevent:x\ndata:1\ndata:2\nid: 9\n\n")
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("hello".to_string(), "{\"a\":1}".to_string()),
                ("x".to_string(), "1\n2".to_string())
            ]
        );
        assert!(p.push(&[0xff, b'\n']).is_err(), "not UTF-8");
    }

    #[test]
    fn a_crlf_split_across_reads_is_one_line_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: a\r").unwrap().is_empty());
        assert!(p.push(b"\ndata: 1\r").unwrap().is_empty());
        let got = p.push(b"\n\r\n").unwrap();
        assert_eq!(got, vec![("a".to_string(), "1".to_string())]);
    }

    #[test]
    fn an_event_in_many_small_reads() {
        let mut p = SseParser::default();
        let text = format!("event: devices\ndata: {}\n\n", "x".repeat(100_000));
        let mut got = Vec::new();
        for chunk in text.as_bytes().chunks(7) {
            got.extend(p.push(chunk).unwrap());
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 100_000);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(p.push(&big).is_err());
    }

    /// A heavy delta on a multi-thread runtime goes through `block_in_place` (the path the
    /// current-thread tests never take) and lands like any other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_delta_is_applied_off_the_worker() {
        use portcullis_policy::feed::{Beat, Hello, SnapshotHead, HEAVY_DELTA};
        use portcullis_policy::{Delta, DeviceRecord, DeviceStatus, StatusSnapshot};
        let store = Arc::new(StatusStore::new(StatusSnapshot::default()));
        let mut follower = Follower::new(store.clone());
        let record = |i: usize, status| DeviceRecord {
            id: format!("dev-{i}"),
            status,
            tags: Default::default(),
            owner: None,
            platform: None,
        };
        let hello = FeedEvent::Hello(Hello {
            stream: "s".into(),
            generation: 1,
            resume: false,
            heartbeat_ms: 500,
        });
        let head = FeedEvent::Snapshot(SnapshotHead {
            generation: 1,
            devices: 0,
            revoked: Vec::new(),
        });
        let end = FeedEvent::SnapshotEnd(Beat { generation: 1 });
        for event in [hello, head, end] {
            apply(&mut follower, event).unwrap();
        }
        let delta = FeedEvent::Delta(Arc::new(Delta {
            generation: 2,
            upsert: (0..=HEAVY_DELTA)
                .map(|i| record(i, DeviceStatus::Active))
                .collect(),
            ..Delta::default()
        }));
        assert!(delta.is_heavy());
        apply(&mut follower, delta).unwrap();
        let now = store.current();
        assert_eq!((now.generation, now.device_count()), (2, HEAVY_DELTA + 1));
    }
}
