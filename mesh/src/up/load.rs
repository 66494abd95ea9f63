//! The load generator (HTTP/1.1 GETs to the front door, as a client outside the mesh would
//! send them: to the inbound sidecar of a ready workload serving the load's service) and the
//! one-request probe that must succeed before `mesh up` prints its `Try:` line.
//!
//! The load generator starts traces as an instrumented client would: a share of its requests
//! carry a sampled W3C `traceparent` (the others an unsampled one, so the sidecars do not start
//! traces of their own for them), and it records its own client span of each sampled request
//! in the trace store, the root of the trace the sidecars continue.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;

use crate::dash::traces::{Span, Store};
use std::sync::Mutex;

/// Which requests start traces, and where the load generator's own spans go.
#[derive(Clone, Debug)]
pub struct Tracing {
    /// The share of requests sampled (0 to 1).
    pub sample: f64,
    pub store: Arc<Mutex<Store>>,
}

/// A running load generator.
#[derive(Debug)]
pub struct Load {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Sends `rps` requests per second for `path` with `authority` as `Host` to whatever
    /// address `front` holds (none: the request fails, as it would for a real client).
    pub fn start(
        front: watch::Receiver<Option<SocketAddr>>,
        authority: String,
        path: String,
        rps: u32,
        tracing: Option<Tracing>,
    ) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(generate(
            Target {
                front,
                authority,
                path,
                stopped,
            },
            rps,
            tracing,
            sent.clone(),
            failed.clone(),
        ));
        Load {
            sent,
            failed,
            stop,
            task,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Sends no new request and lets the one in flight finish (for up to two seconds, then
    /// drops it), so that the counts every sidecar reports afterwards agree with `sent`: a
    /// request cut off halfway would be counted by the sidecars it had reached and by nobody
    /// else.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

struct Target {
    front: watch::Receiver<Option<SocketAddr>>,
    authority: String,
    path: String,
    /// Turns true when the generator is to stop before its next request.
    stopped: watch::Receiver<bool>,
}

/// Over one keep-alive connection, reconnecting after a failure or when the front moves.
async fn generate(
    target: Target,
    rps: u32,
    tracing: Option<Tracing>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let Target {
        front,
        authority,
        path,
        mut stopped,
    } = target;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(SocketAddr, Sender)> = None;
    loop {
        // The stop first: once asked to stop, no tick (however late) sends another request.
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        sent.fetch_add(1, Ordering::Relaxed);
        let target = *front.borrow();
        let ok = match target {
            None => false,
            Some(addr) => {
                if conn
                    .as_ref()
                    .is_none_or(|(a, s)| *a != addr || s.is_closed())
                {
                    conn = connect(addr).await.map(|s| (addr, s));
                }
                let context = tracing.as_ref().map(|t| Context::new(t.sample));
                let started = std::time::SystemTime::now();
                let outcome = match conn.as_mut() {
                    Some((_, tx)) => get(tx, &authority, &path, context.as_ref()).await,
                    None => Err(Outcome::Failed("cannot connect".into())),
                };
                if let (Some(t), Some(c)) = (&tracing, &context)
                    && c.sampled
                {
                    let status = match &outcome {
                        Ok(()) => Some(200),
                        Err(Outcome::Status(s, _)) => Some(*s),
                        Err(Outcome::Failed(_)) => None,
                    };
                    let span = c.span(started, &authority, &path, status);
                    if let Ok(mut store) = t.store.lock() {
                        store.insert(vec![span]);
                    }
                }
                outcome.is_ok()
            }
        };
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
    }
}

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// One request's W3C trace context.
#[derive(Debug)]
struct Context {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

impl Context {
    fn new(sample: f64) -> Self {
        let mut trace_id = fastrand::u128(1..).to_be_bytes();
        // W3C: the trace id's version-independent randomness; never all zeros.
        trace_id[0] |= 1;
        Context {
            trace_id,
            span_id: fastrand::u64(1..).to_be_bytes(),
            sampled: fastrand::f64() < sample,
        }
    }

    fn traceparent(&self) -> String {
        use crate::dash::traces::hex;
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// The load generator's client span of the request.
    fn span(
        &self,
        started: std::time::SystemTime,
        authority: &str,
        path: &str,
        status: Option<u16>,
    ) -> Span {
        let ns = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let mut attributes = vec![
            ("http.request.method".to_string(), "GET".to_string()),
            ("url.path".to_string(), path.to_string()),
            ("server.address".to_string(), authority.to_string()),
        ];
        match status {
            Some(s) => attributes.push(("http.response.status_code".into(), s.to_string())),
            None => attributes.push(("error.type".into(), "connect".into())),
        }
        Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: None,
            name: format!("GET {path}"),
            kind: "client",
            service: "load".into(),
            start_ns: ns(started),
            end_ns: ns(std::time::SystemTime::now()),
            error: status.is_none_or(|s| s >= 500),
            attributes,
        }
    }
}

/// Why a request did not succeed.
#[derive(Debug)]
enum Outcome {
    Status(u16, String),
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Status(s, body) => write!(f, "{s}: {body}"),
            Outcome::Failed(e) => f.write_str(e),
        }
    }
}

/// One GET (with a trace context, when given); the status and body when it is not a success.
async fn get(
    tx: &mut Sender,
    authority: &str,
    path: &str,
    context: Option<&Context>,
) -> Result<(), Outcome> {
    let failed = |e: &dyn std::fmt::Display| Outcome::Failed(e.to_string());
    let mut req = http::Request::get(path).header(http::header::HOST, authority);
    if let Some(c) = context {
        req = req.header("traceparent", c.traceparent());
    }
    let req = req.body(Empty::new()).map_err(|e| failed(&e))?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .map_err(|_| failed(&"no response within 10 s"))?
        .map_err(|e| failed(&e))?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(Outcome::Status(
            status.as_u16(),
            String::from_utf8_lossy(&body).trim_end().to_string(),
        ))
    }
}

/// Sends the request the `Try:` line shows until it succeeds (every workload it calls is
/// then ready and in discovery, every sidecar on the way has its certificate), or `within`
/// runs out: then the last failure.
pub async fn probe(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let outcome = match connect(addr).await {
            Some(mut tx) => get(&mut tx, authority, path, None).await,
            None => Err(Outcome::Failed(format!("cannot connect to {addr}"))),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
