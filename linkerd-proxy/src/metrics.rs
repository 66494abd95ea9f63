//! Prometheus metrics with Linkerd's names and labels.
//!
//! A small registry of atomics, keyed by label set. The hot path resolves its label set's
//! counters once (per connection for TCP, per request for HTTP) and then only touches atomics and
//! a per-label-set lock that is held for a few instructions. Exported as Prometheus text by the
//! admin server.

use crate::{io::ByteCounters, lock};
use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// `response_latency_ms` bucket bounds: Linkerd's (1 ms to 50 s), with sub-millisecond bounds
/// below them, since a hop through a sidecar on one host takes a fraction of a millisecond
/// (Linkerd's first bucket would put every such request at "≤ 1 ms"). Dashboards that compute
/// quantiles from the `le` labels read them either way.
pub const LATENCY_BUCKETS_MS: [f64; 30] = [
    0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0,
    300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0,
    40000.0, 50000.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The `tls` label and its companions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tls {
    /// `tls="true"`, with the peer's identity when it is known.
    Established { peer_id: Option<Arc<str>> },
    /// `tls="no_identity"` with a `no_tls_reason`.
    None(&'static str),
}

/// Which side of the proxy a TCP connection is on: `src` (accepted) or `dst` (dialled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Src,
    Dst,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpKey {
    pub direction: Direction,
    pub authority: Arc<str>,
    pub target_addr: SocketAddr,
    pub tls: Tls,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub direction: Direction,
    pub peer: Peer,
    pub target_addr: SocketAddr,
    pub tls: Tls,
}

/// The process-wide registry.
#[derive(Debug)]
pub struct Metrics {
    http: Mutex<HashMap<HttpKey, Arc<HttpStats>>>,
    tcp: Mutex<HashMap<TcpKey, Arc<TcpStats>>>,
    detect: Mutex<HashMap<(Direction, &'static str, &'static str), u64>>,
    /// The identity client's certificates.
    identity: Mutex<IdentityStats>,
    start_time: f64,
    /// Live request events for the admin server's `/tap`.
    tap: Arc<crate::tap::Tap>,
    /// Inbound authorization decisions.
    authz: Mutex<HashMap<AuthzKey, Arc<AtomicU64>>>,
    /// Outbound policy routes, by (parent, route).
    routes: Mutex<HashMap<RouteKey, Arc<RouteCounters>>>,
    /// Inbound requests refused by a local rate limit, by (server, rate limit).
    rate_limited: Mutex<HashMap<RouteKey, Arc<AtomicU64>>>,
    /// The proxy's limits (connections per listener, requests in flight, header-read
    /// timeouts): series read from the limiters themselves at scrape time.
    limits: Mutex<Vec<LimitSeries>>,
}

/// One series of a limit family, e.g. `proxy_connections_open{listener="inbound"}`.
pub struct LimitSeries {
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Rendered label pairs, e.g. `listener="inbound"`.
    pub labels: String,
    pub value: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for LimitSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitSeries")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// What the identity client did.
#[derive(Clone, Copy, Debug, Default)]
struct IdentityStats {
    /// (certificate expiry, next refresh), as unix seconds, once certified.
    times: Option<(f64, f64)>,
    /// Certify calls that succeeded, and that failed.
    refreshes: [u64; 2],
}

/// (parent, route) of an outbound policy route.
type RouteKey = (Arc<str>, Arc<str>);

/// What an outbound route did: Linkerd's `outbound_http_route_*` counters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub requests: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Still failing after the route's retry limit.
    pub retry_limit_exceeded: AtomicU64,
    /// A retry was wanted but the budget was spent or the body too large to replay.
    pub retry_overflow: AtomicU64,
    pub timeouts: AtomicU64,
    pub faults_injected: AtomicU64,
}

impl RouteCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One authorization counter's labels: Linkerd's `inbound_{http,tcp}_authz_{allow,deny}_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthzKey {
    /// `http` or `tcp`.
    pub proto: &'static str,
    pub allow: bool,
    pub srv_kind: Arc<str>,
    pub srv_name: Arc<str>,
    /// HTTP only; empty for requests that matched no route.
    pub route_name: Option<Arc<str>>,
    /// Allowed decisions only.
    pub authz_kind: Option<Arc<str>>,
    pub authz_name: Option<Arc<str>>,
}

/// Request and response counters for one HTTP label set.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    responses: Mutex<Vec<ResponseStats>>,
}

#[derive(Debug)]
struct ResponseStats {
    class: ResponseClass,
    count: u64,
    buckets: [u64; LATENCY_BUCKETS_MS.len()],
    sum_ms: f64,
}

/// How a response ended, which becomes its `status_code`, `grpc_status`, `classification` and
/// `error` labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseClass {
    pub status: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Set when the proxy, not the upstream, produced the failure.
    pub error: Option<&'static str>,
}

/// Counters for one TCP label set.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub open_total: AtomicU64,
    pub close_total: AtomicU64,
    pub bytes: Arc<ByteCounters>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Self {
            http: Mutex::default(),
            tcp: Mutex::default(),
            detect: Mutex::default(),
            identity: Mutex::default(),
            start_time,
            tap: Arc::default(),
            authz: Mutex::default(),
            routes: Mutex::default(),
            rate_limited: Mutex::default(),
            limits: Mutex::default(),
        }
    }

    /// Exports a limiter's counter or gauge.
    pub fn register_limit(&self, series: LimitSeries) {
        lock(&self.limits).push(series);
    }

    fn encode_limits(&self, out: &mut String) {
        let limits = lock(&self.limits);
        let mut names: Vec<&'static str> = limits.iter().map(|l| l.name).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let mut series = limits.iter().filter(|l| l.name == name).peekable();
            if let Some(first) = series.peek() {
                family(out, name, first.help, first.kind);
            }
            for l in series {
                let _ = writeln!(out, "{name}{{{}}} {}", l.labels, (l.value)());
            }
        }
    }

    /// The counter of requests one server's rate limit refused.
    pub fn rate_limited(&self, server: Arc<str>, limit: Arc<str>) -> Arc<AtomicU64> {
        lock(&self.rate_limited)
            .entry((server, limit))
            .or_default()
            .clone()
    }

    fn encode_rate_limited(&self, out: &mut String) {
        let all = snapshot(&self.rate_limited);
        if all.is_empty() {
            return;
        }
        samples(
            out,
            "inbound_http_local_ratelimit_rate_limited_total",
            "Inbound requests refused by a server's local rate limit.",
            "counter",
            &all,
            |((srv, rl), _)| {
                format!(
                    "srv_name=\"{}\",ratelimit_name=\"{}\"",
                    escape(srv),
                    escape(rl)
                )
            },
            |(_, n)| n.load(Ordering::Relaxed),
        );
    }

    /// The counters of one outbound route (resolved once per policy update).
    pub fn route(&self, parent: Arc<str>, route: Arc<str>) -> Arc<RouteCounters> {
        lock(&self.routes)
            .entry((parent, route))
            .or_default()
            .clone()
    }

    fn encode_routes(&self, out: &mut String) {
        let all = snapshot(&self.routes);
        if all.is_empty() {
            return;
        }
        type Get = fn(&RouteCounters) -> &AtomicU64;
        let families: [(&str, &str, Get); 6] = [
            (
                "outbound_http_route_requests_total",
                "Requests routed by an outbound policy route.",
                |c| &c.requests,
            ),
            (
                "outbound_http_route_retry_requests_total",
                "Retries sent by an outbound route.",
                |c| &c.retries,
            ),
            (
                "outbound_http_route_retry_limit_exceeded_total",
                "Requests still failing after the route's retry limit.",
                |c| &c.retry_limit_exceeded,
            ),
            (
                "outbound_http_route_retry_overflow_total",
                "Retries not sent: the retry budget was spent or the body too large to replay.",
                |c| &c.retry_overflow,
            ),
            (
                "outbound_http_route_timeouts_total",
                "Requests that hit the route's timeout.",
                |c| &c.timeouts,
            ),
            (
                "outbound_http_route_faults_injected_total",
                "Requests answered by a fault-injection filter.",
                |c| &c.faults_injected,
            ),
        ];
        for (name, help, get) in families {
            samples(
                out,
                name,
                help,
                "counter",
                &all,
                |((parent, route), _)| {
                    format!(
                        "parent_name=\"{}\",route_name=\"{}\"",
                        escape(parent),
                        escape(route)
                    )
                },
                |(_, c)| get(c).load(Ordering::Relaxed),
            );
        }
    }

    /// The counter of one authorization outcome (resolved once per policy update).
    pub fn authz(&self, key: AuthzKey) -> Arc<AtomicU64> {
        lock(&self.authz).entry(key).or_default().clone()
    }

    fn encode_authz(&self, out: &mut String) {
        let all = snapshot(&self.authz);
        if all.is_empty() {
            return;
        }
        for (proto, allow) in [
            ("http", true),
            ("http", false),
            ("tcp", true),
            ("tcp", false),
        ] {
            let name = format!(
                "inbound_{proto}_authz_{}_total",
                if allow { "allow" } else { "deny" }
            );
            let help = match (proto, allow) {
                ("http", true) => "HTTP requests authorized by an inbound policy.",
                ("http", false) => {
                    "HTTP requests refused by an inbound policy (403, or 404 without a route)."
                }
                ("tcp", true) => "Opaque TCP connections authorized by an inbound policy.",
                _ => "Opaque TCP connections refused by an inbound policy.",
            };
            let series: Vec<_> = all
                .iter()
                .filter(|(k, _)| k.proto == proto && k.allow == allow)
                .collect();
            samples(
                out,
                &name,
                help,
                "counter",
                &series,
                |(k, _)| authz_labels(k),
                |(_, n)| n.load(Ordering::Relaxed),
            );
        }
    }

    pub fn tap(&self) -> &Arc<crate::tap::Tap> {
        &self.tap
    }

    pub fn http(&self, key: HttpKey) -> Arc<HttpStats> {
        let mut map = lock(&self.http);
        if let Some(s) = map.get(&key) {
            return s.clone();
        }
        map.entry(key).or_default().clone()
    }

    pub fn tcp(&self, key: TcpKey) -> Arc<TcpStats> {
        let mut map = lock(&self.tcp);
        if let Some(s) = map.get(&key) {
            return s.clone();
        }
        map.entry(key).or_default().clone()
    }

    /// Counts one detection result, e.g. (`outbound`, `http1`, `matched`).
    pub fn detected(&self, direction: Direction, protocol: &'static str, reason: &'static str) {
        *lock(&self.detect)
            .entry((direction, protocol, reason))
            .or_default() += 1;
    }

    /// Records the current certificate's expiry and when it will be renewed.
    pub fn set_identity_times(&self, expiry: f64, refresh: f64) {
        let mut id = lock(&self.identity);
        id.times = Some((expiry, refresh));
        id.refreshes[0] += 1;
    }

    /// Counts a certificate request that failed.
    pub fn identity_refresh_failed(&self) {
        lock(&self.identity).refreshes[1] += 1;
    }

    /// Renders every family as Prometheus text.
    pub fn encode(&self, out: &mut String) {
        self.encode_http(out);
        self.encode_tcp(out);
        self.encode_detect(out);
        self.encode_authz(out);
        self.encode_routes(out);
        self.encode_rate_limited(out);
        self.encode_limits(out);
        let identity = *lock(&self.identity);
        if identity.refreshes != [0, 0] {
            // Linkerd's current names (`control_identity_cert_*`); the older
            // `identity_cert_*` ones are not exported: no dashboard of Linkerd's reads them.
            if let Some((expiry, refresh)) = identity.times {
                family(
                    out,
                    "control_identity_cert_expiration_timestamp_seconds",
                    "Time when this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch).",
                    "gauge",
                );
                let _ = writeln!(
                    out,
                    "control_identity_cert_expiration_timestamp_seconds {expiry}"
                );
                family(
                    out,
                    "control_identity_cert_refresh_timestamp_seconds",
                    "Time when this proxy's current mTLS identity certificate will be refreshed (in seconds since the UNIX epoch).",
                    "gauge",
                );
                let _ = writeln!(
                    out,
                    "control_identity_cert_refresh_timestamp_seconds {refresh}"
                );
            }
            family(
                out,
                "control_identity_cert_refreshes_total",
                "Certificate requests to the identity service, by result.",
                "counter",
            );
            let [ok, error] = identity.refreshes;
            let _ = writeln!(
                out,
                "control_identity_cert_refreshes_total{{result=\"ok\"}} {ok}"
            );
            let _ = writeln!(
                out,
                "control_identity_cert_refreshes_total{{result=\"error\"}} {error}"
            );
        }
        encode_process(out, self.start_time);
        out.push_str(&crate::build_info::metric());
    }

    fn encode_http(&self, out: &mut String) {
        let http = snapshot(&self.http);
        samples(
            out,
            "request_total",
            "Total count of HTTP requests.",
            "counter",
            &http,
            |(k, _)| http_labels(k),
            |(_, s)| s.requests.load(Ordering::Relaxed),
        );
        family(
            out,
            "response_total",
            "Total count of HTTP responses.",
            "counter",
        );
        for (k, s) in &http {
            for r in lock(&s.responses).iter() {
                let _ = writeln!(
                    out,
                    "response_total{{{},{}}} {}",
                    http_labels(k),
                    response_labels(&r.class, true),
                    r.count
                );
            }
        }
        family(
            out,
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response stream completing.",
            "histogram",
        );
        for (k, s) in &http {
            for r in lock(&s.responses).iter() {
                let labels = format!("{},{}", http_labels(k), response_labels(&r.class, false));
                let mut cumulative = 0;
                for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    cumulative += r.buckets[i];
                    let _ = writeln!(
                        out,
                        "response_latency_ms_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "response_latency_ms_bucket{{{labels},le=\"+Inf\"}} {}",
                    r.count
                );
                let _ = writeln!(out, "response_latency_ms_count{{{labels}}} {}", r.count);
                let _ = writeln!(out, "response_latency_ms_sum{{{labels}}} {}", r.sum_ms);
            }
        }
    }

    fn encode_tcp(&self, out: &mut String) {
        let tcp = snapshot(&self.tcp);
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&TcpStats) -> u64,
        );
        let families: [Family; 5] = [
            (
                "tcp_open_total",
                "Total count of opened connections.",
                "counter",
                |s| s.open_total.load(Ordering::Relaxed),
            ),
            (
                "tcp_open_connections",
                "Number of currently-open connections.",
                "gauge",
                |s| {
                    s.open_total
                        .load(Ordering::Relaxed)
                        .saturating_sub(s.close_total.load(Ordering::Relaxed))
                },
            ),
            (
                "tcp_close_total",
                "Total count of closed connections.",
                "counter",
                |s| s.close_total.load(Ordering::Relaxed),
            ),
            (
                "tcp_read_bytes_total",
                "Total count of bytes read from peers.",
                "counter",
                |s| s.bytes.read.load(Ordering::Relaxed),
            ),
            (
                "tcp_write_bytes_total",
                "Total count of bytes written to peers.",
                "counter",
                |s| s.bytes.write.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, value) in families {
            samples(
                out,
                name,
                help,
                kind,
                &tcp,
                |(k, _)| tcp_labels(k),
                |(_, s)| value(s),
            );
        }
    }

    fn encode_detect(&self, out: &mut String) {
        samples(
            out,
            "protocol_detect_total",
            "Protocol detection results, by protocol and why detection ended.",
            "counter",
            &snapshot(&self.detect),
            |((dir, proto, reason), _)| {
                format!(
                    "direction=\"{}\",protocol=\"{proto}\",reason=\"{reason}\"",
                    dir.as_str()
                )
            },
            |(_, n)| *n,
        );
    }
}

// === impl HttpStats ===

impl HttpStats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn response(&self, class: ResponseClass, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        let mut rs = lock(&self.responses);
        let i = match rs.iter().position(|r| r.class == class) {
            Some(i) => i,
            None => {
                rs.push(ResponseStats {
                    class,
                    count: 0,
                    buckets: [0; LATENCY_BUCKETS_MS.len()],
                    sum_ms: 0.0,
                });
                rs.len() - 1
            }
        };
        let r = &mut rs[i];
        r.count += 1;
        r.sum_ms += ms;
        if let Some(b) = r.buckets.get_mut(bucket) {
            *b += 1;
        }
    }
}

impl ResponseClass {
    pub fn is_success(&self) -> bool {
        self.error.is_none()
            && self.status.is_some_and(|s| s < 500)
            && self.grpc_status.is_none_or(|g| g == 0)
    }
}

// === impl Direction, Tls ===

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl Tls {
    fn labels(&self, direction: Direction, out: &mut String) {
        match self {
            Tls::Established { peer_id } => {
                out.push_str("tls=\"true\"");
                if let Some(id) = peer_id {
                    let key = match direction {
                        Direction::Inbound => "client_id",
                        Direction::Outbound => "server_id",
                    };
                    let _ = write!(out, ",{key}=\"{}\"", escape(id));
                }
            }
            Tls::None(reason) => {
                let _ = write!(out, "tls=\"no_identity\",no_tls_reason=\"{reason}\"");
            }
        }
    }
}

fn http_labels(k: &HttpKey) -> String {
    let mut s = format!(
        "direction=\"{}\",authority=\"{}\",target_addr=\"{}\",",
        k.direction.as_str(),
        escape(&k.authority),
        k.target_addr
    );
    k.tls.labels(k.direction, &mut s);
    s
}

fn tcp_labels(k: &TcpKey) -> String {
    let peer = match k.peer {
        Peer::Src => "src",
        Peer::Dst => "dst",
    };
    let mut s = format!(
        "direction=\"{}\",peer=\"{peer}\",target_addr=\"{}\",",
        k.direction.as_str(),
        k.target_addr
    );
    k.tls.labels(k.direction, &mut s);
    s
}

fn response_labels(c: &ResponseClass, classification: bool) -> String {
    let mut s = String::new();
    match c.status {
        Some(code) => {
            let _ = write!(s, "status_code=\"{code}\"");
        }
        None => s.push_str("status_code=\"\""),
    }
    if let Some(g) = c.grpc_status {
        let _ = write!(s, ",grpc_status=\"{g}\"");
    }
    if classification {
        let class = if c.is_success() { "success" } else { "failure" };
        let _ = write!(s, ",classification=\"{class}\"");
    }
    if let Some(e) = c.error {
        let _ = write!(s, ",error=\"{e}\"");
    }
    s
}

fn authz_labels(k: &AuthzKey) -> String {
    let mut s = format!(
        "srv_kind=\"{}\",srv_name=\"{}\"",
        escape(&k.srv_kind),
        escape(&k.srv_name)
    );
    if let Some(r) = &k.route_name {
        let _ = write!(s, ",route_name=\"{}\"", escape(r));
    }
    if let (Some(kind), Some(n)) = (&k.authz_kind, &k.authz_name) {
        let _ = write!(
            s,
            ",authz_kind=\"{}\",authz_name=\"{}\"",
            escape(kind),
            escape(n)
        );
    }
    s
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One metric family: its HELP and TYPE lines, then one sample per series.
fn samples<T>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    series: &[T],
    labels: impl Fn(&T) -> String,
    value: impl Fn(&T) -> u64,
) {
    family(out, name, help, kind);
    for t in series {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(t), value(t));
    }
}

/// A registry map's entries, copied out from under its lock (values are counters or `Arc`s of
/// them) and sorted by label set: a scrape renders in a stable order and formats nothing while
/// the hot path could be waiting on the lock.
fn snapshot<K: Clone + Ord, V: Clone>(map: &Mutex<HashMap<K, V>>) -> Vec<(K, V)> {
    let mut all: Vec<(K, V)> = lock(map)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `process_*` from /proc, as the Prometheus client libraries export them.
fn encode_process(out: &mut String, start_time: f64) {
    const TICKS_PER_SEC: f64 = 100.0;
    family(
        out,
        "process_start_time_seconds",
        "Time that the process started (in seconds since the UNIX epoch)",
        "gauge",
    );
    let _ = writeln!(out, "process_start_time_seconds {start_time}");
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (ticks(11) + ticks(12)) / TICKS_PER_SEC;
        family(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        family(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", kb("VmRSS:") * 1024);
        family(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {}", kb("VmSize:") * 1024);
        family(
            out,
            "process_threads",
            "Number of OS threads in the process.",
            "gauge",
        );
        let _ = writeln!(out, "process_threads {}", kb("Threads:"));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
        );
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(max) = max {
            family(
                out,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                "gauge",
            );
            let _ = writeln!(out, "process_max_fds {max}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_linkerd_families() {
        let m = Metrics::new();
        let key = HttpKey {
            direction: Direction::Outbound,
            authority: "web.local:80".into(),
            target_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: Tls::None("not_provided_by_service_discovery"),
        };
        let s = m.http(key.clone());
        s.request();
        s.request();
        let ok = ResponseClass {
            status: Some(200),
            grpc_status: None,
            error: None,
        };
        s.response(ok.clone(), Duration::from_micros(1500));
        s.response(ok, Duration::from_millis(7));
        let failed = ResponseClass {
            status: Some(502),
            grpc_status: None,
            error: Some("connect"),
        };
        m.http(key).response(failed, Duration::from_millis(60_000));
        let t = m.tcp(TcpKey {
            direction: Direction::Inbound,
            peer: Peer::Src,
            target_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: Tls::None("no_tls_from_remote"),
        });
        t.open_total.fetch_add(3, Ordering::Relaxed);
        t.close_total.fetch_add(1, Ordering::Relaxed);
        t.bytes.read.fetch_add(10, Ordering::Relaxed);

        let mut out = String::new();
        m.encode(&mut out);
        let labels = "direction=\"outbound\",authority=\"web.local:80\",target_addr=\"127.0.0.1:8080\",tls=\"no_identity\",no_tls_reason=\"not_provided_by_service_discovery\"";
        assert!(
            out.contains(&format!("request_total{{{labels}}} 2")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "response_total{{{labels},status_code=\"200\",classification=\"success\"}} 2"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("response_total{{{labels},status_code=\"502\",classification=\"failure\",error=\"connect\"}} 1")), "{out}");
        // 1.5 ms lands in le=2, 7 ms in le=10; cumulative.
        assert!(
            out.contains(&format!(
                "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"1\"}} 0"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"2\"}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"10\"}} 2"
            )),
            "{out}"
        );
        // 60 s is past the last bound: only +Inf counts it.
        assert!(out.contains(&format!("response_latency_ms_bucket{{{labels},status_code=\"502\",error=\"connect\",le=\"50000\"}} 0")), "{out}");
        assert!(out.contains(&format!("response_latency_ms_bucket{{{labels},status_code=\"502\",error=\"connect\",le=\"+Inf\"}} 1")), "{out}");
        assert!(out.contains("tcp_open_connections{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:8080\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 2"), "{out}");
        assert!(
            out.contains("tcp_read_bytes_total{direction=\"inbound\""),
            "{out}"
        );
        assert!(out.contains("process_resident_memory_bytes "), "{out}");
        assert!(out.contains("process_cpu_seconds_total "), "{out}");
    }

    #[test]
    fn grpc_failures_are_failures() {
        let c = ResponseClass {
            status: Some(200),
            grpc_status: Some(14),
            error: None,
        };
        assert!(!c.is_success());
        let c = ResponseClass {
            status: Some(200),
            grpc_status: Some(0),
            error: None,
        };
        assert!(c.is_success());
        let c = ResponseClass {
            status: None,
            grpc_status: None,
            error: Some("stream"),
        };
        assert!(!c.is_success());
    }
}
