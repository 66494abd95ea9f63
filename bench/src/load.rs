//! The open-loop load generator.
//!
//! Request `i` is due at `start + i / rate`, whatever happened to earlier requests. A dispatcher
//! thread sleeps until each due time and hands the due time to the connections; latency is
//! measured from the *due* time, not from when a connection got round to sending, so a stall
//! anywhere (generator, proxy, server) shows up in the latency of every request it delayed and
//! coordinated omission is avoided.
//!
//! HTTP/1.1: `connections` workers share one queue of due requests; an idle worker takes the
//! next one, so one slow connection does not hold up the timetable. HTTP/2: requests are spread
//! round-robin over `connections` multiplexed connections, each request its own task.
//!
//! With `proxy`, connections go to that address (an HTTP proxy, e.g. a sidecar's outbound
//! listener) instead of the URL's host, which is not resolved: HTTP/1.1 requests are sent in
//! absolute form (`GET http://svc.bench:80/ HTTP/1.1`, plus `Host`), HTTP/2 requests carry the
//! URL's authority in `:authority`, which is what the proxy routes on.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpStream,
    sync::{Mutex, mpsc},
    task::JoinSet,
};

use crate::stats::{Summary, micros_u32};

#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub url: String,
    pub rate: u64,
    pub duration: Duration,
    pub connections: usize,
    pub http2: bool,
    /// Send every request to this HTTP proxy instead of the URL's host (see the module docs).
    pub proxy: Option<SocketAddr>,
    /// A request not answered this long after its due time counts as a timeout.
    pub timeout: Duration,
    /// Write every answered request's due time and latency here (`--latencies`).
    pub latencies: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Requests on the timetable.
    pub scheduled: u64,
    /// 2xx responses received in full.
    pub ok: u64,
    /// Connection or protocol errors and non-2xx responses.
    pub errors: u64,
    pub timeouts: u64,
    pub first_error: Option<String>,
    /// `ok` divided by the time from the first due time to the last completion.
    pub rps: f64,
    /// Latency of the 2xx responses, from due time to the end of the body.
    pub latency: Option<Summary>,
    /// How late the dispatcher thread woke for each due time (a floor on measured latency).
    pub dispatch_lag: Option<Summary>,
    /// The runs of late requests in the measurement (see [`Stops`]).
    pub stops: Stops,
}

/// Requests answered at least [`STOP_LATE`] after their due time come in runs: everything on
/// the path stopped for a while (on a shared VM, mostly a vCPU that did not run), the requests
/// due meanwhile queued, and all of them were answered when it ran again (their latencies fall
/// by the interval between requests, one after the other). A stop is a run of such late
/// requests, one after the other in due order. At 1,000 requests/s a stop of *T* ms delays
/// about *T* requests, so a handful of stops of a few milliseconds decide a 10 s row's p99.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stops {
    /// Runs of late requests.
    pub count: u64,
    /// Runs whose latest request was at least 5 ms late.
    pub over_5ms: u64,
    /// Late requests, over every run.
    pub requests: u64,
    /// The latest request's latency, in µs (0 without any stop).
    pub longest_us: u32,
}

/// A request this late (from its due time to the end of its response) counts as stopped.
pub const STOP_LATE: Duration = Duration::from_millis(1);

impl Stops {
    /// The stops among `latencies` (µs), given in due order.
    pub fn find(latencies: impl IntoIterator<Item = u32>) -> Stops {
        let late = micros_u32(STOP_LATE);
        let over_5ms = micros_u32(Duration::from_millis(5));
        let mut s = Stops::default();
        // The latest latency of the run under way.
        let mut run: Option<u32> = None;
        for lat in latencies {
            if lat < late {
                s.close(run.take(), over_5ms);
                continue;
            }
            s.requests += 1;
            s.longest_us = s.longest_us.max(lat);
            run = Some(run.map_or(lat, |w| w.max(lat)));
        }
        s.close(run, over_5ms);
        s
    }

