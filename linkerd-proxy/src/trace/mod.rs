//! Distributed tracing: one span per request per proxy direction, exported over OTLP/gRPC.
//!
//! A request that carries a sampled trace context (W3C `traceparent`, B3) gets a span whose
//! parent is the caller's span; the request goes on with this proxy's span as its parent, in
//! the format it came in. The outbound side's span is a `CLIENT` span, the inbound side's a
//! `SERVER` span, so a request through two sidecars is a client span and, under it, a server
//! span. A request without a context starts a trace only when a sampling ratio is set
//! ([`TraceConfig::sample_ratio`]); a context that says "not sampled" is passed on untouched.
//!
//! The request path only copies what the span reports and hands the finished span to a
//! bounded channel ([`Tracer::finish`]): when it is full the span is dropped and counted, never
//! waited for. The exporter task (`export.rs`) batches spans, builds the OTLP messages and
//! sends them to the collector.

mod context;
mod export;
mod otlp;
mod resource;
mod span;

pub(crate) use self::span::Span;
use crate::{metrics::Direction, tls::CredsRx};
use http::HeaderMap;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;

/// Where spans go and what they say about the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The collector's address (`host:port`).
    pub collector_addr: String,
    /// The collector's mesh identity: mTLS when set; a loopback collector may go without.
    pub collector_name: Option<String>,
    /// Resource attributes: `service.name` and the rest, in order of precedence applied.
    pub resource: Vec<(String, String)>,
    /// The share of requests without a trace context that start a trace here (0: none).
    pub sample_ratio: f64,
    /// Spans waiting for export; beyond this, spans are dropped (and counted).
    pub buffer: usize,
    /// The largest batch sent in one export call.
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill.
    pub flush_interval: Duration,
    /// One export call's deadline.
    pub export_timeout: Duration,
}

impl TraceConfig {
    pub const DEFAULT_BUFFER: usize = 1024;
    pub const DEFAULT_MAX_BATCH: usize = 512;
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// What the exporter counted, read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct TraceStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Export calls that succeeded, and that failed.
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Spans dropped because the buffer was full, and because their export failed.
    pub dropped_full: AtomicU64,
    pub dropped_failed: AtomicU64,
}

/// Starts, continues and hands off spans; one per proxy, shared by both directions.
#[derive(Debug)]
pub(crate) struct Tracer {
    tx: mpsc::Sender<Span>,
    /// Wakes the exporter when a batch is full; otherwise it wakes on its flush interval, so
    /// a span costs the request path no wake-up.
    full: Arc<tokio::sync::Notify>,
    /// Queued spans that make a full batch.
    batch: usize,
    /// Requests without a context start a trace when a random `u64` falls below this.
    start_below: u64,
    stats: Arc<TraceStats>,
}

impl Tracer {
    /// Starts the exporter; spans reach the collector from then on.
    pub(crate) fn start(
        config: TraceConfig,
        creds: Option<CredsRx>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Arc<Self>, String> {
        let channel = crate::control::control_channel(
            &config.collector_addr,
            config.collector_name.as_deref(),
            creds,
            "LINKERD2_PROXY_TRACE_COLLECTOR_SVC_NAME",
        )?;
        let stats = Arc::new(TraceStats::default());
        export::register_metrics(metrics, &stats);
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let start_below = ratio_threshold(config.sample_ratio);
        let full = Arc::new(tokio::sync::Notify::new());
        let batch = config.max_batch.clamp(1, config.buffer.max(1));
        tokio::spawn(export::run(
            config,
            channel,
            rx,
            full.clone(),
            stats.clone(),
        ));
        Ok(Arc::new(Self {
            tx,
            full,
            batch,
            start_below,
            stats,
        }))
    }

    /// The span of a request about to be forwarded, if it is traced: continued from the
    /// request's sampled context, or started here by the sampling ratio. The request's trace
    /// headers then name this span as the next hop's parent.
    pub(crate) fn begin(&self, direction: Direction, headers: &mut HeaderMap) -> Option<Ids> {
        let span_id = || loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                break id;
            }
        };
        match context::extract(headers) {
            Some(cx) if cx.sampled == Some(true) => {
                let span_id = span_id();
                cx.inject(headers, &span_id, true);
                Some(Ids {
                    trace_id: cx.trace_id,
                    span_id,
                    parent_id: Some(cx.parent_id),
                    flags: cx.flags,
                    direction,
                })
            }
            // Not sampled: the caller decided; nothing to record, nothing to rewrite.
            Some(cx) if cx.sampled == Some(false) => None,
            // B3 with the decision deferred: this proxy decides, and tells the next hop.
            Some(cx) => {
                let sampled = self.sample();
                let span_id = span_id();
                cx.inject(headers, &span_id, sampled);
                sampled.then_some(Ids {
                    trace_id: cx.trace_id,
                    span_id,
                    parent_id: Some(cx.parent_id),
                    flags: 1,
                    direction,
                })
            }
            None if self.sample() => {
                let trace_id = loop {
                    let id = fastrand::u128(..).to_be_bytes();
                    if id != [0; 16] {
                        break id;
                    }
                };
                let span_id = span_id();
                context::start(headers, &trace_id, &span_id);
                Some(Ids {
                    trace_id,
                    span_id,
                    parent_id: None,
                    flags: 1,
                    direction,
                })
            }
            None => None,
        }
    }

    fn sample(&self) -> bool {
        self.start_below != 0 && fastrand::u64(..) < self.start_below
    }

    /// Hands a finished span to the exporter; a full buffer drops it (counted).
    pub(crate) fn finish(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.max_capacity() - self.tx.capacity() >= self.batch {
            self.full.notify_one();
        }
    }
}

