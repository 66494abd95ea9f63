//! The dashboard's HTTP server: the page (embedded), the JSON API and the live event streams
//! (server-sent events). Documented in mesh/README.md ("The dashboard").
//!
//! Loopback by default. Requests whose `Host` is a name other than `localhost` are refused
//! (a web page elsewhere cannot reach the API through DNS rebinding), and connections and
//! streams are bounded.

use super::{Dash, Traces, traces};
use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Semaphore, broadcast, mpsc};

/// The port Linkerd's viz dashboard uses; the next ones are tried when it is taken.
pub const DEFAULT_PORT: u16 = 50750;
const PORTS_TRIED: u16 = 20;
const MAX_CONNECTIONS: usize = 64;
/// Live event streams (`/api/events`) and tap streams (`/api/tap`) open at once.
const MAX_EVENT_STREAMS: usize = 16;
const MAX_TAP_STREAMS: usize = 4;
/// Tap events forwarded per second to one page; more are counted as dropped.
const TAP_EVENTS_PER_SECOND: u32 = 200;

const INDEX: &str = include_str!("assets/index.html");
const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The page's size in bytes: its HTML, CSS and script (nothing else is loaded).
pub const PAGE_BYTES: usize = INDEX.len() + CSS.len() + JS.len();

type Body = BoxBody<Bytes, Infallible>;

/// `addr`, or the first free port from 127.0.0.1:50750.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(a) = addr {
        return tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot serve the dashboard on {a}"));
    }
    let mut last = None;
    for port in DEFAULT_PORT..DEFAULT_PORT + PORTS_TRIED {
        match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no free port for the dashboard in 127.0.0.1:{DEFAULT_PORT}-{}: {}",
        DEFAULT_PORT + PORTS_TRIED - 1,
        last.map_or(String::new(), |e| e.to_string())
    ))
}

#[derive(Debug)]
struct Server {
    dash: Arc<Dash>,
    events: AtomicUsize,
    taps: AtomicUsize,
}

/// Serves the dashboard on `listener` until the process ends.
pub fn serve(listener: tokio::net::TcpListener, dash: Arc<Dash>) {
    let server = Arc::new(Server {
        dash,
        events: AtomicUsize::new(0),
        taps: AtomicUsize::new(0),
    });
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                drop(permit);
            });
        }
    });
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(body.into()).boxed());
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    rsp
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// Whether the `Host` is an address or `localhost` (not a name a web page could point here).
fn host_allowed(req: &Request<Incoming>) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.split(':').next().unwrap_or_default(),
    };
    name == "localhost" || name.parse::<Ipv4Addr>().is_ok()
}

