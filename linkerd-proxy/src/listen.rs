//! Listening: each listener's accept loop and its bound on open connections, and the other
//! bounds a direction sets (requests in flight, the header-read timeout), with their metrics.

use crate::{
    drain::Drain,
    http::inflight::InFlight,
    metrics::{Direction, Metrics, Series},
    transport::{self, Accepted},
};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How much one direction takes on before it sheds load.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight (from request head to the end of the response).
    pub max_in_flight: usize,
    /// Open connections on the listener.
    pub max_connections: usize,
    /// HTTP/1: from a request head's first byte to its end.
    pub header_read_timeout: Duration,
}

/// The connections a listener holds open, and its bound. At the bound a new connection is
/// closed as soon as it is accepted (counted, and logged at most every few seconds), so a flood
/// of connections costs a bounded amount of memory and the kernel's queue does not fill with
/// clients that will time out anyway.
#[derive(Debug)]
pub(crate) struct ConnLimit {
    name: &'static str,
    open: AtomicUsize,
    max: usize,
    refused: AtomicU64,
    last_log: Mutex<Option<tokio::time::Instant>>,
}

/// One open connection of a listener.
#[derive(Debug)]
pub struct ConnSlot(Arc<ConnLimit>);

impl ConnLimit {
    pub(crate) fn new(metrics: &Metrics, name: &'static str, max: usize) -> Arc<Self> {
        let limit = Arc::new(Self {
            name,
            open: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        });
        let (open, refused) = (limit.clone(), limit.clone());
        metrics.register_series(Series {
            name: "proxy_connections_open",
            help: "Connections a listener holds open.",
            kind: "gauge",
            labels: format!("listener=\"{name}\""),
            value: Box::new(move || open.open.load(Ordering::Relaxed) as u64),
        });
        metrics.register_series(Series {
            name: "proxy_connections_refused_total",
            help: "Connections closed at once because the listener held its maximum.",
            kind: "counter",
            labels: format!("listener=\"{name}\""),
            value: Box::new(move || refused.refused.load(Ordering::Relaxed)),
        });
        limit
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_ok() {
            return Some(ConnSlot(self.clone()));
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = tokio::time::Instant::now();
        let mut last = crate::lock(&self.last_log);
        if last.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(10)) {
            *last = Some(now);
            warn!(
                listener = self.name,
                max = self.max,
                refused,
                "connection limit reached; closing new connections"
            );
        }
        None
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counter of a direction's connections cut off by the header-read timeout.
pub(crate) fn header_timeouts(metrics: &Metrics, direction: Direction) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    metrics.register_series(Series {
        name: "proxy_http_header_read_timeouts_total",
        help: "HTTP/1 connections closed because a request head took longer than the header-read timeout.",
        kind: "counter",
        labels: format!("direction=\"{}\"", direction.as_str()),
        value: Box::new(move || c.load(Ordering::Relaxed)),
    });
    count
}

/// A direction's bound on requests in flight, exported as metrics.
pub(crate) fn in_flight(metrics: &Metrics, direction: Direction, limits: &Limits) -> Arc<InFlight> {
    let f = InFlight::new(limits.max_in_flight);
    let (current, shed) = (f.clone(), f.clone());
    let labels = format!("direction=\"{}\"", direction.as_str());
    metrics.register_series(Series {
        name: "proxy_http_requests_in_flight",
        help: "HTTP requests between their head and the end of their response.",
        kind: "gauge",
        labels: labels.clone(),
        value: Box::new(move || current.current() as u64),
    });
    metrics.register_series(Series {
        name: "proxy_http_requests_shed_total",
        help: "HTTP requests refused because the direction had its maximum in flight.",
        kind: "counter",
        labels,
        value: Box::new(move || shed.shed()),
    });
    f
}

pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: Arc<ConnLimit>,
    drain: Drain,
    handle: F,
) where
    F: Fn(Accepted, ConnSlot) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = drain.signaled() => return,
        };
        let Ok((stream, client)) = accepted else {
            if let Err(e) = accepted {
                // Usually EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some(slot) = limit.acquire() else {
            drop(stream);
            continue;
        };
        match transport::accepted(stream, client) {
            // The connection's future holds the slot: no wrapper future (each layer is one more
            // copy of the connection's state when it is spawned).
            Ok(acc) => {
                tokio::spawn(handle(acc, slot));
            }
            Err(e) => debug!(error = %e, "accepted connection unusable"),
        }
    }
}
