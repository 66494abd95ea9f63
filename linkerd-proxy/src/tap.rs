//! Live request events for the admin server's `GET /tap` (what `mesh top` reads).
//!
//! With nobody watching, the hot path pays one relaxed atomic load per request: the event is
//! only built when [`Tap::is_active`]. Each finished request is published as one JSON line to
//! a bounded broadcast channel; a watcher that falls behind loses events (counted in the
//! stream) rather than slowing the proxy down.

use bytes::Bytes;
use http::{HeaderValue, Method};
use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::broadcast;

/// Events buffered per watcher before it starts losing them.
const CAPACITY: usize = 1024;

#[derive(Debug)]
pub struct Tap {
    watchers: AtomicUsize,
    tx: broadcast::Sender<Bytes>,
}

/// A watcher: receives events until dropped.
#[derive(Debug)]
pub struct Watch {
    tap: Arc<Tap>,
    pub rx: broadcast::Receiver<Bytes>,
}

/// What is known about a request when it starts; finished by [`TapEvent::finish`].
#[derive(Debug)]
pub struct TapEvent {
    pub direction: &'static str,
    pub method: Method,
    pub authority: HeaderValue,
    pub path: String,
    /// The peer's identity when the hop is mTLS (inbound: the client; outbound: the server).
    pub peer_id: Option<String>,
    pub tls: bool,
}

impl Default for Tap {
    fn default() -> Self {
        Self::new()
    }
}

impl Tap {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            watchers: AtomicUsize::new(0),
            tx,
        }
    }

    /// Whether anyone is watching: the only cost a request pays when nobody is.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) != 0
    }

    pub fn watch(self: &Arc<Self>) -> Watch {
        let rx = self.tx.subscribe();
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            tap: self.clone(),
            rx,
        }
    }

    /// Starts tapping a request (call only when [`Tap::is_active`]).
    pub fn start(self: &Arc<Self>, event: TapEvent) -> Pending {
        Pending {
            tap: self.clone(),
            event,
        }
    }

    fn publish(&self, line: Bytes) {
        // No receiver left (the last watcher went away meanwhile): nothing to do.
        let _ = self.tx.send(line);
    }
}

/// A request being tapped: published when it finishes.
#[derive(Debug)]
pub struct Pending {
    tap: Arc<Tap>,
    pub event: TapEvent,
}

impl Pending {
    pub fn finish(
        self,
        status: Option<u16>,
        grpc_status: Option<u32>,
        error: Option<&str>,
        latency: Duration,
    ) {
        self.event
            .finish(&self.tap, status, grpc_status, error, latency);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TapEvent {
    /// Publishes the finished request as one JSON line.
    pub fn finish(
        self,
        tap: &Tap,
        status: Option<u16>,
        grpc_status: Option<u32>,
        error: Option<&str>,
        latency: Duration,
    ) {
        let mut s = String::with_capacity(192);
        s.push_str("{\"direction\":\"");
        s.push_str(self.direction);
        s.push_str("\",\"method\":");
        json_str(&mut s, self.method.as_str());
        s.push_str(",\"authority\":");
        json_str(&mut s, &String::from_utf8_lossy(self.authority.as_bytes()));
        s.push_str(",\"path\":");
        json_str(&mut s, &self.path);
        let _ = write!(s, ",\"tls\":{}", self.tls);
        if let Some(id) = &self.peer_id {
            s.push_str(",\"peer_id\":");
            json_str(&mut s, id);
        }
        match status {
            Some(c) => {
                let _ = write!(s, ",\"status\":{c}");
            }
            None => s.push_str(",\"status\":null"),
        }
        if let Some(g) = grpc_status {
            let _ = write!(s, ",\"grpc_status\":{g}");
        }
        if let Some(e) = error {
            s.push_str(",\"error\":");
            json_str(&mut s, e);
        }
        let _ = writeln!(s, ",\"latency_us\":{}}}", latency.as_micros());
        tap.publish(Bytes::from(s));
    }
}

/// Appends `v` as a JSON string.
pub(crate) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    // Most values need no escape: copied whole.
    if !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(v);
        out.push('"');
        return;
    }
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TapEvent {
        TapEvent {
            direction: "outbound",
            method: Method::GET,
            authority: HeaderValue::from_static("web.demo.svc.cluster.local:8080"),
            path: "/a\"b\\c\n".into(),
            peer_id: Some("web.demo.serviceaccount.identity.linkerd.cluster.local".into()),
            tls: true,
        }
    }

    #[tokio::test]
    async fn events_reach_watchers_only_while_they_watch() {
        let tap = Arc::new(Tap::new());
        assert!(!tap.is_active());
        let mut w = tap.watch();
        assert!(tap.is_active());
        event().finish(&tap, Some(200), Some(0), None, Duration::from_micros(1500));
        let line = w.rx.recv().await.unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        assert_eq!(
            text,
            "{\"direction\":\"outbound\",\"method\":\"GET\",\"authority\":\"web.demo.svc.cluster.local:8080\",\"path\":\"/a\\\"b\\\\c\\n\",\"tls\":true,\"peer_id\":\"web.demo.serviceaccount.identity.linkerd.cluster.local\",\"status\":200,\"grpc_status\":0,\"latency_us\":1500}\n"
        );
        drop(w);
        assert!(!tap.is_active());
        // Nobody watching: publishing is harmless.
        event().finish(&tap, None, None, Some("connect"), Duration::ZERO);
    }
}
