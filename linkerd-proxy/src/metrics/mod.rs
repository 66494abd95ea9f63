//! Prometheus metrics with Linkerd's names and labels.
//!
//! A small registry of atomics, keyed by label set. The hot path resolves its label set's
//! counters once (per connection for TCP, per request for HTTP) and then only touches atomics and
//! a per-label-set lock that is held for a few instructions. Exported as Prometheus text by the
//! admin server.

mod http;
mod policy;
mod process;
#[cfg(test)]
mod tests;
mod text;

pub(crate) use self::text::escape;
pub use self::{
    http::{HttpStats, LATENCY_BUCKETS_MS, ResponseClass},
    policy::{AuthzKey, RouteCounters},
};

use self::{
    policy::RouteKey,
    text::{family, samples, snapshot},
};
use crate::{io::ByteCounters, lock};
use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

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
    /// Outbound: the endpoint's `dst_*` labels from service discovery.
    pub dst_labels: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub direction: Direction,
    pub peer: Peer,
    pub target_addr: SocketAddr,
    pub tls: Tls,
    /// Outbound opaque TCP: the endpoint's `dst_*` labels from service discovery.
    pub dst_labels: Option<Arc<str>>,
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
    /// Series read at scrape time from the part that keeps them: the limits (connections per
    /// listener, requests in flight, header-read timeouts), the trace exporter, the access log.
    series: Mutex<Vec<Series>>,
}

/// One series read at scrape time, e.g. `proxy_connections_open{listener="inbound"}`.
pub struct Series {
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Rendered label pairs, e.g. `listener="inbound"`.
    pub labels: String,
    pub value: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
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
            series: Mutex::default(),
        }
    }

    /// Exports a counter or gauge kept elsewhere (a limiter's, the trace exporter's).
    pub fn register_series(&self, series: Series) {
        lock(&self.series).push(series);
    }

    fn encode_series(&self, out: &mut String) {
        let all = lock(&self.series);
        let mut names: Vec<&'static str> = all.iter().map(|l| l.name).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let mut series = all.iter().filter(|l| l.name == name).peekable();
            if let Some(first) = series.peek() {
                family(out, name, first.help, first.kind);
            }
            for l in series {
                let _ = writeln!(out, "{name}{{{}}} {}", l.labels, (l.value)());
            }
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
        self.encode_series(out);
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
        process::encode(out, self.start_time);
        out.push_str(&crate::build_info::metric());
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
    if let Some(l) = &k.dst_labels {
        s.push(',');
        s.push_str(l);
    }
    s
}
