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
//!
//! A connection's first head is awaited before hyper's connection exists ([`first_head`]):
//! hyper allocates an 8 KiB write buffer when it builds a connection and reserves an 8 KiB read
//! buffer at its first read, so a connection that trickles its first head (slowloris) would
//! hold ~21 KiB of the proxy's memory; waiting in the detection buffer instead, it holds ~6.

use super::inflight::ConnRequests;
use crate::{
    drain::Drain,
    io::{BoxIo, PrefixedIo},
};
use bytes::{BufMut, BytesMut};
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
    io::{AsyncRead, AsyncReadExt, ReadBuf},
    time::{Instant, Sleep},
};

/// What came of waiting for a connection's first request head.
pub(crate) enum FirstHead {
    /// The head is complete (or the client closed, failed, or sent more than `max` bytes
    /// without ending it: hyper answers those as it would have): everything read is replayed
    /// ahead of the rest.
    Ready(PrefixedIo<BoxIo>),
    /// The head did not complete within the header-read timeout (counted); the connection is
    /// to be closed.
    TimedOut,
    /// The proxy began draining before the head was complete: nothing was started.
    Drained,
}

/// Reads until `io`'s first request head is complete, buffering at most `max` bytes, for at
/// most `timeout`. A head that detection already read whole costs one scan of those bytes
/// and no read, timer or allocation.
pub(crate) async fn first_head(
    io: PrefixedIo<BoxIo>,
    timeout: Duration,
    max: usize,
    expired: &AtomicU64,
    drain: &Drain,
) -> FirstHead {
    if head_ends(io.prefix(), 0) {
        return FirstHead::Ready(io);
    }
    let (prefix, mut inner) = io.into_parts();
    // Detection's buffer, kept (not copied) when nothing else holds it.
    let mut buf = prefix
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let read = async {
        let mut scanned = 0;
        while buf.len() < max {
            if buf.capacity() == buf.len() {
                // Doubling, from 512 bytes, never past `max`.
                buf.reserve(buf.len().max(512).min(max - buf.len()));
            }
            let room = max - buf.len();
            match inner.read_buf(&mut (&mut buf).limit(room)).await {
                // hyper sees the end (or the failure) for itself, after the bytes.
                Ok(0) | Err(_) => return,
                Ok(_) if head_ends(&buf, scanned) => return,
                // A line ending may straddle two reads.
                Ok(_) => scanned = buf.len().saturating_sub(2),
            }
        }
    };
    let done = tokio::select! {
        biased;
        done = tokio::time::timeout(timeout, read) => done.is_ok(),
        _ = drain.signaled() => return FirstHead::Drained,
    };
    if !done {
        expired.fetch_add(1, Ordering::Relaxed);
        return FirstHead::TimedOut;
    }
    FirstHead::Ready(PrefixedIo::new(buf.freeze(), inner))
}

