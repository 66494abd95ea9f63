//! The exporter task: spans from the request path, batched, sent to the collector with
//! `TraceService/Export` (OTLP/gRPC, unary calls).
//!
//! The exporter sleeps until a batch is full (`max_batch` spans queued: the request path
//! notifies it) or its flush interval has passed, then sends what is queued in batches of up
//! to `max_batch` (encoded by `otlp.rs`); a span never wakes it by itself. A failed or timed-out
//! call drops its batch (counted) and backs off (100 ms doubling to 10 s) before the next one;
//! meanwhile spans wait in the bounded channel, and beyond its capacity they are dropped where
//! they were made. The channel (gRPC over the control-plane client) reconnects by itself.

use super::{
    Span, TraceConfig, TraceStats,
    otlp::{BatchEncoder, RawCodec},
};
use crate::{backoff::Backoff, metrics::Metrics, metrics::Series};
use std::sync::{Arc, atomic::Ordering};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::debug;

pub(super) fn register_metrics(metrics: &Metrics, stats: &Arc<TraceStats>) {
    type Read = fn(&TraceStats) -> u64;
    /// A family's name, help, and its series: labels and where the value is read.
    type Family = (&'static str, &'static str, &'static [(&'static str, Read)]);
    let families: [Family; 3] = [
        (
            "proxy_trace_spans_exported_total",
            "Spans the trace collector accepted.",
            &[("", |s| s.exported.load(Ordering::Relaxed))],
        ),
        (
            "proxy_trace_export_requests_total",
            "Export calls to the trace collector, by result.",
            &[
                ("result=\"ok\"", |s| s.requests_ok.load(Ordering::Relaxed)),
                ("result=\"error\"", |s| {
                    s.requests_failed.load(Ordering::Relaxed)
                }),
            ],
        ),
        (
            "proxy_trace_spans_dropped_total",
            "Spans not exported: the buffer was full, or their export call failed.",
            &[
                ("reason=\"buffer_full\"", |s| {
                    s.dropped_full.load(Ordering::Relaxed)
                }),
                ("reason=\"export_failed\"", |s| {
                    s.dropped_failed.load(Ordering::Relaxed)
                }),
            ],
        ),
    ];
    let series = families
        .into_iter()
        .flat_map(|(name, help, series)| series.iter().map(move |(l, r)| (name, help, *l, *r)));
    for (name, help, labels, read) in series {
        let s = stats.clone();
        metrics.register_series(Series {
            name,
            help,
            kind: "counter",
            labels: labels.to_string(),
            value: Box::new(move || read(&s)),
        });
    }
}

pub(super) async fn run(
    config: TraceConfig,
    channel: Channel,
    mut rx: mpsc::Receiver<Span>,
    full: Arc<tokio::sync::Notify>,
    stats: Arc<TraceStats>,
) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let mut encoder =
        BatchEncoder::new(&config.resource, "linkerd-proxy", env!("CARGO_PKG_VERSION"));
    let mut failures = 0u32;
    let mut queued = Vec::new();
    loop {
        if rx.is_empty() {
            if rx.is_closed() {
                return;
            }
            tokio::select! {
                _ = full.notified() => {}
                _ = tokio::time::sleep(config.flush_interval) => {}
            }
            continue;
        }
        if rx.recv_many(&mut queued, config.max_batch).await == 0 {
            return;
        }
        let batch = std::mem::take(&mut queued);
        let n = batch.len() as u64;
        let req = encoder.request(&batch);
        drop(batch);
        let export = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(tonic::Request::new(req), path.clone(), RawCodec)
                .await
        };
        match tokio::time::timeout(config.export_timeout, export).await {
            Ok(Ok(rsp)) => {
                failures = 0;
                let rejected = rsp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(n);
                stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                stats.exported.fetch_add(n - rejected, Ordering::Relaxed);
                stats.dropped_failed.fetch_add(rejected, Ordering::Relaxed);
            }
            outcome => {
                match outcome {
                    Ok(Err(status)) => debug!(%status, spans = n, "span export failed"),
                    _ => debug!(spans = n, "span export timed out"),
                }
                stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                stats.dropped_failed.fetch_add(n, Ordering::Relaxed);
                tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}
