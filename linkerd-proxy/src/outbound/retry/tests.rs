use super::*;
use crate::{backoff::Backoff, outbound::policy::budget::Budget};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

/// A request as hyper's server hands it over (`Incoming` has no other constructor): sent by
/// hyper's client over an in-memory connection, taken by hyper's server.
async fn incoming(body: &'static [u8]) -> Request<Incoming> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req);
                }
                // Never answered: the test owns the request now.
                std::future::pending::<Result<Response<Full<Bytes>>, std::convert::Infallible>>()
                    .await
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server_io), svc)
            .await;
    });
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);
    tokio::spawn(async move {
        let req = Request::post("http://app/retry")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let _ = sender.send_request(req).await;
    });
    rx.await.unwrap()
}

fn retry(max_retries: u32, budget: Budget) -> Retry {
    Retry {
        max_retries,
        max_request_bytes: 64 * 1024,
        statuses: vec![(500, 599)],
        grpc: vec![],
        timeout: None,
        backoff: Backoff {
            min: Duration::from_millis(25),
            max: Duration::from_millis(250),
            jitter: 0.0,
        },
        budget,
    }
}

fn plenty() -> Budget {
    Budget::new(1.0, 100, Duration::from_secs(10))
}

/// Answers from a script; records when each attempt was sent and the body it carried.
struct Script {
    outcomes: VecDeque<Outcome>,
    sent: Vec<(Instant, Bytes)>,
    /// How many more endpoints `next` finds.
    endpoints: u32,
}

impl Script {
    fn new(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        Self {
            outcomes: outcomes.into_iter().collect(),
            sent: Vec::new(),
            endpoints: u32::MAX,
        }
    }
}

fn status(s: u16) -> Outcome {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::from_u16(s).unwrap();
    Ok(r)
}

impl Attempts for Script {
    async fn send(&mut self, req: Request<ProxyBody>) -> Outcome {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        self.sent.push((Instant::now(), body));
        self.outcomes
            .pop_front()
            .expect("an outcome for every attempt")
    }

    fn next(&mut self) -> impl Future<Output = bool> + Send {
        let found = self.endpoints > 0;
        self.endpoints = self.endpoints.saturating_sub(1);
        async move { found }
    }
}

fn codes(o: &Outcome) -> u16 {
    o.as_ref().map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retries_after_the_backoff_with_the_same_body_until_a_success() {
    let counters = RouteCounters::default();
    let r = retry(3, plenty());
    let mut s = Script::new([status(503), status(502), status(200)]);
    let start = Instant::now();
    let out = with_retries(&r, &counters, false, incoming(b"payload").await, &mut s).await;
    assert_eq!(codes(&out), 200);
    let at: Vec<Duration> = s.sent.iter().map(|(t, _)| *t - start).collect();
    // 25 ms, then 50 ms, of backoff between the attempts (no jitter).
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_millis(25),
            Duration::from_millis(75)
        ]
    );
    assert!(s.sent.iter().all(|(_, b)| b == "payload"), "{:?}", s.sent);
    assert_eq!(
        counters.retries.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_limit_ends_retries_and_is_counted() {
    let counters = RouteCounters::default();
    let r = retry(1, plenty());
    let mut s = Script::new([status(503), status(503)]);
    let out = with_retries(&r, &counters, false, incoming(b"x").await, &mut s).await;
    assert_eq!(codes(&out), 503);
    assert_eq!(s.sent.len(), 2);
    let exceeded = counters
        .retry_limit_exceeded
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(exceeded, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_spent_budget_stops_the_retry() {
    let counters = RouteCounters::default();
    let r = retry(3, Budget::new(0.0, 0, Duration::from_secs(10)));
    let mut s = Script::new([status(503)]);
    let out = with_retries(&r, &counters, false, incoming(b"x").await, &mut s).await;
    assert_eq!(codes(&out), 503);
    assert_eq!(s.sent.len(), 1);
    let overflow = counters
        .retry_overflow
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(overflow, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn connect_failures_and_timeouts_are_retried_other_errors_and_4xx_are_not() {
    let counters = RouteCounters::default();
    let r = retry(3, plenty());
    let timeout = Err(ProxyError::ResponseTimeout(Duration::from_secs(1)));
    let mut s = Script::new([timeout, status(404)]);
    let out = with_retries(&r, &counters, false, incoming(b"x").await, &mut s).await;
    assert_eq!(codes(&out), 404);
    assert_eq!(s.sent.len(), 2);

    let mut s = Script::new([Err(ProxyError::NoRoute)]);
    let out = with_retries(&r, &counters, false, incoming(b"x").await, &mut s).await;
    assert!(matches!(out, Err(ProxyError::NoRoute)));
    assert_eq!(s.sent.len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_other_endpoint_for_the_request_ends_retries() {
    let counters = RouteCounters::default();
    let r = retry(3, plenty());
    let mut s = Script::new([status(503)]);
    s.endpoints = 0;
    let out = with_retries(&r, &counters, false, incoming(b"x").await, &mut s).await;
    assert_eq!(codes(&out), 503);
    assert_eq!(s.sent.len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_body_larger_than_the_replay_buffer_is_sent_once() {
    let counters = RouteCounters::default();
    let mut r = retry(3, plenty());
    r.max_request_bytes = 4;
    let mut s = Script::new([status(503)]);
    let out = with_retries(&r, &counters, false, incoming(b"too long").await, &mut s).await;
    assert_eq!(codes(&out), 503);
    assert_eq!(s.sent.len(), 1);
    assert_eq!(s.sent[0].1, "too long");
}
