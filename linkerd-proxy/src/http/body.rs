//! The one body type the proxy serves and sends: a streamed upstream body or a small body the
//! proxy wrote itself. An enum rather than a boxed trait object, so the hot path allocates
//! nothing for it. A streamed body can carry a [`Recorder`] that reports the response to metrics
//! when its stream ends, with the gRPC status from the trailers.

use super::{h1, h2};
use crate::metrics::{HttpStats, ResponseClass};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};
use tokio::time::Instant;

pub(crate) use crate::BoxError;

#[derive(Debug)]
pub enum ProxyBody {
    Stream {
        body: Incoming,
        recorder: Option<Recorder>,
    },
    /// A response read by the proxy's own HTTP/1 client.
    H1 {
        body: h1::RecvBody<ProxyBody>,
        recorder: Option<Recorder>,
    },
    /// A response read by the proxy's HTTP/2 client.
    H2 {
        body: h2::RecvBody,
        recorder: Option<Recorder>,
    },
    Full(Option<Bytes>),
    /// A request body kept for a retry (routes that retry).
    Replay(ReplayBody),
}

/// Records a response once, when its body ends (or is dropped before it ends).
#[derive(Debug)]
pub struct Recorder {
    pub stats: Arc<HttpStats>,
    pub status: u16,
    /// 16 bits, so the recorder (in every response body, moved several times per request)
    /// stays small; a status beyond that is `UNKNOWN` (2).
    pub grpc_status: Option<u16>,
    pub start: Instant,
    /// `/tap`, the trace span, the access log: set only when one of them watches.
    pub(crate) observe: Option<Box<super::observe::Observe>>,
    /// Released when the response ends: the request's place in flight and on its connection
    /// (the header-read timeout waits for the next head only after it).
    pub held: super::inflight::Held,
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

    /// Reports the response this body carries to `recorder` when it ends (an upstream body;
    /// other bodies have nothing to report).
    pub fn with_recorder(mut self, rec: Recorder) -> Self {
        if let ProxyBody::Stream { recorder, .. }
        | ProxyBody::H1 { recorder, .. }
        | ProxyBody::H2 { recorder, .. } = &mut self
        {
            *recorder = Some(rec);
        }
        self
    }
}

/// A request body that can be sent again: the first attempt streams it from the client while
/// keeping a copy of each chunk (reference-counted, not copied) up to a cap; a retry replays
/// the copy, then goes on reading from the client where the previous attempt stopped. Attempts
/// are sequential: a newer attempt's body makes an older one's end.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<ReplayState>>,
    generation: u64,
    /// The next kept chunk this attempt sends.
    pos: usize,
    trailers_sent: bool,
}

#[derive(Debug)]
struct ReplayState {
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    size: usize,
    cap: usize,
    /// More than `cap` bytes (or a read error): no longer replayable.
    spoiled: bool,
    generation: u64,
    hint: SizeHint,
}

impl ReplayBody {
    /// Keeps up to `cap` bytes of `source` for replay.
    pub fn new(source: Incoming, cap: usize) -> Self {
        let hint = source.size_hint();
        Self {
            shared: Arc::new(Mutex::new(ReplayState {
                source: Some(source),
                chunks: Vec::new(),
                trailers: None,
                size: 0,
                cap,
                spoiled: false,
                generation: 0,
                hint,
            })),
            generation: 0,
            pos: 0,
            trailers_sent: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        crate::lock(&self.shared)
    }

    /// A handle that makes the bodies of later attempts.
    pub fn handle(&self) -> ReplayHandle {
        ReplayHandle(self.shared.clone())
    }
}

/// Makes the body of each retry of one request.
#[derive(Debug)]
pub struct ReplayHandle(Arc<Mutex<ReplayState>>);

impl ReplayHandle {
    /// The body for the next attempt, or `None` when what was already sent was not kept.
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut st = crate::lock(&self.0);
        if st.spoiled {
            return None;
        }
        st.generation += 1;
        Some(ReplayBody {
            shared: self.0.clone(),
            generation: st.generation,
            pos: 0,
            trailers_sent: false,
        })
    }
}