/// `?a=1&b=2` as pairs (values percent-decoded, `+` as a space).
pub fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if !host_allowed(&req) {
            return error(
                StatusCode::FORBIDDEN,
                "the Host must be an address or localhost",
            );
        }
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", INDEX),
            "/app.css" => full(StatusCode::OK, "text/css; charset=utf-8", CSS),
            "/app.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", JS),
            "/api/graph" => json(StatusCode::OK, &self.dash.graph()),
            "/api/history" => json(StatusCode::OK, &self.dash.history()),
            "/api/status" => json(StatusCode::OK, &self.dash.status()),
            "/api/events" => self.events(),
            "/api/tap" => self.tap(query(&req)),
            "/api/traces" => self.traces_list(&req).await,
            p if p.starts_with("/api/traces/") => {
                self.trace(p.trim_start_matches("/api/traces/")).await
            }
            _ => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    async fn traces_list(&self, req: &Request<Incoming>) -> Response<Body> {
        let q = query(req);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let limit = get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(100)
            .min(traces::MAX_TRACES);
        let service = get("service").filter(|s| !s.is_empty());
        match &self.dash.traces {
            Traces::Local(store) => {
                let Ok(s) = store.lock() else {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the trace store is unusable",
                    );
                };
                let v = serde_json::json!({
                    "counts": s.counts(),
                    "traces": s.list(limit, service),
                });
                drop(s);
                json(StatusCode::OK, &v)
            }
            Traces::Remote(addr) => {
                let mut path = format!("/api/traces?limit={limit}");
                if let Some(s) = service.filter(|s| {
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                }) {
                    path.push_str(&format!("&service={s}"));
                }
                remote(*addr, &path).await
            }
            Traces::None => json(
                StatusCode::OK,
                &serde_json::json!({"counts": null, "traces": []}),
            ),
        }
    }

    async fn trace(&self, id: &str) -> Response<Body> {
        let Some(tid) = traces::parse_trace_id(id) else {
            return error(StatusCode::BAD_REQUEST, "a trace id is 32 hex digits");
        };
        match &self.dash.traces {
            Traces::Local(store) => {
                let t = store.lock().ok().and_then(|s| s.get(&tid));
                match t {
                    Some(t) => json(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default()),
                    None => error(StatusCode::NOT_FOUND, "no such trace (or no longer kept)"),
                }
            }
            Traces::Remote(addr) => {
                remote(*addr, &format!("/api/traces/{}", traces::hex(&tid))).await
            }
            Traces::None => error(StatusCode::NOT_FOUND, "no traces here"),
        }
    }

    /// `GET /api/events`: a `tick` event a second (the graph, the new history sample, the
    /// status), the first at once.
    fn events(self: &Arc<Self>) -> Response<Body> {
        let Some(guard) = Slot::take(self.clone(), |s| &s.events, MAX_EVENT_STREAMS) else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "too many live pages");
        };
        let mut rx = self.dash.subscribe();
        let (tx, body_rx) = mpsc::channel::<Bytes>(4);
        let first = serde_json::json!({"graph": self.dash.graph(), "status": self.dash.status()});
        tokio::spawn(async move {
            let _guard = guard;
            if tx
                .send(Bytes::from(format!("event: tick\ndata: {first}\n\n")))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let ev = tokio::select! {
                    _ = tx.closed() => return,
                    r = rx.recv() => match r {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        sse(body_rx)
    }

    /// `GET /api/tap?workload=&direction=&path=&errors=1`: every request the sidecars finish,
    /// as `tap` events, for as long as the page watches.
    fn tap(self: &Arc<Self>, q: Vec<(String, String)>) -> Response<Body> {
        let Some(guard) = Slot::take(self.clone(), |s| &s.taps, MAX_TAP_STREAMS) else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "too many tap streams");
        };
        let filter = TapFilter::from_query(&q);
        let (lines_tx, mut lines_rx) = mpsc::channel::<(String, String)>(256);
        let mut tasks = Vec::new();
        for (name, admin) in self.dash.proxies() {
            if filter.workload.as_ref().is_some_and(|w| *w != name) {
                continue;
            }
            let tx = lines_tx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = crate::viz::top::tap_stream(name, admin, 3600, tx).await;
            }));
        }
        drop(lines_tx);
        let (tx, body_rx) = mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            let _guard = guard;
            let _tasks = AbortOnDrop(tasks);
            let mut budget = TAP_EVENTS_PER_SECOND;
            let mut dropped = 0u64;
            let mut second = tokio::time::interval(Duration::from_secs(1));
            let _ = tx.send(Bytes::from_static(b": tap\n\n")).await;
            loop {
                let (name, line) = tokio::select! {
                    _ = tx.closed() => return,
                    _ = second.tick() => {
                        budget = TAP_EVENTS_PER_SECOND;
                        if dropped > 0 {
                            let msg = format!("event: dropped\ndata: {dropped}\n\n");
                            dropped = 0;
                            if tx.send(Bytes::from(msg)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    l = lines_rx.recv() => match l {
                        Some(l) => l,
                        None => return,
                    },
                };
                let Some(ev) = filter.pass(&name, &line) else {
                    continue;
                };
                if budget == 0 {
                    dropped += 1;
                    continue;
                }
                budget -= 1;
                if tx
                    .send(Bytes::from(format!("event: tap\ndata: {ev}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        sse(body_rx)
    }
}

/// A tap event passes when it matches every filter given; it is returned with its workload.
#[derive(Debug, Default)]
struct TapFilter {
    workload: Option<String>,
    direction: Option<String>,
    path: Option<String>,
    errors: bool,
}

impl TapFilter {
    fn from_query(q: &[(String, String)]) -> Self {
        let get = |k: &str| {
            q.iter()
                .find(|(n, v)| n == k && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        TapFilter {
            workload: get("workload"),
            direction: get("direction"),
            path: get("path"),
            errors: get("errors").is_some_and(|v| v != "0"),
        }
    }

    fn pass(&self, workload: &str, line: &str) -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(line).ok()?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        if v.get("lost").is_some() {
            return None;
        }
        if self
            .direction
            .as_ref()
            .is_some_and(|d| *d != field("direction"))
            || self
                .path
                .as_ref()
                .is_some_and(|p| !field("path").contains(p.as_str()))
        {
            return None;
        }
        if self.errors {
            let status = v.get("status").and_then(|s| s.as_u64()).map(|s| s as u16);
            let grpc = v
                .get("grpc_status")
                .and_then(|s| s.as_u64())
                .map(|s| s as u32);
            let error = v.get("error").and_then(|s| s.as_str());
            if crate::metrics::classify(status, grpc, error) == crate::metrics::Class::Success {
                return None;
            }
        }
        v.as_object_mut()?.insert(
            "workload".into(),
            serde_json::Value::String(workload.into()),
        );
        Some(v)
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One of a bounded number of streams, given back when dropped.
struct Slot {
    server: Arc<Server>,
    counter: fn(&Server) -> &AtomicUsize,
}

impl Slot {
    fn take(server: Arc<Server>, counter: fn(&Server) -> &AtomicUsize, max: usize) -> Option<Self> {
        let c = counter(&server);
        if c.fetch_add(1, Ordering::AcqRel) >= max {
            c.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot { server, counter })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.counter)(&self.server).fetch_sub(1, Ordering::AcqRel);
    }
}

fn sse(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    use tokio_stream::StreamExt;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    let mut rsp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    rsp
}

/// The answer of another dashboard's API (`mesh dashboard` asks `mesh up`'s for traces).
async fn remote(addr: SocketAddr, path: &str) -> Response<Body> {
    match crate::metrics::get(addr, path).await {
        Ok((status, body)) => full(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            "application/json",
            body,
        ),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("mesh up's dashboard at {addr} did not answer: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_tap_filters_apply() {
        assert_eq!(decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
        let f = TapFilter::from_query(&[
            ("direction".into(), "inbound".into()),
            ("path".into(), "/api".into()),
            ("errors".into(), "1".into()),
        ]);
        let line = |dir: &str, path: &str, status: u16| {
            format!(
                r#"{{"direction":"{dir}","method":"GET","authority":"a","path":"{path}","tls":true,"status":{status},"latency_us":5}}"#
            )
        };
        assert!(
            f.pass("w", &line("inbound", "/api/x", 200)).is_none(),
            "not an error"
        );
        assert!(f.pass("w", &line("outbound", "/api", 503)).is_none());
        assert!(f.pass("w", &line("inbound", "/other", 503)).is_none());
        let v = f.pass("w", &line("inbound", "/api/x", 503)).unwrap();
        assert_eq!(v["workload"], "w");
        assert!(TapFilter::default().pass("w", r#"{"lost":3}"#).is_none());
        assert!(TapFilter::default().pass("w", "nonsense").is_none());
    }
}
