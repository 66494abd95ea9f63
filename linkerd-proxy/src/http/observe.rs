//! Who watches a request besides the metrics: `/tap`, the request's trace span, the access
//! log. Each is optional and off by default; a request none of them watches carries `None`
//! (one pointer) through the exchange and its response body, so the common case costs one
//! branch. When any is on, the three share one allocation.

use crate::{
    access_log::{AccessLog, Entry},
    tap::Pending,
    trace::{Span, Tracer},
};
use http::HeaderMap;
use std::{sync::Arc, time::Duration};

#[derive(Debug, Default)]
pub(crate) struct Observe {
    /// Set only while someone watches `/tap`.
    pub tap: Option<Pending>,
    /// The request is traced (sampled).
    pub span: Option<(Arc<Tracer>, Span)>,
    /// Inbound with the access log on; written at the response headers.
    pub access: Option<(Arc<AccessLog>, Box<Entry>)>,
}

impl Observe {
    /// `None` when nobody watches.
    pub(crate) fn boxed(self) -> Option<Box<Self>> {
        (self.tap.is_some() || self.span.is_some() || self.access.is_some()).then(|| Box::new(self))
    }

    /// The response headers are going out (or the proxy answered with `status`).
    pub(crate) fn headers(&mut self, status: u16, headers: Option<&HeaderMap>) {
        if let Some((log, entry)) = self.access.take() {
            log.log(entry, status, headers);
        }
    }

    /// The response has ended (its body, or the proxy's own answer).
    pub(crate) fn finish(
        self: Box<Self>,
        status: u16,
        grpc_status: Option<u32>,
        error: Option<&'static str>,
        latency: Duration,
    ) {
        let Observe { tap, span, access } = *self;
        if let Some(t) = tap {
            t.finish(Some(status), grpc_status, error, latency);
        }
        if let Some((tracer, mut span)) = span {
            span.end(status, grpc_status, error);
            tracer.finish(span);
        }
        // A response that never had headers written (dropped early): log it now.
        if let Some((log, entry)) = access {
            log.log(entry, status, None);
        }
    }
}
