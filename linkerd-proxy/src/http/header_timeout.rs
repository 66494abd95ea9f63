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
//! Whether a head is being read is the connection's [`ConnRequests`]: a request in progress
//! (from hyper handing the service a complete head to the end of its response) is not timed,
//! bytes read while none is in progress belong to the next head, and a connection that was
//! upgraded (`101`, `CONNECT`) is never timed.

use super::inflight::ConnRequests;
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, ReadBuf},
    time::{Instant, Sleep},
};

/// An HTTP/1 server connection's I/O, failing a read with `TimedOut` once the head being read
/// has waited longer than the timeout.
#[derive(Debug)]
pub(crate) struct HeaderTimeout<I> {
    io: I,
    clock: Arc<ConnRequests>,
    timeout: Duration,
    /// The connection's one timer, and the head it was armed for.
    timer: Option<(Pin<Box<Sleep>>, u64)>,
    /// Counts connections cut off.
    expired: Arc<AtomicU64>,
}

impl<I> HeaderTimeout<I> {
    pub(crate) fn new(
        io: I,
        clock: Arc<ConnRequests>,
        timeout: Duration,
        expired: Arc<AtomicU64>,
    ) -> Self {
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
        let (res, n) = crate::io::read_counting(&mut this.io, cx, buf);
        if res.is_ready() {
            // Bytes (or the end of the stream, or an error) are never withheld.
            this.clock.after_read(n > 0);
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

crate::io::delegate_async_write!(HeaderTimeout, |_this, _n| {});

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_head_that_trickles_is_cut_off_at_the_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = ConnRequests::new(super::super::inflight::InFlight::new(100));
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
        let mut io = HeaderTimeout::new(
            server,
            ConnRequests::new(super::super::inflight::InFlight::new(100)),
            T,
            Default::default(),
        );
        let start = Instant::now();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, T);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn requests_in_progress_and_idle_keep_alive_are_not_timed() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = ConnRequests::new(super::super::inflight::InFlight::new(100));
        let mut io = HeaderTimeout::new(server, clock.clone(), T, Default::default());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // The service has the head; its response takes a minute and the body trickles.
        let guard = clock.start().unwrap();
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
        let clock = ConnRequests::new(super::super::inflight::InFlight::new(100));
        let mut io = HeaderTimeout::new(server, clock.clone(), T, Default::default());
        let guard = clock.start().unwrap();
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
