//! The one body type the proxy serves and sends: a streamed upstream body or a small body the
//! proxy wrote itself. An enum rather than a boxed trait object, so the hot path allocates
//! nothing for it. A streamed body can carry a [`Recorder`] that reports the response to metrics
//! when its stream ends, with the gRPC status from the trailers.

use crate::metrics::{HttpStats, ResponseClass};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;

#[derive(Debug)]
pub enum ProxyBody {
    Stream {
        body: Incoming,
        recorder: Option<Recorder>,
    },
    Full(Option<Bytes>),
}

/// Records a response once, when its body ends (or is dropped before it ends).
#[derive(Debug)]
pub struct Recorder {
    pub stats: Arc<HttpStats>,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub start: Instant,
    /// Set only while someone watches `/tap`.
    pub tap: Option<Box<crate::tap::Pending>>,
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn stream(body: Incoming, recorder: Option<Recorder>) -> Self {
        ProxyBody::Stream { body, recorder }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream { body, recorder } => {
                let res = Pin::new(body).poll_frame(cx);
                match &res {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(t), Some(r)) = (frame.trailers_ref(), recorder.as_mut())
                            && let Some(g) = grpc_status(t)
                        {
                            r.grpc_status = Some(g);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(r) = recorder.take() {
                            r.record(None);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(r) = recorder.take() {
                            r.record(Some("stream"));
                        }
                    }
                    Poll::Pending => {}
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Stream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Stream { body, recorder } = self
            && let Some(r) = recorder.take()
        {
            // Dropped with data still to come: the client went away mid-stream.
            let error = (!body.is_end_stream()).then_some("stream_cancelled");
            r.record(error);
        }
    }
}

impl Recorder {
    pub fn record(self, error: Option<&'static str>) {
        let elapsed = self.start.elapsed();
        self.stats.response(
            ResponseClass {
                status: Some(self.status),
                grpc_status: self.grpc_status,
                error,
            },
            elapsed,
        );
        if let Some(t) = self.tap {
            t.finish(Some(self.status), self.grpc_status, error, elapsed);
        }
    }
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
