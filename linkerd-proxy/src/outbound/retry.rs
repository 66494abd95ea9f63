//! Retries, apart from sending: a request is sent again on a retryable response or error, while
//! the route's retry limit, its budget and the body's replay buffer allow, after the route's
//! backoff. What sends an attempt (and picks its endpoint) is an [`Attempts`], so the loop is
//! tested with a clock that only moves when told.

use super::policy::Retry;
use crate::{
    http::{ProxyBody, ProxyError, body::ReplayBody, body::grpc_status},
    metrics::RouteCounters,
};
use http::{Request, Response};
use hyper::body::Incoming;

pub(crate) type Outcome = Result<Response<ProxyBody>, ProxyError>;

/// Sends the attempts of one request.
pub(crate) trait Attempts: Send {
    /// Sends one attempt.
    fn send(&mut self, req: Request<ProxyBody>) -> impl Future<Output = Outcome> + Send;

    /// Readies the next attempt's endpoint; `false` when there is none this request suits.
    fn next(&mut self) -> impl Future<Output = bool> + Send;
}

/// Whether an outcome is worth another attempt: a retryable status (or a trailers-only gRPC
/// status, for gRPC), a connection that could not be made, or an attempt that timed out.
pub(crate) fn retryable(retry: &Retry, grpc: bool, outcome: &Outcome) -> bool {
    match outcome {
        Ok(r) => retry.retryable(r.status(), grpc.then(|| grpc_status(r.headers())).flatten()),
        Err(e) => e.is_connect() || matches!(e, ProxyError::ResponseTimeout(_)),
    }
}

/// Sends `req` with `retry`'s retries. The body is kept (its chunks shared, not copied) up to
/// `max_request_bytes` as it streams to the first attempt; a larger body is sent once.
pub(crate) async fn with_retries<A: Attempts>(
    retry: &Retry,
    counters: &RouteCounters,
    grpc: bool,
    req: Request<Incoming>,
    attempts: &mut A,
) -> Outcome {
    let (parts, body) = req.into_parts();
    if http_body::Body::size_hint(&body).lower() > retry.max_request_bytes as u64 {
        // Too large to keep: one attempt.
        RouteCounters::inc(&counters.retry_overflow);
        let req = Request::from_parts(parts, ProxyBody::stream(body, None));
        return attempts.send(req).await;
    }
    let body = ReplayBody::new(body, retry.max_request_bytes);
    let template = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.version,
        parts.headers.clone(),
    );
    let handle = body.handle();
    let mut req = Request::from_parts(parts, ProxyBody::Replay(body));
    let mut retries = 0u32;
    loop {
        let outcome = attempts.send(req).await;
        if !retryable(retry, grpc, &outcome) {
            if retries > 0 {
                RouteCounters::inc(&counters.retry_successes);
            }
            return outcome;
        }
        if retries >= retry.max_retries {
            RouteCounters::inc(&counters.retry_limit_exceeded);
            return outcome;
        }
        let body = match handle.replay() {
            Some(b) if retry.budget.withdraw() => b,
            _ => {
                RouteCounters::inc(&counters.retry_overflow);
                return outcome;
            }
        };
        tokio::time::sleep(retry.backoff.delay(retries)).await;
        if !attempts.next().await {
            return outcome;
        }
        drop(outcome);
        retries += 1;
        RouteCounters::inc(&counters.retries);
        let mut r = Request::new(ProxyBody::Replay(body));
        *r.method_mut() = template.0.clone();
        *r.uri_mut() = template.1.clone();
        *r.version_mut() = template.2;
        *r.headers_mut() = template.3.clone();
        req = r;
    }
}

#[cfg(test)]
mod tests;