impl ReplayBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let shared = self.shared.clone();
        let mut st = crate::lock(&shared);
        if st.generation != self.generation {
            // A newer attempt owns the body now.
            return Poll::Ready(None);
        }
        if self.pos < st.chunks.len() {
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(st.chunks[self.pos - 1].clone()))));
        }
        let Some(source) = st.source.as_mut() else {
            return match (&st.trailers, self.trailers_sent) {
                (Some(t), false) => {
                    self.trailers_sent = true;
                    Poll::Ready(Some(Ok(Frame::trailers(t.clone()))))
                }
                _ => Poll::Ready(None),
            };
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    st.size += data.len();
                    if st.size > st.cap {
                        st.spoiled = true;
                        st.chunks = Vec::new();
                    } else if !st.spoiled {
                        st.chunks.push(data.clone());
                        self.pos = st.chunks.len();
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                st.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.spoiled = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.lock();
        st.generation == self.generation
            && self.pos >= st.chunks.len()
            && st.source.as_ref().is_none_or(|s| s.is_end_stream())
            && (st.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().hint
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Replay(r) => r.poll_frame(cx).map_err(Into::into),
            ProxyBody::Stream { body, recorder } => {
                observe(Pin::new(body).poll_frame(cx), recorder).map_err(Into::into)
            }
            ProxyBody::H1 { body, recorder } => {
                observe(Pin::new(body).poll_frame(cx), recorder).map_err(Into::into)
            }
            ProxyBody::H2 { body, recorder } => {
                observe(Pin::new(body).poll_frame(cx), recorder).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Replay(r) => r.is_end_stream(),
            ProxyBody::Stream { body, .. } => body.is_end_stream(),
            ProxyBody::H1 { body, .. } => body.is_end_stream(),
            ProxyBody::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Replay(r) => r.size_hint(),
            ProxyBody::Stream { body, .. } => body.size_hint(),
            ProxyBody::H1 { body, .. } => body.size_hint(),
            ProxyBody::H2 { body, .. } => body.size_hint(),
        }
    }
}

/// Passes an upstream body's frame on, reporting the response to its recorder at the end of
/// the stream (with the gRPC status from the trailers) or at an error.
fn observe<E>(
    res: Poll<Option<Result<Frame<Bytes>, E>>>,
    recorder: &mut Option<Recorder>,
) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    match &res {
        Poll::Ready(Some(Ok(frame))) => {
            if let (Some(t), Some(r)) = (frame.trailers_ref(), recorder.as_mut())
                && let Some(g) = grpc_status(t)
            {
                r.grpc_status = Some(narrow_grpc(g));
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

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let recorder = match self {
            ProxyBody::Stream { recorder, .. }
            | ProxyBody::H1 { recorder, .. }
            | ProxyBody::H2 { recorder, .. } => recorder,
            _ => return,
        };
        if let Some(r) = recorder.take() {
            // Dropped before its end: the client stopped reading (or went away). As in Linkerd,
            // that is not the response's failure: it is classified by its status (and gRPC
            // status, if the trailers came), as if the stream had ended there.
            r.record(None);
        }
    }
}

impl Recorder {
    pub fn record(self, error: Option<&'static str>) {
        let elapsed = self.start.elapsed();
        self.stats.response(
            ResponseClass {
                status: Some(self.status),
                grpc_status: self.grpc_status.map(u32::from),
                error,
            },
            elapsed,
        );
        if let Some(o) = self.observe {
            o.finish(self.status, self.grpc_status.map(u32::from), error, elapsed);
        }
    }
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A gRPC status in [`Recorder`]'s 16 bits.
pub(crate) fn narrow_grpc(code: u32) -> u16 {
    u16::try_from(code).unwrap_or(2)
}

pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
