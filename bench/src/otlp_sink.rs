//! `bench otlp-sink`: an OTLP/gRPC trace receiver that decodes every export and keeps only
//! counts, so that measuring what sampling costs the proxies is not a measurement of a
//! collector sharing their CPUs (a Python receiver used a quarter of this machine for the
//! same spans). On SIGTERM or SIGINT it prints one JSON object: exports, spans, bytes and its
//! own CPU time, so a run can check every span arrived and say what the sink cost.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message as _;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Counts {
    exports: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Clone, Debug, Default)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.exports.fetch_add(1, Relaxed);
        self.0.spans.fetch_add(spans as u64, Relaxed);
        self.0
            .bytes
            .fetch_add(request.encoded_len() as u64, Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves until SIGTERM or SIGINT, then prints the counts.
pub async fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let sink = Sink::default();
    let counts = sink.0.clone();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
    serve.await.context("serving OTLP")?;
    let cpu = crate::procfs::cpu_seconds(std::process::id()).ok();
    println!(
        "{}",
        json!({
            "exports": counts.exports.load(Relaxed),
            "spans": counts.spans.load(Relaxed),
            "bytes": counts.bytes.load(Relaxed),
            "cpu_seconds": cpu,
        })
    );
    Ok(())
}
