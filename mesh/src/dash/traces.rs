//! The traces the dashboard shows: a bounded store of spans grouped by trace, fed by the OTLP
//! receiver (`otlp.rs`) and the load generator, read by the JSON API.
//!
//! Bounded three ways: at most [`MAX_TRACES`] traces, [`MAX_SPANS_PER_TRACE`] spans in one
//! trace, and [`MAX_BYTES`] of span data in all (the strings each span holds, plus a fixed
//! cost per span); past any of them the oldest traces go first (a span over its trace's bound
//! is dropped and counted). Strings are cut to a few hundred bytes and a span keeps at most
//! [`MAX_ATTRIBUTES`] attributes, so one hostile span cannot hold much either.

use serde::Serialize;
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

pub const MAX_TRACES: usize = 1000;
pub const MAX_SPANS_PER_TRACE: usize = 512;
pub const MAX_BYTES: usize = 32 << 20;
pub const MAX_ATTRIBUTES: usize = 24;
/// The longest name, attribute key or value kept (longer ones are cut, on a char boundary).
pub const MAX_STRING: usize = 256;
/// What a span costs beyond its strings (the struct, the vectors, the map entry's share).
const SPAN_OVERHEAD: usize = 160;
/// Distinct `service.name`s remembered (for `mesh up --json` and the page's filters).
const MAX_SERVICES: usize = 256;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// One span, as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: &'static str,
    /// The resource's `service.name`: the workload, for `mesh up`'s sidecars.
    pub service: Arc<str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: bool,
    pub attributes: Vec<(String, String)>,
}

impl Span {
    fn cost(&self) -> usize {
        SPAN_OVERHEAD
            + self.name.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
    }
}

