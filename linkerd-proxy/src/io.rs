//! I/O adapters: replaying detected bytes and counting bytes for metrics.

use bytes::{Buf, Bytes};
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `AsyncWrite` for a wrapper `$ty<I>` whose `io: I` field does the writing: every call is
/// passed through, and `$wrote(this, n)` runs after each write that took `n` bytes (for
/// counting; an empty closure costs nothing).
macro_rules! delegate_async_write {
    ($ty:ident, |$this:ident, $n:ident| $wrote:block) => {
        impl<I> $ty<I> {
            #[inline]
            fn wrote(&self, res: &std::task::Poll<std::io::Result<usize>>) {
                if let std::task::Poll::Ready(Ok($n)) = *res {
                    let $this = self;
                    $wrote
                }
            }
        }

        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<I> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                b: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let this = self.get_mut();
                let res = std::pin::Pin::new(&mut this.io).poll_write(cx, b);
                this.wrote(&res);
                res
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let this = self.get_mut();
                let res = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
                this.wrote(&res);
                res
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use delegate_async_write;

/// Any byte stream the proxy accepts or dials.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection's stream once its transport is settled (plain TCP, the inside of mTLS, with
/// or without counted or replayed bytes). The HTTP server and client and the TCP relay are
/// written against this one type: each generic I/O type would otherwise instantiate all of
/// hyper's and h2's connection code again (~100 KiB of text apiece), and the sidecar's
/// resident memory is mostly its text. A virtual call per read or write costs nothing next
/// to the system call behind it.
pub(crate) type BoxIo = Box<dyn Io>;

/// An I/O that first yields `prefix`, then reads from the inner I/O. Writes go straight through.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

/// Byte counters shared with the metrics registry.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub read: AtomicU64,
    pub write: AtomicU64,
}

/// Counts the bytes read from and written to the inner I/O.
#[derive(Debug)]
pub(crate) struct CountingIo<I> {
    io: I,
    counters: Arc<ByteCounters>,
}

// === impl PrefixedIo ===

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// The bytes not replayed yet, and the inner I/O.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the detection buffer now, not when the connection closes: an idle
                // connection should hold as little as it can.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

delegate_async_write!(PrefixedIo, |_this, _n| {});

/// Reads from `io` into `buf`, and says how many bytes the read added.
pub(crate) fn read_counting<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> (Poll<io::Result<()>>, usize) {
    let before = buf.filled().len();
    let res = Pin::new(io).poll_read(cx, buf);
    (res, buf.filled().len() - before)
}

// === impl CountingIo ===

impl<I> CountingIo<I> {
    pub(crate) fn new(io: I, counters: Arc<ByteCounters>) -> Self {
        Self { io, counters }
    }

    /// Moves what was counted so far into `counters` and counts there from now on: for a
    /// connection whose metric labels are only known after its first bytes (the inbound TLS
    /// handshake reveals the client's identity).
    pub(crate) fn rebind(&mut self, counters: Arc<ByteCounters>) {
        if Arc::ptr_eq(&self.counters, &counters) {
            return;
        }
        let read = self.counters.read.swap(0, Ordering::Relaxed);
        let write = self.counters.write.swap(0, Ordering::Relaxed);
        counters.read.fetch_add(read, Ordering::Relaxed);
        counters.write.fetch_add(write, Ordering::Relaxed);
        self.counters = counters;
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (res, n) = read_counting(&mut this.io, cx, buf);
        if n > 0 {
            this.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }
}

delegate_async_write!(CountingIo, |this, n| {
    this.counters.write.fetch_add(n as u64, Ordering::Relaxed);
});
