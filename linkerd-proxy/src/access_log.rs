//! Access logs (`LINKERD2_PROXY_ACCESS_LOG=apache|json`): one line on stderr per inbound HTTP
//! request, with the fields Linkerd's proxy writes, when its response headers are sent (a
//! response the proxy made itself, such as a 403, included).
//!
//! The request path fills an [`Entry`] and pushes it onto a bounded queue; a thread of its own
//! (so that a blocked stderr never blocks the runtime) wakes every 50 ms, or when the queue is
//! a quarter full, formats the lines and writes them in one go. A request never wakes it by
//! itself. When the queue is full the line is dropped and counted
//! (`proxy_access_log_dropped_total`): a slow stderr never slows a request.
//!
//! - `apache`: `<client.addr> <client.id> - [<timestamp>] "<method> <uri> <version>" <status>`
//! - `json`: `client.addr`, `client.id`, `host`, `method`, `processing_ns`, `request_bytes`,
//!   `response_bytes` (when the response has a `content-length`), `status`, `timestamp`,
//!   `total_ns`, `trace_id`, `uri`, `user_agent`, `version`, keys sorted.
//!
//! `timestamp` is the request's arrival in RFC 3339 (UTC, nanoseconds); `total_ns` runs to the
//! response headers, `processing_ns` is that less the wait for the application's response.
//! `trace_id` is the request's W3C or B3 trace id, else `x-request-id`, else
//! `x-amzn-trace-id`.

