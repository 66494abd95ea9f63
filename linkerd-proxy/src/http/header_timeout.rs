//! The HTTP/1 server's header-read timeout, without a timer or a clock read per request.
//!
//! A client must send a whole request head within the timeout once it has started one and
//! stalled; otherwise the connection is closed (slowloris: connections that trickle a header
//! byte now and then would otherwise be held forever). hyper has such a timeout, but it creates
//! and registers a timer for every request, which wakes the runtime's driver for each one. This
//! one costs nothing while heads arrive whole: bytes read between requests only set a flag. Only
//! when a head is incomplete and a read would wait does the connection read the clock and arm
//! its one timer (kept for the connection's life, moved only for the next stalled head). The
//! deadline runs from that first wait, so a head has at least the timeout after its first stall.
//!
//! The connection's [`HeadClock`] says whether a head is being read: the service marks a request
//! as started when hyper hands it a complete head ([`HeadClock::request_started`]) and finished
//! when its response ends ([`RequestGuard`]'s drop). Bytes read while no request is in progress
//! belong to the next head. A connection that was upgraded (`101`, `CONNECT`) is never timed.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// In `HeadClock::active`: the connection was upgraded and carries opaque bytes now.
const UPGRADED: u32 = u32::MAX;

/// Whether a connection is reading a request head.
#[derive(Debug)]
pub struct HeadClock {
    /// Requests handed to the service whose responses have not ended, or [`UPGRADED`].
    active: AtomicU32,
    /// Heads completed so far: which head a timer was armed for.
    heads: AtomicU64,
    /// Bytes of the next head have been read.
    in_head: AtomicBool,
}

impl HeadClock {
    /// A new connection: the bytes detection already read are the first head's start.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicU32::new(0),
            heads: AtomicU64::new(0),
            in_head: AtomicBool::new(true),
        })
    }

    /// hyper has read a complete head and calls the service. The guard ends the request when
    /// it is dropped (with the response body, or with the response if it has none).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_head.store(false, Ordering::Relaxed);
        self.heads.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a != UPGRADED).then_some(a + 1)
            });
        RequestGuard(Some(self.clone()))
    }

    /// The connection now carries an upgraded protocol: its reads are no longer heads.
    pub fn upgraded(&self) {
        self.active.store(UPGRADED, Ordering::Relaxed);
    }

    /// Called after each read (`got`: bytes arrived). Returns the head being read, if one is.
    fn after_read(&self, got: bool) -> Option<u64> {
        if self.active.load(Ordering::Relaxed) != 0 {
            return None;
        }
        if got {
            self.in_head.store(true, Ordering::Relaxed);
        } else if !self.in_head.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.heads.load(Ordering::Relaxed))
    }
}

/// One request in progress on a connection; dropped when its response has ended.
#[derive(Debug)]
pub struct RequestGuard(Option<Arc<HeadClock>>);

impl RequestGuard {
    /// A guard for a connection without a header-read timeout.
    pub fn none() -> Self {
        Self(None)
    }

    /// The connection this request arrived on is being upgraded.
    pub fn upgraded(&self) {
        if let Some(c) = &self.0 {
            c.upgraded();
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = c
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                    (a != UPGRADED && a > 0).then(|| a - 1)
                });
        }
    }
}

/// An HTTP/1 server connection's I/O, failing a read with `TimedOut` once the head being read
/// has waited longer than the timeout.
#[derive(Debug)]
pub struct HeaderTimeout<I> {
    io: I,
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// The connection's one timer, and the head it was armed for.
    timer: Option<(Pin<Box<Sleep>>, u64)>,
    /// Counts connections cut off.
    expired: Arc<AtomicU64>,
}

impl<I> HeaderTimeout<I> {
    pub fn new(io: I, clock: Arc<HeadClock>, timeout: Duration, expired: Arc<AtomicU64>) -> Self {
        Self {
            io,
            clock,
            timeout,
            timer: None,
            expired,
        }
    }

    /// Whether `head` has waited out the timeout. The timer is armed (the clock read) the first
    /// time a head stalls; polling it registers the task to be woken when it fires.
    fn expired(&mut self, cx: &mut Context<'_>, head: u64) -> bool {
        match &mut self.timer {
            Some((_, armed)) if *armed == head => {}
            Some((timer, armed)) => {
                timer.as_mut().reset(Instant::now() + self.timeout);
                *armed = head;
            }
            None => {
                let timer = Box::pin(tokio::time::sleep_until(Instant::now() + self.timeout));
                self.timer = Some((timer, head));
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|(timer, _)| timer.as_mut().poll(cx).is_ready())
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send a complete request head in time",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for HeaderTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if res.is_ready() {
            // Bytes (or the end of the stream, or an error) are never withheld.
            this.clock.after_read(buf.filled().len() > before);
            return res;
        }
        match this.clock.after_read(false) {
            Some(head) if this.expired(cx, head) => {
                this.expired.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(timed_out()))
            }
            _ => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeaderTimeout<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_head_that_trickles_is_cut_off_at_the_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = HeadClock::new();
        let mut io = HeaderTimeout::new(server, clock, T, Default::default());
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err((e.kind(), Instant::now())),
                }
            }
        });
        // One byte every 3 s: the head never completes.
        for _ in 0..5 {
            if client.write_all(b"G").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let (kind, at) = reader.await.unwrap().unwrap_err();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        let took = at - start;
        assert!(took >= T && took <= T + Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_new_connection_times_out_from_its_first_bytes() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = HeaderTimeout::new(server, HeadClock::new(), T, Default::default());
        let start = Instant::now();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, T);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn requests_in_progress_and_idle_keep_alive_are_not_timed() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = HeadClock::new();
        let mut io = HeaderTimeout::new(server, clock.clone(), T, Default::default());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // The service has the head; its response takes a minute and the body trickles.
        let guard = clock.request_started();
        for _ in 0..6 {
            tokio::time::sleep(T).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        drop(guard);
        // Idle keep-alive: a read that waits, with no head started, arms nothing.
        let idle = tokio::time::timeout(T * 3, io.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection must wait for the client");
        // The next head starts with its first byte and has the whole timeout.
        tokio::time::sleep(T * 5).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let before = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - before, T);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_upgraded_connection_is_never_timed() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = HeadClock::new();
        let mut io = HeaderTimeout::new(server, clock.clone(), T, Default::default());
        let guard = clock.request_started();
        guard.upgraded();
        drop(guard);
        tokio::time::sleep(T * 2).await;
        client.write_all(b"raw").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let idle = tokio::time::timeout(T * 3, io.read(&mut buf)).await;
        assert!(idle.is_err());
    }
}