/// `s` cut to at most [`MAX_STRING`] bytes.
pub fn cut(mut s: String) -> String {
    if s.len() > MAX_STRING {
        let mut end = MAX_STRING;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[derive(Debug)]
struct Trace {
    spans: Vec<Span>,
    bytes: usize,
}

/// How many traces and spans came and stayed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Traces ever seen (distinct trace ids, counted when their first span arrived).
    pub collected: u64,
    /// Traces held now (at most 1,000: the oldest go first).
    pub stored: usize,
    pub spans_received: u64,
    /// Spans dropped because their trace already held its maximum.
    pub spans_dropped: u64,
    /// The distinct `service.name`s of the spans received.
    pub services: Vec<String>,
    /// The span data held, in bytes as the 32 MiB bound counts it.
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Store {
    traces: HashMap<TraceId, Trace>,
    /// Trace ids, oldest first (each once: the order their first span arrived).
    order: VecDeque<TraceId>,
    bytes: usize,
    collected: u64,
    spans_received: u64,
    spans_dropped: u64,
    services: BTreeSet<Arc<str>>,
}

impl Store {
    /// Adds spans (of any traces); evicts the oldest traces past the bounds.
    pub fn insert(&mut self, spans: Vec<Span>) {
        for span in spans {
            self.spans_received += 1;
            if self.services.len() < MAX_SERVICES && !self.services.contains(&span.service) {
                self.services.insert(span.service.clone());
            }
            let id = span.trace_id;
            if !self.traces.contains_key(&id) {
                while self.order.len() >= MAX_TRACES {
                    self.evict_oldest();
                }
                self.collected += 1;
                self.order.push_back(id);
                self.traces.insert(
                    id,
                    Trace {
                        spans: Vec::new(),
                        bytes: 0,
                    },
                );
            }
            let cost = span.cost();
            let Some(t) = self.traces.get_mut(&id) else {
                continue;
            };
            if t.spans.len() >= MAX_SPANS_PER_TRACE {
                self.spans_dropped += 1;
                continue;
            }
            t.spans.push(span);
            t.bytes += cost;
            self.bytes += cost;
            // Never evict the trace being filled: a single trace is bounded on its own.
            while self.bytes > MAX_BYTES && self.order.front().is_some_and(|o| *o != id) {
                self.evict_oldest();
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front()
            && let Some(t) = self.traces.remove(&old)
        {
            self.bytes -= t.bytes;
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            collected: self.collected,
            stored: self.traces.len(),
            spans_received: self.spans_received,
            spans_dropped: self.spans_dropped,
            services: self.services.iter().map(|s| s.to_string()).collect(),
            bytes: self.bytes,
        }
    }

    /// The newest traces first, at most `limit`, those with a span of `service` when given.
    pub fn list(&self, limit: usize, service: Option<&str>) -> Vec<TraceSummary> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.traces.get(id).map(|t| (id, t)))
            .filter(|(_, t)| service.is_none_or(|s| t.spans.iter().any(|sp| &*sp.service == s)))
            .take(limit)
            .map(|(id, t)| summary(id, &t.spans))
            .collect()
    }

    pub fn get(&self, id: &TraceId) -> Option<TraceDetail> {
        let t = self.traces.get(id)?;
        let s = summary(id, &t.spans);
        let t0 = t.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
        let mut spans: Vec<SpanView> = t
            .spans
            .iter()
            .map(|sp| SpanView {
                span_id: hex(&sp.span_id),
                parent_span_id: sp.parent.map(|p| hex(&p)),
                name: sp.name.clone(),
                kind: sp.kind,
                service: sp.service.to_string(),
                start_ms: ms(sp.start_ns.saturating_sub(t0)),
                duration_ms: ms(sp.end_ns.saturating_sub(sp.start_ns)),
                error: sp.error,
                attributes: sp.attributes.iter().cloned().collect(),
            })
            .collect();
        spans.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        Some(TraceDetail { summary: s, spans })
    }
}

/// One trace in the list (`GET /api/traces`).
#[derive(Clone, Debug, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's service and name (the earliest span without a parent in the trace).
    pub root_service: String,
    pub root_name: String,
    pub start_unix_ms: f64,
    pub duration_ms: f64,
    pub spans: usize,
    /// The distinct services (workloads) with spans in it, in order of their first span.
    pub services: Vec<String>,
    pub errors: usize,
}

/// One span of a trace (`GET /api/traces/{id}`); times in ms from the trace's start.
#[derive(Clone, Debug, Serialize)]
pub struct SpanView {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: &'static str,
    pub service: String,
    pub start_ms: f64,
    pub duration_ms: f64,
    pub error: bool,
    pub attributes: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceDetail {
    #[serde(flatten)]
    pub summary: TraceSummary,
    pub spans: Vec<SpanView>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A trace id from its 32 hex digits.
pub fn parse_trace_id(s: &str) -> Option<TraceId> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn summary(id: &TraceId, spans: &[Span]) -> TraceSummary {
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let ids: BTreeSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent.is_none_or(|p| !ids.contains(&p)))
        .min_by_key(|s| s.start_ns);
    let mut by_start: Vec<&Span> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_ns);
    let mut services: Vec<String> = Vec::new();
    for s in by_start {
        if !services.iter().any(|x| **x == *s.service) {
            services.push(s.service.to_string());
        }
    }
    TraceSummary {
        trace_id: hex(id),
        root_service: root.map(|r| r.service.to_string()).unwrap_or_default(),
        root_name: root.map(|r| r.name.clone()).unwrap_or_default(),
        start_unix_ms: ms(start),
        duration_ms: ms(end.saturating_sub(start)),
        spans: spans.len(),
        services,
        errors: spans.iter().filter(|s| s.error).count(),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn span(trace: u8, span: u8, parent: Option<u8>, service: &str) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent: parent.map(|p| [p; 8]),
            name: format!("GET /{span}"),
            kind: "server",
            service: service.into(),
            start_ns: 1_000_000 * u64::from(span),
            end_ns: 1_000_000 * u64::from(span) + 500_000,
            error: false,
            attributes: vec![("direction".into(), "inbound".into())],
        }
    }

    #[test]
    fn traces_group_spans_and_name_their_root_and_services() {
        let mut s = Store::default();
        s.insert(vec![
            span(1, 2, Some(1), "frontend"),
            span(1, 1, None, "load"),
            span(1, 3, Some(2), "backend-v1"),
            span(2, 1, None, "load"),
        ]);
        let list = s.list(10, None);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].trace_id, hex(&[2; 16]), "newest first");
        let t = &list[1];
        assert_eq!(t.root_service, "load");
        assert_eq!(t.services, ["load", "frontend", "backend-v1"]);
        assert_eq!(t.spans, 3);
        assert_eq!(t.duration_ms, 2.5);
        assert_eq!(s.list(10, Some("backend-v1")).len(), 1);
        let d = s.get(&[1; 16]).unwrap();
        assert_eq!(d.spans[1].parent_span_id.as_deref(), Some(&*hex(&[1; 8])));
        assert_eq!(d.spans[2].start_ms, 2.0);
        assert_eq!(parse_trace_id(&hex(&[1; 16])), Some([1; 16]));
        assert_eq!(parse_trace_id("zz"), None);
        assert_eq!(s.counts().collected, 2);
        assert_eq!(s.counts().services, ["backend-v1", "frontend", "load"]);
    }

    #[test]
    fn the_store_keeps_the_newest_thousand_traces_and_bounded_traces() {
        let mut s = Store::default();
        for i in 0..1500u32 {
            let mut sp = span(0, 1, None, "load");
            sp.trace_id[..4].copy_from_slice(&i.to_be_bytes());
            s.insert(vec![sp]);
        }
        let c = s.counts();
        assert_eq!((c.collected, c.stored), (1500, MAX_TRACES));
        let newest = s.list(1, None);
        assert_eq!(&newest[0].trace_id[..8], "000005db");
        // One trace with too many spans keeps its first MAX_SPANS_PER_TRACE.
        s.insert((0..600u32).map(|_| span(9, 1, None, "x")).collect());
        assert_eq!(s.get(&[9; 16]).unwrap().spans.len(), MAX_SPANS_PER_TRACE);
        assert_eq!(s.counts().spans_dropped, 88);
        // Big spans: the byte bound evicts old traces.
        let mut s = Store::default();
        for i in 0..60u32 {
            let spans = (0..100u8)
                .map(|j| {
                    let mut sp = span(0, j, None, "load");
                    sp.trace_id[..4].copy_from_slice(&i.to_be_bytes());
                    sp.attributes = (0..MAX_ATTRIBUTES)
                        .map(|k| (format!("k{k}"), "v".repeat(MAX_STRING)))
                        .collect();
                    sp
                })
                .collect();
            s.insert(spans);
        }
        assert!(s.counts().bytes <= MAX_BYTES);
        let stored = s.counts().stored;
        assert!((30..60).contains(&stored), "{stored}");
        assert_eq!(cut("é".repeat(200)).len(), 256);
    }
}