use crate::{
    metrics::{Metrics, Series},
    tap::json_str,
};
use http::{HeaderMap, HeaderName, Method, Request, Version, header};
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Lines waiting to be written; beyond this they are dropped.
const BUFFER: usize = 4096;
/// Queued lines that wake the writer before its interval.
const WAKE_AT: usize = BUFFER / 4;
/// How long a line may wait for the writer.
const INTERVAL: Duration = Duration::from_millis(50);
/// Header values longer than this are cut.
const MAX_VALUE: usize = 2048;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Apache,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "apache" => Ok(Format::Apache),
            "json" => Ok(Format::Json),
            _ => Err("expected `apache` or `json`".into()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct AccessLog {
    queue: Arc<Queue>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Boxed as they travel with the request: queuing moves a pointer, not the entry.
    #[allow(clippy::vec_box)]
    lines: Mutex<Vec<Box<Entry>>>,
    wake: Condvar,
}

/// One request's line, filled as the request goes.
#[derive(Debug)]
pub(crate) struct Entry {
    client_addr: SocketAddr,
    client_id: Option<Arc<str>>,
    timestamp: SystemTime,
    start: Instant,
    method: Method,
    uri: String,
    version: Version,
    trace_id: String,
    request_bytes: String,
    user_agent: String,
    host: String,
    status: u16,
    response_bytes: Option<String>,
    total: Duration,
    /// The wait for the application's response headers.
    pub upstream: Duration,
}

fn header_str(h: &HeaderMap, name: &HeaderName) -> String {
    h.get(name)
        .map(|v| cut(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_default()
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl AccessLog {
    /// Starts the writer thread: lines go to `out` (stderr in the proxy).
    pub(crate) fn start<W>(format: Format, metrics: &Metrics, out: W) -> std::io::Result<Arc<Self>>
    where
        W: std::io::Write + Send + 'static,
    {
        let queue = Arc::new(Queue::default());
        let dropped = Arc::new(AtomicU64::new(0));
        let q = queue.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(format, &q, out))?;
        let d = dropped.clone();
        metrics.register_series(Series {
            name: "proxy_access_log_dropped_total",
            help: "Access log lines dropped because the writer was behind.",
            kind: "counter",
            labels: String::new(),
            value: Box::new(move || d.load(Ordering::Relaxed)),
        });
        Ok(Arc::new(Self { queue, dropped }))
    }

    /// A request's entry, from its head.
    pub(crate) fn entry<B>(
        req: &Request<B>,
        client_addr: SocketAddr,
        client_id: Option<Arc<str>>,
        trace_id: Option<String>,
    ) -> Entry {
        let h = req.headers();
        let trace_id = trace_id
            .map(|t| cut(&t))
            .or_else(|| Some(header_str(h, &X_REQUEST_ID)).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| header_str(h, &X_AMZN_TRACE_ID));
        Entry {
            client_addr,
            client_id,
            timestamp: SystemTime::now(),
            start: Instant::now(),
            method: req.method().clone(),
            // Origin-form (HTTP/1) as received, without formatting; absolute-form whole.
            uri: match (req.uri().scheme(), req.uri().path_and_query()) {
                (None, Some(pq)) => cut(pq.as_str()),
                _ => cut(&req.uri().to_string()),
            },
            version: req.version(),
            trace_id,
            request_bytes: header_str(h, &header::CONTENT_LENGTH),
            user_agent: header_str(h, &header::USER_AGENT),
            host: header_str(h, &header::HOST),
            status: 0,
            response_bytes: None,
            total: Duration::ZERO,
            upstream: Duration::ZERO,
        }
    }

    /// The response headers are going out: the line is complete.
    pub(crate) fn log(&self, mut e: Box<Entry>, status: u16, response: Option<&HeaderMap>) {
        e.total = e.start.elapsed();
        e.status = status;
        e.response_bytes = response
            .and_then(|h| h.get(header::CONTENT_LENGTH))
            .map(|v| cut(&String::from_utf8_lossy(v.as_bytes())));
        let mut lines = crate::lock(&self.queue.lines);
        if lines.len() >= BUFFER {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        lines.push(e);
        if lines.len() == WAKE_AT {
            self.queue.wake.notify_one();
        }
    }
}

/// The writer thread: drains the queue every [`INTERVAL`] (or when woken), writes the lines.
fn write_lines<W: std::io::Write>(format: Format, queue: &Queue, mut out: W) {
    let mut buf = String::new();
    loop {
        let batch = {
            let mut lines = crate::lock(&queue.lines);
            if lines.len() < WAKE_AT {
                lines = match queue.wake.wait_timeout(lines, INTERVAL) {
                    Ok((l, _)) => l,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            std::mem::take(&mut *lines)
        };
        if batch.is_empty() {
            continue;
        }
        for e in &batch {
            format_line(format, e, &mut buf);
        }
        drop(batch);
        // Nowhere to write: the lines are lost, the queue keeps draining.
        let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
        buf.clear();
        if buf.capacity() > 256 * 1024 {
            buf.shrink_to(16 * 1024);
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

pub(crate) fn format_line(format: Format, e: &Entry, out: &mut String) {
    let processing = e.total.saturating_sub(e.upstream);
    match format {
        Format::Apache => {
            let id = e.client_id.as_deref().unwrap_or("-");
            let _ = write!(out, "{} {id} - [", e.client_addr);
            push_rfc3339(out, e.timestamp);
            out.push_str("] \"");
            out.push_str(e.method.as_str());
            out.push(' ');
            out.push_str(&e.uri.replace(['"', '\n', '\r'], "%22"));
            out.push(' ');
            out.push_str(version_str(e.version));
            out.push_str("\" ");
            push_digits(out, u64::from(e.status), 1);
            out.push('\n');
        }
        Format::Json => {
            // Every field after the first (`client.addr`, written below).
            let field = |out: &mut String, k: &str, v: &str| {
                out.push(',');
                json_str(out, k);
                out.push(':');
                json_str(out, v);
            };
            let _ = write!(out, "{{\"client.addr\":\"{}\"", e.client_addr);
            field(out, "client.id", e.client_id.as_deref().unwrap_or("-"));
            field(out, "host", &e.host);
            field(out, "method", e.method.as_str());
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            out.push_str(",\"processing_ns\":\"");
            push_digits(out, nanos(processing), 1);
            out.push('"');
            field(out, "request_bytes", &e.request_bytes);
            if let Some(b) = &e.response_bytes {
                field(out, "response_bytes", b);
            }
            out.push_str(",\"status\":");
            push_digits(out, u64::from(e.status), 1);
            out.push_str(",\"timestamp\":\"");
            push_rfc3339(out, e.timestamp);
            out.push_str("\",\"total_ns\":\"");
            push_digits(out, nanos(e.total), 1);
            out.push('"');
            field(out, "trace_id", &e.trace_id);
            field(out, "uri", &e.uri);
            field(out, "user_agent", &e.user_agent);
            field(out, "version", version_str(e.version));
            out.push_str("}\n");
        }
    }
}

/// RFC 3339 in UTC with nanoseconds: `2022-08-23T20:28:20.071809491Z`.
#[cfg(test)]
fn rfc3339(t: SystemTime) -> String {
    let mut out = String::with_capacity(30);
    push_rfc3339(&mut out, t);
    out
}

/// [`rfc3339`] appended to `out`, digit by digit (a line's formatting is mostly numbers).
fn push_rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    push_digits(out, u64::try_from(y).unwrap_or(0), 4);
    out.push('-');
    push_digits(out, u64::from(m), 2);
    out.push('-');
    push_digits(out, u64::from(day), 2);
    out.push('T');
    push_digits(out, rem / 3600, 2);
    out.push(':');
    push_digits(out, rem % 3600 / 60, 2);
    out.push(':');
    push_digits(out, rem % 60, 2);
    out.push('.');
    push_digits(out, u64::from(d.subsec_nanos()), 9);
    out.push('Z');
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    for b in &buf[start..] {
        out.push(char::from(*b));
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm, in 400-year eras of 146,097 days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_661_286_500, 71_809_491);
        assert_eq!(rfc3339(t), "2022-08-23T20:28:20.071809491Z");
        // A leap day, and the end of a century that is not a leap year.
        assert_eq!(
            &rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400))[..10],
            "2000-02-29"
        );
        assert_eq!(
            &rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_400))[..10],
            "2100-03-01"
        );
    }

    fn entry() -> Entry {
        let req = Request::post("/users?x=1")
            .header(header::HOST, "web.test")
            .header(header::USER_AGENT, "curl/8 \"quoted\"\tx")
            .header(header::CONTENT_LENGTH, "5")
            .header("x-request-id", "req-7")
            .body(())
            .unwrap();
        let mut e = AccessLog::entry(&req, "10.0.0.1:4000".parse().unwrap(), None, None);
        e.status = 201;
        e.total = Duration::from_micros(1500);
        e.upstream = Duration::from_micros(1000);
        e.timestamp = UNIX_EPOCH + Duration::new(1_661_286_500, 71_809_491);
        e
    }

    #[test]
    fn apache_lines() {
        let mut out = String::new();
        format_line(Format::Apache, &entry(), &mut out);
        assert_eq!(
            out,
            "10.0.0.1:4000 - - [2022-08-23T20:28:20.071809491Z] \"POST /users?x=1 HTTP/1.1\" 201\n"
        );
    }

    #[test]
    fn json_lines_parse_with_sorted_keys() {
        let mut e = entry();
        e.client_id = Some("web.ns.serviceaccount.identity.linkerd.cluster.local".into());
        e.response_bytes = Some("12".into());
        let mut out = String::new();
        format_line(Format::Json, &e, &mut out);
        assert!(
            out.ends_with('\n') && out.matches('\n').count() == 1,
            "{out}"
        );
        let keys: Vec<&str> = out
            .split(",\"")
            .map(|p| p.trim_start_matches("{\"").split('"').next().unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(out.contains("\"status\":201,"), "{out}");
        assert!(out.contains("\"total_ns\":\"1500000\""), "{out}");
        assert!(out.contains("\"processing_ns\":\"500000\""), "{out}");
        assert!(out.contains("\"trace_id\":\"req-7\""), "{out}");
        assert!(
            out.contains("\"user_agent\":\"curl/8 \\\"quoted\\\"\\tx\""),
            "{out}"
        );
        assert!(out.contains("\"request_bytes\":\"5\""), "{out}");
        assert!(out.contains("\"response_bytes\":\"12\""), "{out}");
    }

    /// A writer tests can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A stderr nobody reads: every write blocks.
    struct Stuck;

    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_and_a_full_buffer_drops() {
        let out = Shared::default();
        let log = AccessLog::start(Format::Apache, &Metrics::new(), out.clone()).unwrap();
        for _ in 0..3 {
            log.log(Box::new(entry()), 200, None);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while out
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            < 3
        {
            assert!(Instant::now() < deadline, "lines not written");
            std::thread::park_timeout(Duration::from_millis(10));
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 3);
        // A writer that never returns: past the queue's bound, lines are dropped, not kept.
        let log = AccessLog::start(Format::Json, &Metrics::new(), Stuck).unwrap();
        log.log(Box::new(entry()), 200, None);
        let until = Instant::now() + INTERVAL * 3;
        while Instant::now() < until {
            std::thread::park_timeout(INTERVAL);
        }
        for _ in 0..(BUFFER + 100) {
            log.log(Box::new(entry()), 200, None);
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 100);
        assert_eq!(crate::lock(&log.queue.lines).len(), BUFFER);
    }
}