/// Whether `buf` holds the empty line that ends a request head, looking from `from` on. Bare
/// LF line endings count too (hyper's parser accepts them): a false "complete" only hands the
/// connection to hyper sooner, a false "incomplete" would wait out the timeout.
fn head_ends(buf: &[u8], from: usize) -> bool {
    let rest = buf.get(from..).unwrap_or_default();
    rest.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && matches!(
                (rest.get(i + 1), rest.get(i + 2)),
                (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n'))
            )
    })
}

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

    /// A connection whose first `prefix` bytes detection already read and whose client then
    /// writes into the returned half.
    fn conn(prefix: &[u8]) -> (tokio::io::DuplexStream, PrefixedIo<BoxIo>) {
        let (client, server) = tokio::io::duplex(1 << 17);
        let io: BoxIo = Box::new(server);
        (
            client,
            PrefixedIo::new(bytes::Bytes::copy_from_slice(prefix), io),
        )
    }

    async fn replayed(io: PrefixedIo<BoxIo>, n: usize) -> Vec<u8> {
        let mut io = io;
        let mut out = vec![0u8; n];
        io.read_exact(&mut out).await.unwrap();
        out
    }

    #[test]
    fn a_head_ends_at_an_empty_line_however_its_lines_end() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\nbody",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(head_ends(head, 0), "{head:?}");
        }
        for partial in [
            &b""[..],
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert!(!head_ends(partial, 0), "{partial:?}");
        }
        // Looking on from where the last read ended still sees an ending that straddles it.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for from in 0..head.len() - 2 {
            assert!(head_ends(head, from), "from {from}");
        }
        assert!(!head_ends(head, head.len()));
        assert!(
            !head_ends(head, head.len() + 5),
            "past the end is not a panic"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_first_head_that_arrives_in_pieces_is_handed_on_whole() {
        let (_ctl, drain) = crate::drain::channel();
        let expired = AtomicU64::new(0);
        let (mut client, io) = conn(b"GET /a HT");
        let wait = tokio::spawn(async move {
            let drain = drain;
            let expired = expired;
            match first_head(io, T, 64 * 1024, &expired, &drain).await {
                FirstHead::Ready(io) => Ok((io, Instant::now())),
                FirstHead::TimedOut => Err("timed out"),
                FirstHead::Drained => Err("drained"),
            }
        });
        let start = Instant::now();
        for part in [&b"TP/1.1\r\nHost: a\r"[..], b"\n\r", b"\nbody"] {
            tokio::time::sleep(T / 4).await;
            client.write_all(part).await.unwrap();
        }
        let (io, at) = wait.await.unwrap().unwrap();
        assert_eq!(
            at - start,
            T * 3 / 4,
            "handed on when the empty line arrived"
        );
        let all = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(io.prefix(), all, "everything read is replayed, in order");
        client.write_all(b" more").await.unwrap();
        assert_eq!(
            replayed(io, all.len() + 5).await,
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nbody more"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_head_detection_read_whole_is_handed_on_at_once() {
        let (_ctl, drain) = crate::drain::channel();
        let expired = AtomicU64::new(0);
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (_client, io) = conn(head);
        let start = Instant::now();
        let FirstHead::Ready(io) = first_head(io, T, 1024, &expired, &drain).await else {
            panic!("not ready");
        };
        assert_eq!(Instant::now(), start);
        assert_eq!(io.prefix(), head);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_first_head_that_trickles_is_cut_off_and_counted() {
        let (_ctl, drain) = crate::drain::channel();
        let expired = AtomicU64::new(0);
        let (mut client, io) = conn(b"GET / HTTP/1.1\r\n");
        let trickle = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(T / 5).await;
                if client.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        assert!(matches!(
            first_head(io, T, 64 * 1024, &expired, &drain).await,
            FirstHead::TimedOut
        ));
        assert_eq!(
            Instant::now() - start,
            T,
            "bytes now and then do not move the deadline"
        );
        assert_eq!(expired.load(Ordering::Relaxed), 1);
        trickle.abort();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_drain_ends_the_wait_for_a_first_head() {
        let (ctl, drain) = crate::drain::channel();
        let expired = AtomicU64::new(0);
        let (_client, io) = conn(b"GET");
        let wait = tokio::spawn(async move {
            let drain = drain;
            matches!(
                first_head(io, T, 1024, &expired, &drain).await,
                FirstHead::Drained
            )
        });
        tokio::time::sleep(T / 2).await;
        let drained = tokio::spawn(ctl.drain(T));
        assert!(
            wait.await.unwrap(),
            "the wait ends with the drain, not the timeout"
        );
        assert!(drained.await.unwrap());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn what_hyper_answers_itself_is_handed_on() {
        let (_ctl, drain) = crate::drain::channel();
        let expired = AtomicU64::new(0);
        // More than the bound without an empty line: hyper answers 431.
        let (mut client, io) = conn(b"GET / HTTP/1.1\r\nX: ");
        client.write_all(&[b'a'; 5000]).await.unwrap();
        let FirstHead::Ready(io) = first_head(io, T, 4096, &expired, &drain).await else {
            panic!("an oversized head is hyper's to refuse");
        };
        assert!(io.prefix().len() >= 4096);
        // A full buffer with less than its own size left to the bound grows only to the bound.
        let (mut client, io) = conn(&[b'a'; 800]);
        client.write_all(&[b'a'; 500]).await.unwrap();
        let FirstHead::Ready(io) = first_head(io, T, 1000, &expired, &drain).await else {
            panic!("an oversized head is hyper's to refuse");
        };
        assert_eq!(io.prefix().len(), 1000);
        // The client closes halfway through a head: hyper sees the bytes, then the end.
        let (client, io) = conn(b"GET / HTTP/1.1\r\nHo");
        drop(client);
        let FirstHead::Ready(io) = first_head(io, T, 4096, &expired, &drain).await else {
            panic!("a closed connection is hyper's to end");
        };
        assert_eq!(io.prefix(), b"GET / HTTP/1.1\r\nHo");
        assert_eq!(expired.load(Ordering::Relaxed), 0);
    }
}
