//! The OTLP/gRPC trace receiver embedded in `mesh up`
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`): the sidecars export their
//! spans here and the dashboard shows them.
//!
//! Hostile input is refused, never stored: a request larger than [`MAX_MESSAGE`] bytes or
//! malformed protobuf fails in decoding (tonic's status), one with more than
//! [`MAX_SPANS_PER_EXPORT`] spans is `RESOURCE_EXHAUSTED`, and a span with an id of the wrong
//! length or all zeros is `INVALID_ARGUMENT` (nothing of that request is kept). What is kept is
//! bounded by the store (`traces.rs`).

use super::traces::{self, MAX_ATTRIBUTES, Span, SpanId, Store, TraceId, cut};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::status::StatusCode,
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tonic::{Request, Response, Status};

/// OTLP/gRPC's port, on the control plane's address of `mesh up`.
pub const PORT: u16 = 4317;
/// The largest export request accepted (encoded).
pub const MAX_MESSAGE: usize = 4 << 20;
/// The most spans one export request may carry.
pub const MAX_SPANS_PER_EXPORT: usize = 8192;
/// Export requests handled at once per connection.
const MAX_STREAMS: u32 = 16;

#[derive(Clone, Debug)]
pub struct Receiver {
    pub store: Arc<Mutex<Store>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = convert(request.into_inner())?;
        match self.store.lock() {
            Ok(mut store) => store.insert(spans),
            Err(_) => return Err(Status::internal("the trace store is unusable")),
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves the receiver on `listener` until the process ends.
pub fn serve(listener: tokio::net::TcpListener, store: Arc<Mutex<Store>>) {
    let svc = TraceServiceServer::new(Receiver { store }).max_decoding_message_size(MAX_MESSAGE);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS)
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            crate::out::errln!("mesh up: the trace receiver stopped: {e}");
        }
    });
}

/// Binds the receiver's address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for traces"))
}

/// The request's spans as the store keeps them, or why it is refused.
pub fn convert(req: ExportTraceServiceRequest) -> Result<Vec<Span>, Status> {
    let total: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if total > MAX_SPANS_PER_EXPORT {
        return Err(Status::resource_exhausted(format!(
            "{total} spans in one request; at most {MAX_SPANS_PER_EXPORT}"
        )));
    }
    let mut out = Vec::with_capacity(total);
    for rs in req.resource_spans {
        let service: Arc<str> = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| cut(text(v)))
            .unwrap_or_else(|| "unknown_service".into())
            .into();
        for ss in rs.scope_spans {
            for sp in ss.spans {
                let n = out.len();
                let trace_id: TraceId = id(&sp.trace_id)
                    .ok_or_else(|| bad(n, "trace_id must be 16 bytes, not all zero"))?;
                let span_id: SpanId = id(&sp.span_id)
                    .ok_or_else(|| bad(n, "span_id must be 8 bytes, not all zero"))?;
                let parent = if sp.parent_span_id.is_empty() {
                    None
                } else {
                    Some(id::<8>(&sp.parent_span_id).ok_or_else(|| {
                        bad(n, "parent_span_id must be empty or 8 bytes, not all zero")
                    })?)
                };
                let error = sp
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == StatusCode::Error as i32);
                out.push(Span {
                    trace_id,
                    span_id,
                    parent,
                    name: cut(sp.name),
                    kind: kind(sp.kind),
                    service: service.clone(),
                    start_ns: sp.start_time_unix_nano,
                    end_ns: sp.end_time_unix_nano.max(sp.start_time_unix_nano),
                    error,
                    attributes: attributes(sp.attributes),
                });
            }
        }
    }
    Ok(out)
}

fn bad(n: usize, what: &str) -> Status {
    Status::invalid_argument(format!("span {n}: {what}"))
}

fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    (id != [0; N]).then_some(id)
}

fn kind(k: i32) -> &'static str {
    match k {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn attributes(kvs: Vec<KeyValue>) -> Vec<(String, String)> {
    kvs.into_iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| {
            let v = kv.value.as_ref().map(text).unwrap_or_default();
            (cut(kv.key), cut(v))
        })
        .collect()
}

/// A value as text (arrays and maps are shown by their size only: spans from the proxy carry
/// none).
fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => cut(s.clone()),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => format!("[{} values]", a.values.len()),
        Some(Value::KvlistValue(l)) => format!("{{{} values}}", l.values.len()),
        Some(Value::BytesValue(b)) => traces::hex(b.get(..64).unwrap_or(b)),
        Some(Value::StringValueStrindex(_)) | None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::trace_service_client::TraceServiceClient,
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan},
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    pub fn request(service: &str, spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    pub fn otlp_span(trace: u8, span: u8, parent: Option<u8>) -> OtlpSpan {
        OtlpSpan {
            trace_id: vec![trace; 16],
            span_id: vec![span; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: "GET".into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000_000,
            attributes: vec![kv("direction", "inbound"), kv("url.path", "/")],
            ..Default::default()
        }
    }

    async fn start() -> (SocketAddr, Arc<Mutex<Store>>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        serve(listener, store.clone());
        (addr, store)
    }

    #[tokio::test]
    async fn exported_spans_are_stored_and_hostile_requests_refused() {
        let (addr, store) = start().await;
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        client
            .export(request("frontend", vec![otlp_span(1, 2, Some(1))]))
            .await
            .unwrap();
        {
            let s = store.lock().unwrap();
            let t = s.get(&[1; 16]).unwrap();
            assert_eq!(t.spans[0].service, "frontend");
            assert_eq!(t.spans[0].kind, "server");
            assert_eq!(t.spans[0].attributes["url.path"], "/");
        }
        // Bogus ids: refused, nothing kept.
        for bogus in [
            OtlpSpan {
                trace_id: vec![0; 16],
                ..otlp_span(3, 1, None)
            },
            OtlpSpan {
                trace_id: vec![3; 5],
                ..otlp_span(3, 1, None)
            },
            OtlpSpan {
                span_id: vec![],
                ..otlp_span(3, 1, None)
            },
            OtlpSpan {
                parent_span_id: vec![1; 9],
                ..otlp_span(3, 1, None)
            },
        ] {
            let e = client
                .export(request("x", vec![otlp_span(4, 1, None), bogus]))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
        // Too many spans in one request.
        let many: Vec<OtlpSpan> = (0..MAX_SPANS_PER_EXPORT + 1)
            .map(|_| otlp_span(5, 1, None))
            .collect();
        let e = client.export(request("x", many)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        // Too large a request: refused while decoding.
        let mut huge = otlp_span(6, 1, None);
        huge.name = "x".repeat(MAX_MESSAGE + 1);
        let e = client.export(request("x", vec![huge])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
        // A hostile name and attributes are cut to size.
        let mut long = otlp_span(7, 1, None);
        long.name = "n".repeat(100_000);
        long.attributes = (0..1000).map(|i| kv(&format!("k{i}"), "v")).collect();
        client.export(request("x", vec![long])).await.unwrap();
        {
            let s = store.lock().unwrap();
            assert!(s.get(&[3; 16]).is_none() && s.get(&[4; 16]).is_none());
            assert!(s.get(&[5; 16]).is_none() && s.get(&[6; 16]).is_none());
            let t = s.get(&[7; 16]).unwrap();
            assert_eq!(t.spans[0].name.len(), traces::MAX_STRING);
            assert_eq!(t.spans[0].attributes.len(), MAX_ATTRIBUTES);
        }
        // Malformed protobuf, sent as raw gRPC frames over HTTP/2.
        let status = raw_grpc(addr, &[0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
        assert!(
            status.as_deref().is_some_and(|s| s != "0"),
            "malformed protobuf: grpc-status {status:?}"
        );
        assert_eq!(store.lock().unwrap().counts().collected, 2);
    }

    /// Posts `body` to Export with hyper's HTTP/2 client: the `grpc-status` answered.
    async fn raw_grpc(addr: SocketAddr, body: &'static [u8]) -> Option<String> {
        use http_body_util::{BodyExt, Full};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!(
            "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from_static(body)))
        .unwrap();
        let rsp = tx.send_request(req).await.unwrap();
        let head = rsp.headers().get("grpc-status").cloned();
        let collected = rsp.into_body().collect().await.unwrap();
        head.or_else(|| collected.trailers()?.get("grpc-status").cloned())
            .and_then(|v| v.to_str().ok().map(str::to_string))
    }
}
