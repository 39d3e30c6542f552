//! Propagation delay, end to end: one CA process (`portcullis serve` with `[ca]` and the admin
//! API) and three gateway processes following it over the status feed (`[status_feed]`, node
//! certificates from `portcullis ca node-cert`), as tests/status_feed.rs sets them up.
//!
//! One device is quarantined and re-activated `changes` times through the admin API
//! (`POST /admin/v1/devices/{id}/status`, bearer token, one pooled HTTPS connection):
//!
//! - before each quarantine the device opens, on every gateway, a keep-alive HTTP/1.1
//!   connection (one request answered 200) and a WebSocket (one echo); after the API answers,
//!   the time until all six are closed by the gateways is the **cut delay**; then a request
//!   on a new connection must be refused (403) on each gateway;
//! - after each re-activation, every gateway is polled with requests on new connections; the
//!   time until all three admitted one (200) is the **re-admission delay** (resolution: one
//!   attempt, i.e. a TCP + mTLS handshake + request, reported below).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use portcullis_ca::admin_api::client::{AdminClient, Credential};
use portcullis_policy::DeviceStatus;
use tokio_tungstenite::tungstenite::Message;

use super::util::{ms, summary_ms};
use crate::common::feed::{admin_token, ws_closed, Lab};
use crate::common::{metric_value, Gateway, BIN};
use crate::sys;

pub struct Options {
    pub changes: usize,
    pub warmup: usize,
}

const DEVICE: &str = "dev-alice";
/// A cut or a re-admission slower than this counts as failed (and is recorded at this value).
const LIMIT: Duration = Duration::from_secs(5);

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tls(
    config: Arc<rustls::ClientConfig>,
    gw: SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(gw).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .ok()
}

/// A keep-alive HTTP/1.1 connection; the task resolves to the instant the connection ended.
async fn keep_alive(
    config: Arc<rustls::ClientConfig>,
    gw: SocketAddr,
) -> Option<(Sender, tokio::task::JoinHandle<Instant>)> {
    let stream = tls(config, gw).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    Some((sender, task))
}

