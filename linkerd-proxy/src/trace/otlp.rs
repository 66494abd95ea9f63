//! OTLP's protobuf encoding of a batch of spans, written straight from the proxy's spans, and
//! the codec that sends those bytes as `TraceService/Export`'s request.
//!
//! Building `opentelemetry-proto`'s messages first cost two allocations per attribute, and
//! prost's encoding of the nested messages measured each attribute's length once per level of
//! nesting; written directly, a span costs one pass over its attributes and one copy. The tests
//! decode the bytes with `opentelemetry-proto`'s types and compare them with those messages.

use super::span::{Attr, Span};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const I32: u64 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

/// A length-delimited field (string, bytes or an encoded message).
fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A `KeyValue` (`key` = 1, `value` = 2: `AnyValue`, `string_value` = 1, `int_value` = 3) as
/// field `field` of its message, lengths computed rather than encoded twice.
pub(super) fn attribute(out: &mut Vec<u8>, field: u64, key: &str, value: Attr<'_>) {
    let any_len = match value {
        Attr::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Attr::Int(i) => 1 + varint_len(i as u64),
    };
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    tag(out, field, LEN);
    varint(out, kv_len as u64);
    bytes(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any_len as u64);
    match value {
        Attr::Str(s) => bytes(out, 1, s.as_bytes()),
        Attr::Int(i) => {
            tag(out, 3, VARINT);
            varint(out, i as u64);
        }
    }
}

/// One `Span` message's fields.
fn span(out: &mut Vec<u8>, s: &Span) {
    let ids = s.ids();
    bytes(out, 1, &ids.trace_id);
    bytes(out, 2, &ids.span_id);
    if let Some(p) = &ids.parent_id {
        bytes(out, 4, p);
    }
    let (method, route) = s.name();
    let name_len = method.len() + route.map_or(0, |r| 1 + r.len());
    tag(out, 5, LEN);
    varint(out, name_len as u64);
    out.extend_from_slice(method.as_bytes());
    if let Some(r) = route {
        out.push(b' ');
        out.extend_from_slice(r.as_bytes());
    }
    tag(out, 6, VARINT);
    varint(out, s.kind() as u64);
    let (start, end) = s.times();
    tag(out, 7, I64);
    out.extend_from_slice(&start.to_le_bytes());
    tag(out, 8, I64);
    out.extend_from_slice(&end.to_le_bytes());
    s.attributes(&mut |k, v| attribute(out, 9, k, v));
    // `Status`: `code` = 3, ERROR = 2; UNSET is the empty message.
    if s.failed() {
        bytes(out, 15, &[3 << 3, 2]);
    } else {
        bytes(out, 15, &[]);
    }
    tag(out, 16, I32);
    out.extend_from_slice(&s.flags().to_le_bytes());
}

/// Encodes messages that do not change (the resource, the scope) once.
#[derive(Debug)]
pub(super) struct BatchEncoder {
    /// `ResourceSpans.resource` (field 1), encoded.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), encoded.
    scope: Vec<u8>,
    /// One span's bytes, reused.
    scratch: Vec<u8>,
}

impl BatchEncoder {
    pub(super) fn new(
        resource: &[(String, String)],
        scope_name: &str,
        scope_version: &str,
    ) -> Self {
        let mut attrs = Vec::new();
        for (k, v) in resource {
            attribute(&mut attrs, 1, k, Attr::Str(v));
        }
        let mut r = Vec::new();
        bytes(&mut r, 1, &attrs);
        let mut sc = Vec::new();
        let mut scope = Vec::new();
        bytes(&mut scope, 1, scope_name.as_bytes());
        bytes(&mut scope, 2, scope_version.as_bytes());
        bytes(&mut sc, 1, &scope);
        Self {
            resource: r,
            scope: sc,
            scratch: Vec::new(),
        }
    }

    /// The `ExportTraceServiceRequest` of `spans`.
    pub(super) fn request(&mut self, spans: &[Span]) -> Vec<u8> {
        let mut scope_spans = self.scope.clone();
        for s in spans {
            self.scratch.clear();
            span(&mut self.scratch, s);
            bytes(&mut scope_spans, 2, &self.scratch);
        }
        let mut resource_spans = Vec::with_capacity(self.resource.len() + scope_spans.len() + 8);
        resource_spans.extend_from_slice(&self.resource);
        bytes(&mut resource_spans, 2, &scope_spans);
        let mut req = Vec::with_capacity(resource_spans.len() + 8);
        bytes(&mut req, 1, &resource_spans);
        if self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new();
        }
        req
    }
}

/// Sends already-encoded request bytes; reads the response with `opentelemetry-proto`'s type.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RawCodec;

#[derive(Debug)]
pub(super) struct RawEncoder;

#[derive(Debug)]
pub(super) struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("an invalid ExportTraceServiceResponse: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::Direction, trace::Ids};
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{InstrumentationScope, any_value::Value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans},
    };

    fn span(
        direction: Direction,
        parent: Option<[u8; 8]>,
        status: u16,
        error: Option<&'static str>,
    ) -> Span {
        let mut s = Span::for_test(Ids {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_id: parent,
            flags: 1,
            direction,
        });
        s.route = Some("users".into());
        s.peer_identity = Some("web.ns.serviceaccount.identity.linkerd.cluster.local".into());
        s.resends = 300;
        s.end(status, Some(14), error);
        s
    }

    #[test]
    fn the_encoding_decodes_to_the_crates_messages() {
        let resource = vec![
            ("service.name".to_string(), "web".to_string()),
            ("k8s.pod.name".to_string(), "é".repeat(100)),
        ];
        let mut enc = BatchEncoder::new(&resource, "linkerd-proxy", "0.1.0");
        let spans = vec![
            span(Direction::Outbound, Some([2; 8]), 200, None),
            span(Direction::Inbound, None, 503, None),
            span(Direction::Inbound, Some([3; 8]), 403, Some("unauthorized")),
        ];
        let bytes = enc.request(&spans);
        let got = ExportTraceServiceRequest::decode(&bytes[..]).expect("decodes");
        let want = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource
                        .iter()
                        .map(|(k, v)| super::super::span::kv(k, Value::StringValue(v.clone())))
                        .collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "linkerd-proxy".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(Span::into_otlp).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // The end times were taken when each span ended, so they agree too.
        assert_eq!(got, want);
        // And it is what prost itself writes.
        assert_eq!(bytes, want.encode_to_vec());
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        // A negative int64 is ten bytes, as protobuf's.
        let mut out = Vec::new();
        attribute(&mut out, 9, "k", Attr::Int(-1));
        let kv = opentelemetry_proto::tonic::common::v1::KeyValue::decode(&out[2..]).unwrap();
        assert_eq!(kv.value.unwrap().value, Some(Value::IntValue(-1)));
    }
}
