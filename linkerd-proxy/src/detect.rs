//! Protocol detection: a bounded read, then a decision.
//!
//! Detection reads at most [`MAX_PEEK`] bytes within the detect timeout and decides from what
//! arrived. Bytes that look like HTTP/2's connection preface are HTTP/2 (prior knowledge, as
//! gRPC clients speak); bytes that parse as the start of an HTTP/1 request are HTTP/1, and so is
//! a first line that ends in ` HTTP/1.x` but does not parse (an invalid method or target: the
//! HTTP server answers it 400 instead of the bytes reaching the application as opaque TCP).
//! Other bytes are opaque TCP.
//!
//! The timeout decides only for a client that sent *nothing*: that is a protocol where the
//! server speaks first ([`Reason::Timeout`] with [`Protocol::Opaque`]). A client that sent the
//! start of an HTTP request and paused is still HTTP ([`Reason::Timeout`] with
//! [`Protocol::Http1`] or [`Protocol::Http2`]): the HTTP server then waits for the rest of its
//! head under the header-read timeout, so a pause never turns HTTP into opaque TCP and past
//! HTTP policy. Nothing read is lost: the bytes are replayed by [`PrefixedIo`].

use crate::io::PrefixedIo;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes detection reads before deciding.
pub const MAX_PEEK: usize = 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    /// The `protocol` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Why detection ended on opaque, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Matched,
    NotHttp,
    Timeout,
    BufferFull,
}

impl Reason {
    /// The `reason` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Matched => "matched",
            Reason::NotHttp => "not_http",
            Reason::Timeout => "timeout",
            Reason::BufferFull => "buffer_full",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The client closed the connection before sending anything.
    #[error("connection closed before any data was received")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the bytes read so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Done(Protocol),
    NeedMore,
}

/// Classifies a prefix of a connection's first bytes.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        // `PRI * HTTP/2.0` is also a valid-looking HTTP/1 request line; wait for the full
        // preface before calling it HTTP/2.
        return if n == H2_PREFACE.len() {
            Verdict::Done(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Verdict::Done(Protocol::Http1),
        // Too many headers for our zero-length array means the request line parsed.
        Err(httparse::Error::TooManyHeaders) => Verdict::Done(Protocol::Http1),
        Ok(httparse::Status::Partial) => {
            if req.version.is_some() {
                // The request line is complete and valid.
                Verdict::Done(Protocol::Http1)
            } else {
                Verdict::NeedMore
            }
        }
        Err(_) if http1_shaped(buf) => Verdict::Done(Protocol::Http1),
        Err(_) => Verdict::Done(Protocol::Opaque),
    }
}

/// A first line that ends in ` HTTP/1.0` or ` HTTP/1.1` is a client speaking HTTP/1, even when
/// its method or target is invalid.
fn http1_shaped(buf: &[u8]) -> bool {
    let line = match buf.iter().position(|b| *b == b'\n') {
        Some(end) => &buf[..end],
        None => return false,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
}

/// What a client that paused after `buf` is speaking: the protocol its bytes so far begin, or
/// opaque when it sent nothing.
fn after_pause(buf: &[u8]) -> Protocol {
    if buf.is_empty() {
        Protocol::Opaque
    } else if buf.len() >= 3 && H2_PREFACE.starts_with(buf) {
        Protocol::Http2
    } else {
        Protocol::Http1
    }
}

/// For a full buffer that is still an incomplete request line: a valid method followed by a
/// request target whose bytes are all valid so far (a long URL) is HTTP/1.
pub fn starts_like_http1(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(buf), Ok(httparse::Status::Partial)) && req.method.is_some()
}

/// Reads from `io` until the protocol is known, the buffer is full or `timeout` passes.
pub async fn detect<I>(
    mut io: I,
    timeout: Duration,
) -> Result<(Protocol, Reason, PrefixedIo<I>), DetectError>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(MAX_PEEK);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_) => {
                // Only bytes that may still become HTTP are in the buffer (anything else was
                // decided as it arrived).
                let proto = after_pause(&buf);
                return Ok((proto, Reason::Timeout, PrefixedIo::new(buf.freeze(), io)));
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(0)) if buf.is_empty() => return Err(DetectError::Closed),
            Ok(Ok(0)) => {
                // Half-closed after a few bytes: whatever it is, it is not a complete HTTP
                // request line. Forward it as-is.
                let io = PrefixedIo::new(buf.freeze(), io);
                return Ok((Protocol::Opaque, Reason::NotHttp, io));
            }
            Ok(Ok(_)) => {}
        }
        match classify(&buf) {
            Verdict::Done(p) => {
                let reason = if p == Protocol::Opaque {
                    Reason::NotHttp
                } else {
                    Reason::Matched
                };
                return Ok((p, reason, PrefixedIo::new(buf.freeze(), io)));
            }
            Verdict::NeedMore if buf.len() >= MAX_PEEK => {
                let (proto, reason) = if starts_like_http1(&buf) {
                    (Protocol::Http1, Reason::Matched)
                } else {
                    (Protocol::Opaque, Reason::BufferFull)
                };
                return Ok((proto, reason, PrefixedIo::new(buf.freeze(), io)));
            }
            Verdict::NeedMore => {}
        }
    }
}

#[cfg(test)]
mod tests;
