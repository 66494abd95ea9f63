//! What several targets share: a reader that hands out its bytes in chunks the fuzzer chose,
//! and a runtime whose clock only moves when every task waits (so timeouts cost no real time).

#![allow(dead_code)]

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, ReadBuf};

/// What a [`Chunked`] reader does once its bytes are all read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Reports the end of the stream (the client closed).
    Eof,
    /// Never answers again (a client that paused): only a timeout ends the wait.
    Stall,
}

/// Yields `data` a chunk at a time: chunk sizes cycle through `sizes` (a chunk never larger
/// than the caller's buffer), then behaves as `end` says.
#[derive(Debug)]
pub struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
    end: End,
}

impl Chunked {
    pub fn new(data: &[u8], sizes: Vec<usize>, end: End) -> Self {
        assert!(sizes.iter().all(|s| *s > 0));
        Self {
            data: data.to_vec(),
            pos: 0,
            sizes,
            next: 0,
            end,
        }
    }

    /// Splits a fuzz input into its control byte and payload: the control byte's low bit says
    /// how the stream ends, the next bits pick the chunk sizes (all at once, or cycling through
    /// two sizes between 1 and 8).
    pub fn from_input(input: &[u8]) -> (Self, &[u8]) {
        let (ctl, payload) = match input.split_first() {
            Some((c, p)) => (*c, p),
            None => (0, input),
        };
        let end = if ctl & 1 == 0 { End::Eof } else { End::Stall };
        let sizes = match ctl >> 1 {
            0 => vec![usize::MAX],
            n => vec![usize::from(n & 0x7) + 1, usize::from((n >> 3) & 0x7) + 1],
        };
        (Self::new(payload, sizes, end), payload)
    }

    /// The bytes not read yet.
    pub fn unread(&self) -> &[u8] {
        &self.data[self.pos..]
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.data.len() {
            return match this.end {
                End::Eof => Poll::Ready(Ok(())),
                // Nobody is woken: the caller's timeout must end the wait.
                End::Stall => Poll::Pending,
            };
        }
        let size = this.sizes[this.next % this.sizes.len()];
        this.next += 1;
        let n = size.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A current-thread runtime with a paused clock: when every task waits, time jumps to the
/// next timer, so a stalled peer or a hang meets its timeout at once.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}