    /// The stops as a report's fields (`stops`, `stops_over_5ms`, `stopped_requests`,
    /// `longest_stop_us`), null when there are none to report (no open-loop load).
    pub fn fields(stops: Option<Stops>) -> [(&'static str, serde_json::Value); 4] {
        use serde_json::json;
        [
            ("stops", json!(stops.map(|s| s.count))),
            ("stops_over_5ms", json!(stops.map(|s| s.over_5ms))),
            ("stopped_requests", json!(stops.map(|s| s.requests))),
            ("longest_stop_us", json!(stops.map(|s| s.longest_us))),
        ]
    }

    /// The stops from a report that has [`Stops::fields`] (`bench load`'s output).
    pub fn from_fields(v: &serde_json::Value) -> Option<Stops> {
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        Some(Stops {
            count: n("stops")?,
            over_5ms: n("stops_over_5ms")?,
            requests: n("stopped_requests")?,
            longest_us: u32::try_from(n("longest_stop_us")?).ok()?,
        })
    }

    fn close(&mut self, run: Option<u32>, over_5ms: u32) {
        if let Some(worst) = run {
            self.count += 1;
            self.over_5ms += u64::from(worst >= over_5ms);
        }
    }
}

/// Where to send requests, parsed from an `http://host:port/path` URL.
#[derive(Debug)]
pub struct Target {
    /// Where connections go: the URL's host, or the HTTP proxy.
    pub addr: SocketAddr,
    authority: http::uri::Authority,
    path: http::uri::PathAndQuery,
    /// HTTP/1.1 requests go out in absolute form (to an HTTP proxy).
    absolute_form: bool,
}

impl Target {
    /// `proxy`: connect there and name the URL's host only in the requests.
    pub async fn parse(url: &str, proxy: Option<SocketAddr>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, not {url:?}");
        }
        let Some(authority) = uri.authority().cloned() else {
            bail!("URL {url:?} has no host");
        };
        let port = authority.port_u16().unwrap_or(80);
        let addr = match proxy {
            Some(p) => p,
            None => tokio::net::lookup_host((authority.host(), port))
                .await
                .with_context(|| format!("resolving {authority}"))?
                .next()
                .with_context(|| format!("{authority} resolves to no address"))?,
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        Ok(Self {
            addr,
            authority,
            path,
            absolute_form: proxy.is_some(),
        })
    }

    fn absolute_uri(&self) -> anyhow::Result<Uri> {
        Ok(Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(self.path.clone())
            .build()?)
    }