async fn get(sender: &mut Sender, path: &str) -> Option<u16> {
    sender.ready().await.ok()?;
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// One request on a new connection: the status, or `None` if the connection failed.
async fn fresh_get(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Option<u16> {
    let (mut s, _task) = keep_alive(config, gw).await?;
    get(&mut s, "/fresh").await
}

async fn websocket(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Option<Ws> {
    let stream = tls(config, gw).await?;
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", gw.port()), stream)
            .await
            .ok()?;
    if resp.status() != 101 {
        return None;
    }
    ws.send(Message::text("ping")).await.ok()?;
    match tokio::time::timeout(LIMIT, ws.next()).await {
        Ok(Some(Ok(m))) if m == Message::text("ping") => Some(ws),
        _ => None,
    }
}

/// The live sessions of the device on one gateway.
struct Live {
    _sender: Sender,
    keep_alive_closed: tokio::task::JoinHandle<Instant>,
    ws_closed: tokio::task::JoinHandle<Instant>,
}

async fn open_live(config: Arc<rustls::ClientConfig>, gw: SocketAddr) -> Live {
    let (mut sender, keep_alive_closed) = keep_alive(config.clone(), gw)
        .await
        .expect("keep-alive connection to the gateway");
    assert_eq!(
        get(&mut sender, "/before").await,
        Some(200),
        "the device is admitted before the quarantine"
    );
    let mut ws = websocket(config, gw)
        .await
        .expect("WebSocket through the gateway");
    let ws_closed = tokio::spawn(async move {
        ws_closed(&mut ws).await;
        Instant::now()
    });
    Live {
        _sender: sender,
        keep_alive_closed,
        ws_closed,
    }
}

/// Polls `gw` with requests on new connections until one is admitted: (when, attempts,
/// duration of each attempt).
async fn until_admitted(
    config: Arc<rustls::ClientConfig>,
    gw: SocketAddr,
    deadline: Instant,
) -> (Option<Instant>, Vec<Duration>) {
    let mut attempts = Vec::new();
    loop {
        let a = Instant::now();
        let status = fresh_get(config.clone(), gw).await;
        let end = Instant::now();
        attempts.push(end - a);
        if status == Some(200) {
            return (Some(end), attempts);
        }
        if end > deadline {
            return (None, attempts);
        }
    }
}

#[derive(Default)]
struct Samples {
    /// API response → the last of the six sessions closed (ms; 0 if before the response).
    cut: Vec<f64>,
    /// API request sent → the last session closed.
    cut_from_request: Vec<f64>,
    /// The quarantine's API call (request → response).
    api_quarantine: Vec<f64>,
    /// API response → all three gateways admitted a request on a new connection.
    readmit: Vec<f64>,
    readmit_from_request: Vec<f64>,
    api_activate: Vec<f64>,
    /// Duration of one re-admission poll attempt (handshake + request).
    attempt: Vec<f64>,
    cut_before_response: usize,
    sessions_not_cut: usize,
    not_refused: usize,
    not_readmitted: usize,
    /// Slowest gateway per change: how often each gateway was the last.
    last_cut_by: [usize; 3],
}

/// CPU ticks (USER_HZ) of the CA, the gateways, this process and the machine.
struct Ticks {
    ca: u64,
    gws: u64,
    me: u64,
    machine: u64,
    at: Instant,
}

fn ticks(ca: u32, gws: &[u32]) -> Ticks {
    Ticks {
        ca: sys::tree_ticks(ca),
        gws: gws.iter().map(|p| sys::tree_ticks(*p)).sum(),
        me: sys::self_ticks(),
        machine: sys::machine_ticks().0,
        at: Instant::now(),
    }
}

pub fn run(o: &Options) {
    let machine = sys::Machine::probe();
    let (lab, ca) = Lab::new(&[("device", DEVICE)]);
    let rt = &lab.rt;
    let gateways = [
        lab.gateway("gw-1", "best_effort"),
        lab.gateway("gw-2", "best_effort"),
        lab.gateway("gw-3", "strict"),
    ];
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let client = lab.client("device");
    let admin = rt.block_on(async {
        AdminClient::new(
            &format!("https://127.0.0.1:{}", lab.ca_port),
            &lab.bundle,
            Credential::Token(admin_token()),
        )
        .expect("admin API client")
    });
    let generation = |g: &Gateway| metric_value(&g.metrics(), "portcullis_status_generation");
    let cuts = |g: &Gateway| metric_value(&g.metrics(), "portcullis_connections_cut_total");

    let mut s = Samples::default();
    let mut gen_before = [0.0; 3];
    let mut cut_before = [0.0; 3];
    let mut cpu0 = None;
    let total = o.warmup + o.changes;
    let started = Instant::now();
    for i in 0..total {
        if i == o.warmup {
            for (k, g) in gateways.iter().enumerate() {
                gen_before[k] = generation(g);
                cut_before[k] = cuts(g);
            }
            cpu0 = Some(ticks(
                ca.child.id(),
                &gateways.iter().map(|g| g.pid()).collect::<Vec<_>>(),
            ));
        }
        let measured = i >= o.warmup;
        rt.block_on(async {
            // Quarantine, with live sessions on every gateway.
            let lives = futures_util::future::join_all(
                addrs.iter().map(|gw| open_live(client.clone(), *gw)),
            )
            .await;
            let t_send = Instant::now();
            admin
                .set_status(DEVICE, DeviceStatus::Quarantined, "bench")
                .await
                .expect("quarantine through the admin API");
            let t_resp = Instant::now();
            let mut last: Option<(Instant, usize)> = None;
            for (k, live) in lives.into_iter().enumerate() {
                for task in [live.keep_alive_closed, live.ws_closed] {
                    let at = match tokio::time::timeout(LIMIT, task).await {
                        Ok(Ok(at)) => at,
                        _ => {
                            if measured {
                                s.sessions_not_cut += 1;
                            }
                            t_resp + LIMIT
                        }
                    };
                    if last.is_none_or(|(l, _)| at > l) {
                        last = Some((at, k));
                    }
                }
            }
            let (last, by) = last.unwrap();
            if measured {
                if last < t_resp {
                    s.cut_before_response += 1;
                }
                s.cut.push(ms(last.saturating_duration_since(t_resp)));
                s.cut_from_request.push(ms(last - t_send));
                s.api_quarantine.push(ms(t_resp - t_send));
                s.last_cut_by[by] += 1;
            }
            // Every new request is refused.
            let refused = futures_util::future::join_all(
                addrs.iter().map(|gw| fresh_get(client.clone(), *gw)),
            )
            .await;
            if measured {
                s.not_refused += refused.iter().filter(|r| **r != Some(403)).count();
            }

            // Re-activation: the next connection is admitted.
            let t_send = Instant::now();
            admin
                .set_status(DEVICE, DeviceStatus::Active, "bench")
                .await
                .expect("re-activation through the admin API");
            let t_resp = Instant::now();
            let polls = futures_util::future::join_all(
                addrs
                    .iter()
                    .map(|gw| until_admitted(client.clone(), *gw, t_resp + LIMIT)),
            )
            .await;
            let mut last = t_resp;
            for (at, attempts) in polls {
                match at {
                    Some(at) => last = last.max(at),
                    None => {
                        if measured {
                            s.not_readmitted += 1;
                        }
                        last = last.max(t_resp + LIMIT);
                    }
                }
                if measured {
                    s.attempt.extend(attempts.iter().map(|d| ms(*d)));
                }
            }
            if measured {
                s.readmit.push(ms(last - t_resp));
                s.readmit_from_request.push(ms(last - t_send));
                s.api_activate.push(ms(t_resp - t_send));
            }
        });
    }
    let elapsed = started.elapsed();
    let cpu1 = ticks(
        ca.child.id(),
        &gateways.iter().map(|g| g.pid()).collect::<Vec<_>>(),
    );
    let cpu0 = cpu0.expect("measured at least one change");
    let secs = (cpu1.at - cpu0.at).as_secs_f64();
    let cores = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 100.0 / secs;
    let (ca_c, gw_c, me_c, all_c) = (
        cores(cpu0.ca, cpu1.ca),
        cores(cpu0.gws, cpu1.gws),
        cores(cpu0.me, cpu1.me),
        cores(cpu0.machine, cpu1.machine),
    );
    let load_after = sys::loadavg();
    let gen_after: Vec<f64> = gateways.iter().map(generation).collect();
    let cut_after: Vec<f64> = gateways.iter().map(cuts).collect();

    println!(
        "## Status feed propagation — {}",
        time::OffsetDateTime::now_utc()
    );
    println!();
    println!(
        "Machine: {} CPU(s), {}, {}; load average before {} / after {}.",
        machine.nproc, machine.cpu_model, machine.memory, machine.loadavg_before, load_after
    );
    println!(
        "1 CA process + 3 gateway processes (`portcullis serve`, binary `{BIN}`), feed over mTLS \
         on loopback; {} quarantine + {} re-activation changes of one device through the admin \
         API ({} warm-up pairs not counted), {:.1} s.",
        o.changes,
        o.changes,
        o.warmup,
        elapsed.as_secs_f64()
    );
    println!(
        "CPU during the measured changes (cores): CA {ca_c:.2}, 3 gateways {gw_c:.2}, bench client {me_c:.2}, \
         everything else {:.2} (machine busy {all_c:.2} of {}).",
        (all_c - ca_c - gw_c - me_c).max(0.0),
        machine.nproc
    );
    println!();
    println!("| delay (ms) | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: &[f64]| {
        let [a, b, c, d] = summary_ms(v);
        println!("| {name} | {a:.1} | {b:.1} | {c:.1} | {d:.1} |");
    };
    row(
        "quarantine: API response → all 6 live sessions closed (3 gateways × keep-alive + WebSocket)",
        &s.cut,
    );
    row(
        "quarantine: API request sent → all 6 closed",
        &s.cut_from_request,
    );
    row(
        "re-activation: API response → a new connection admitted (200) on all 3",
        &s.readmit,
    );
    row(
        "re-activation: API request sent → admitted on all 3",
        &s.readmit_from_request,
    );
    row(
        "admin API call, quarantine (request → response)",
        &s.api_quarantine,
    );
    row("admin API call, re-activation", &s.api_activate);
    row(
        "one re-admission poll attempt (TCP + mTLS handshake + GET)",
        &s.attempt,
    );
    println!();
    println!(
        "Cuts that completed before the API response arrived: {} of {}. Sessions not cut within {} s: {}. \
         New requests not refused (403) after the cut: {}. Gateways not re-admitting within {} s: {}. \
         Slowest gateway to cut: gw-1 {} / gw-2 {} / gw-3 {} times.",
        s.cut_before_response,
        s.cut.len(),
        LIMIT.as_secs(),
        s.sessions_not_cut,
        s.not_refused,
        LIMIT.as_secs(),
        s.not_readmitted,
        s.last_cut_by[0],
        s.last_cut_by[1],
        s.last_cut_by[2]
    );
    println!();
    println!(
        "| gateway | mode | status generations received (measured) | connections cut (measured) |"
    );
    println!("|---|---|---:|---:|");
    for (k, (name, mode)) in [
        ("gw-1", "best_effort"),
        ("gw-2", "best_effort"),
        ("gw-3", "strict"),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {mode} | {:.0} (expected {}) | {:.0} (expected {}) |",
            gen_after[k] - gen_before[k],
            2 * o.changes,
            cut_after[k] - cut_before[k],
            2 * o.changes
        );
    }
    println!();
    let [_, _, p99, _] = summary_ms(&s.cut);
    let [_, _, p99r, _] = summary_ms(&s.readmit);
    println!(
        "Target (issue 5): p99 ≤ 250 ms, live-session cut included → cut p99 {p99:.1} ms — {}; \
         re-admission p99 {p99r:.1} ms — {}.",
        if p99 <= 250.0 && s.sessions_not_cut == 0 {
            "met"
        } else {
            "NOT met"
        },
        if p99r <= 250.0 && s.not_readmitted == 0 {
            "met"
        } else {
            "NOT met"
        },
    );
    println!();
    drop(gateways);
    drop(ca);
}