/// A traced request's ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` when the trace starts here.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    pub direction: Direction,
}

/// `ratio` of the `u64` range (1.0 and above: every request).
fn ratio_threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0
    } else if ratio >= 1.0 {
        u64::MAX
    } else {
        // Below 2^64 by the branch above; `as` saturates anyway.
        (ratio * u64::MAX as f64) as u64
    }
}

/// The trace id a request carries, as hex, for the access log: the W3C or B3 context's, if any.
pub(crate) fn trace_id_of(headers: &HeaderMap) -> Option<String> {
    context::extract(headers).map(|c| context::hex(&c.trace_id))
}

pub(crate) use self::resource::resource_attributes;

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> (Tracer, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(2);
        let t = Tracer {
            tx,
            full: Arc::default(),
            batch: 2,
            start_below: ratio_threshold(ratio),
            stats: Arc::default(),
        };
        (t, rx)
    }

    #[test]
    fn sampled_contexts_are_continued_and_rewritten() {
        let (t, _rx) = tracer(0.0);
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let ids = t.begin(Direction::Outbound, &mut h).expect("traced");
        assert_eq!(
            context::hex(&ids.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            ids.parent_id.map(|p| context::hex(&p)).as_deref(),
            Some("b7ad6b7169203331")
        );
        let next = h["traceparent"].to_str().unwrap();
        assert_eq!(
            next,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                context::hex(&ids.span_id)
            )
        );
    }

    #[test]
    fn unsampled_contexts_pass_untouched() {
        let (t, _rx) = tracer(1.0);
        let mut h = HeaderMap::new();
        let v = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        h.insert("traceparent", v.parse().unwrap());
        assert!(t.begin(Direction::Inbound, &mut h).is_none());
        assert_eq!(h["traceparent"], v);
    }

    #[test]
    fn requests_without_context_start_traces_by_ratio() {
        let (never, _rx) = tracer(0.0);
        let mut h = HeaderMap::new();
        assert!(never.begin(Direction::Outbound, &mut h).is_none());
        assert!(h.is_empty());
        let (always, _rx) = tracer(1.0);
        let ids = always.begin(Direction::Outbound, &mut h).expect("started");
        assert_eq!(ids.parent_id, None);
        let cx = context::extract(&h).expect("a traceparent");
        assert_eq!(
            (cx.trace_id, cx.parent_id, cx.sampled),
            (ids.trace_id, ids.span_id, Some(true))
        );
        // About half at 0.5.
        let (half, _rx) = tracer(0.5);
        let started = (0..2000)
            .filter(|_| {
                half.begin(Direction::Outbound, &mut HeaderMap::new())
                    .is_some()
            })
            .count();
        assert!((800..1200).contains(&started), "{started}");
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let (t, mut rx) = tracer(1.0);
        for _ in 0..3 {
            let ids = t.begin(Direction::Outbound, &mut HeaderMap::new()).unwrap();
            t.finish(Span::for_test(ids));
        }
        assert_eq!(t.stats.dropped_full.load(Ordering::Relaxed), 1);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(f64::NAN), 0);
        assert_eq!(ratio_threshold(1.0), u64::MAX);
        assert_eq!(ratio_threshold(0.5), u64::MAX / 2 + 1);
    }
}