    /// A GET in the form each protocol wants: origin-form with `Host` for HTTP/1.1 (absolute
    /// form, plus `Host`, to an HTTP proxy), an absolute URI (`:scheme` and `:authority`) for
    /// HTTP/2.
    pub fn request(&self, http2: bool) -> anyhow::Result<Request<Empty<Bytes>>> {
        let req = if http2 {
            Request::get(self.absolute_uri()?).body(Empty::new())?
        } else if self.absolute_form {
            // hyper writes an absolute URI as is: `GET http://host:port/path HTTP/1.1`.
            Request::get(self.absolute_uri()?)
                .header(header::HOST, self.authority.as_str())
                .body(Empty::new())?
        } else {
            Request::get(self.path.as_str())
                .header(header::HOST, self.authority.as_str())
                .body(Empty::new())?
        };
        Ok(req)
    }
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

pub async fn connect_h1(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    let (sender, conn) = http1::handshake(tcp(addr).await?).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub async fn connect_h2(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<Empty<Bytes>>> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), tcp(addr).await?).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request over HTTP/1.1, (re)connecting first if needed; returns the status once the whole
/// body has arrived.
async fn h1_once(
    sender: &mut Option<http1::SendRequest<Empty<Bytes>>>,
    target: &Target,
) -> anyhow::Result<StatusCode> {
    let s = match sender {
        Some(s) if !s.is_closed() => s,
        _ => sender.insert(connect_h1(target.addr).await?),
    };
    s.ready().await?;
    let rsp = s.send_request(target.request(false)?).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

async fn h2_once(
    mut sender: http2::SendRequest<Empty<Bytes>>,
    target: &Target,
) -> anyhow::Result<StatusCode> {
    sender.ready().await?;
    let rsp = sender.send_request(target.request(true)?).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

/// What happened to the requests one worker handled.
#[derive(Debug, Default)]
struct Tally {
    /// Each 2xx response's due time and latency (µs).
    answered: Vec<(Instant, u32)>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

impl Tally {
    fn record(&mut self, due: Instant, outcome: Result<anyhow::Result<StatusCode>, ()>) {
        let now = Instant::now();
        self.last_done = Some(self.last_done.map_or(now, |l| l.max(now)));
        match outcome {
            Ok(Ok(s)) if s.is_success() => {
                self.answered.push((due, micros_u32(now - due)));
            }
            Ok(Ok(s)) => self.error(format!("status {s}")),
            Ok(Err(e)) => self.error(format!("{e:#}")),
            Err(()) => self.timeouts += 1,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, mut other: Tally) {
        self.answered.append(&mut other.answered);
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

type Jobs = Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>;

async fn h1_worker(
    target: Arc<Target>,
    jobs: Jobs,
    mut sender: Option<http1::SendRequest<Empty<Bytes>>>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        // Hold the queue only while waiting for the next due request.
        let due = jobs.lock().await.recv().await;
        let Some(due) = due else { break };
        let deadline = tokio::time::Instant::from_std(due + timeout);
        let outcome = tokio::time::timeout_at(deadline, h1_once(&mut sender, &target))
            .await
            .map_err(|_| ());
        if !matches!(outcome, Ok(Ok(_))) {
            // A failed or abandoned exchange leaves the connection unusable.
            sender = None;
        }
        tally.record(due, outcome);
    }
    tally
}

async fn h2_dispatch(
    target: Arc<Target>,
    mut jobs: mpsc::UnboundedReceiver<Instant>,
    mut senders: Vec<Option<http2::SendRequest<Empty<Bytes>>>>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while let Some(due) = jobs.recv().await {
        let i = next % senders.len();
        next += 1;
        if senders[i].as_ref().is_none_or(|s| s.is_closed()) {
            senders[i] = match connect_h2(target.addr).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tally.record(due, Ok(Err(e)));
                    continue;
                }
            };
        }
        if let Some(sender) = senders[i].clone() {
            let target = target.clone();
            tasks.spawn(async move {
                let deadline = tokio::time::Instant::from_std(due + timeout);
                let outcome = tokio::time::timeout_at(deadline, h2_once(sender, &target))
                    .await
                    .map_err(|_| ());
                let mut t = Tally::default();
                t.record(due, outcome);
                t
            });
        }
        while let Some(done) = tasks.try_join_next() {
            merge_joined(&mut tally, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        merge_joined(&mut tally, done);
    }
    tally
}

fn merge_joined(tally: &mut Tally, joined: Result<Tally, tokio::task::JoinError>) {
    match joined {
        Ok(t) => tally.merge(t),
        Err(e) => tally.error(format!("request task failed: {e}")),
    }
}

/// Runs one open-loop measurement. Connections are opened and used once before the clock
/// starts, so connection setup is not part of the measurement.
pub async fn run(opts: &LoadOpts) -> anyhow::Result<LoadReport> {
    if opts.rate == 0 || opts.connections == 0 {
        bail!("--rate and --connections must be at least 1");
    }
    let target = Arc::new(Target::parse(&opts.url, opts.proxy).await?);
    let total = (opts.rate as f64 * opts.duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();

    let mut workers = JoinSet::new();
    if opts.http2 {
        let mut senders = Vec::with_capacity(opts.connections);
        for _ in 0..opts.connections {
            let s = connect_h2(target.addr).await?;
            warm(h2_once(s.clone(), &target).await)?;
            senders.push(Some(s));
        }
        workers.spawn(h2_dispatch(target.clone(), rx, senders, opts.timeout));
    } else {
        let jobs: Jobs = Arc::new(Mutex::new(rx));
        for _ in 0..opts.connections {
            let mut s = Some(connect_h1(target.addr).await?);
            warm(h1_once(&mut s, &target).await)?;
            workers.spawn(h1_worker(target.clone(), jobs.clone(), s, opts.timeout));
        }
    }

    let start = Instant::now() + Duration::from_millis(5);
    let rate = u128::from(opts.rate);
    let dispatcher = std::thread::Builder::new()
        .name("bench-dispatch".into())
        .spawn(move || {
            let mut lags = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for i in 0..total {
                let offset_ns = u128::from(i) * 1_000_000_000 / rate;
                let due = start + Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(0));
                let now = Instant::now();
                if due > now {
                    // A dedicated thread: tokio's timer has millisecond granularity, which
                    // would send requests in bursts; a plain sleep is accurate to tens of µs.
                    #[expect(clippy::disallowed_methods, reason = "not on a runtime thread")]
                    std::thread::sleep(due - now);
                }
                lags.push(micros_u32(Instant::now().saturating_duration_since(due)));
                if tx.send(due).is_err() {
                    break;
                }
            }
            lags
        })
        .context("starting the dispatcher thread")?;

    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        merge_joined(&mut tally, done);
    }
    let mut lags = dispatcher
        .join()
        .map_err(|_| anyhow::anyhow!("the dispatcher thread panicked"))?;

    let mut rows: Vec<(Duration, u32)> = tally
        .answered
        .iter()
        .map(|&(due, lat)| (due.saturating_duration_since(start), lat))
        .collect();
    rows.sort_unstable();
    if let Some(path) = &opts.latencies {
        write_latencies(path, &rows).with_context(|| format!("writing {}", path.display()))?;
    }
    let stops = Stops::find(rows.iter().map(|&(_, lat)| lat));
    let mut latencies: Vec<u32> = rows.iter().map(|&(_, lat)| lat).collect();
    let ok = latencies.len() as u64;
    let elapsed = tally
        .last_done
        .map_or(opts.duration, |l| l.saturating_duration_since(start))
        .max(Duration::from_millis(1));
    Ok(LoadReport {
        scheduled: total,
        ok,
        errors: tally.errors,
        timeouts: tally.timeouts,
        first_error: tally.first_error,
        rps: ok as f64 / elapsed.as_secs_f64(),
        latency: Summary::from_samples(&mut latencies),
        dispatch_lag: Summary::from_samples(&mut lags),
        stops,
    })
}

/// One line per answered request, in due order: when it was due (ms after the first due
/// time) and its latency (µs), tab-separated; to see when in a run the slow requests came.
fn write_latencies(path: &std::path::Path, rows: &[(Duration, u32)]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "due_ms\tlatency_us")?;
    for (due, lat) in rows {
        writeln!(out, "{:.3}\t{lat}", due.as_secs_f64() * 1e3)?;
    }
    out.flush()?;
    Ok(())
}

fn warm(r: anyhow::Result<StatusCode>) -> anyhow::Result<()> {
    match r.context("warm-up request")? {
        s if s.is_success() => Ok(()),
        s => bail!("warm-up request: status {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_late_requests_are_one_stop() {
        // On time, then a 6 ms stop (released at once: 6, 5, 4, 3, 2, 1 ms late), on time
        // again, then two short stops with a request on time between them.
        let mut lats = vec![300, 280];
        lats.extend((0..6).map(|i| 6_000 - 1_000 * i));
        lats.extend([400, 1_500, 999, 1_000, 1_200]);
        assert_eq!(
            Stops::find(lats),
            Stops {
                count: 3,
                over_5ms: 1,
                requests: 9,
                longest_us: 6_000,
            }
        );
    }

    #[test]
    fn no_late_request_no_stop() {
        assert_eq!(Stops::find(vec![999; 100]), Stops::default());
        assert_eq!(Stops::find(Vec::new()), Stops::default());
    }

    #[test]
    fn stops_read_back_from_their_fields() {
        let s = Stops::find([200, 5_000, 4_000, 300, 1_000]);
        let v = serde_json::Value::Object(
            Stops::fields(Some(s))
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
        assert_eq!(Stops::from_fields(&v), Some(s));
        assert_eq!(Stops::from_fields(&serde_json::json!({"stops": 1})), None);
    }

    #[test]
    fn a_stop_at_the_end_is_counted() {
        assert_eq!(
            Stops::find([200, 5_000, 4_000]),
            Stops {
                count: 1,
                over_5ms: 1,
                requests: 2,
                longest_us: 5_000,
            }
        );
    }
}
