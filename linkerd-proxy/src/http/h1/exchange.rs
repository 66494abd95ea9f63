//! One request on one HTTP/1.1 connection: writing the request (head, then the body as it
//! comes) and reading the response head, interleaved on one task.

use super::{Conn, Error, MAX_HEAD, MAX_HEADERS, chunked::parse_length};
use crate::BoxError;
use bytes::{Buf, Bytes};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body::Body;
use std::{
    io::{self, IoSlice, Write as _},
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::AsyncWrite;

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SendFraming {
    /// Exactly this many bytes are still to come.
    Length(u64),
    Chunked,
}

/// How a response body is delimited, and how far it has been read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recv {
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
}

/// One request on one connection: the request still being written, if any, and whether the
/// connection may carry another request afterwards.
#[derive(Debug)]
pub(super) struct Exchange<B> {
    pub(super) conn: Conn,
    /// The request body while it has more to send (boxed: a response body holds its request's
    /// body, and the proxy's one body type is both).
    pub(super) body: Option<(Box<B>, SendFraming)>,
    /// Whether any of the body was taken from the caller (no replay on another connection).
    pub(super) body_read: bool,
    /// RFC 9110 section 9.2.2: only these may be sent again after a connection failure.
    pub(super) idempotent: bool,
    pub(super) head_method: bool,
    pub(super) keep_alive: bool,
    /// Written but not yet flushed (a TLS stream may hold written bytes until flushed).
    pub(super) unflushed: bool,
}

impl<B> Exchange<B> {
    /// Whether some of the request is still to be written (or flushed).
    pub(super) fn sending(&self) -> bool {
        self.body.is_some() || self.unflushed || self.has_pending()
    }

    /// Stops writing the request (the server answered and the rest cannot be sent): the
    /// connection is not reused.
    pub(super) fn abandon_send(&mut self) {
        self.body = None;
        self.unflushed = false;
        let st = &mut *self.conn;
        st.wpos = st.wbuf.len();
        st.data = Bytes::new();
        st.tail = b"";
        self.keep_alive = false;
    }

    pub(super) fn has_pending(&self) -> bool {
        self.conn.wpos < self.conn.wbuf.len()
            || !self.conn.data.is_empty()
            || !self.conn.tail.is_empty()
    }
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes the request head into the connection's buffer; the body follows as it comes.
    pub(super) fn new(mut conn: Conn, req: Request<B>) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        let mut w = std::mem::take(&mut conn.wbuf);
        w.clear();
        conn.wpos = 0;
        conn.data = Bytes::new();
        conn.tail = b"";
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let http10 = parts.version == Version::HTTP_10;
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(target.as_bytes());
        w.extend_from_slice(if http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (name, value) in &parts.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let framing = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(v) => Some(SendFraming::Length(
                parse_length(v.as_bytes()).ok_or(Error::RequestLength)?,
            )),
            None if body.is_end_stream() => None,
            None => Some(match body.size_hint().exact() {
                Some(n) => {
                    let _ = write!(w, "content-length: {n}\r\n");
                    SendFraming::Length(n)
                }
                None => {
                    w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    SendFraming::Chunked
                }
            }),
        };
        w.extend_from_slice(b"\r\n");
        conn.wbuf = w;
        let body = match framing {
            Some(SendFraming::Length(0)) | None => None,
            Some(f) => Some((Box::new(body), f)),
        };
        Ok(Self {
            conn,
            body,
            body_read: false,
            idempotent: matches!(
                parts.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
            head_method: parts.method == Method::HEAD,
            // An HTTP/1.0 request asks for nothing more on its connection.
            keep_alive: !http10,
            unflushed: false,
        })
    }

    /// Writes the request: what is queued, then each body frame as the caller yields it.
    /// `Pending` when the socket is full or the body has nothing yet.
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.conn.data.is_empty() && self.conn.tail.is_empty() && self.body.is_some() {
                match self.poll_body(cx)? {
                    Poll::Ready(()) => continue,
                    Poll::Pending if !self.has_pending() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if self.has_pending() {
                let n = ready!(self.poll_write_pending(cx))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.advance(n);
                self.unflushed = true;
                continue;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut self.conn.io).poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Takes the next body frame and queues it with its framing. `Ready` when something
    /// changed (a frame queued or the body ended).
    pub(super) fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some((body, framing)) = self.body.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        self.body_read = true;
        let frame = ready!(Pin::new(&mut **body).poll_frame(cx));
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers are not sent over HTTP/1 (see the module's comment).
                Err(_) => return Poll::Ready(Ok(())),
            },
            Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e.into()))),
            None => {
                if *framing == SendFraming::Chunked {
                    self.conn.tail = b"0\r\n\r\n";
                } else {
                    return Poll::Ready(Err(Error::RequestLength));
                }
                self.body = None;
                return Poll::Ready(Ok(()));
            }
        };
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let end = body.is_end_stream();
        match framing {
            SendFraming::Length(left) => {
                let n = data.len() as u64;
                if n > *left || (end && n != *left) {
                    return Poll::Ready(Err(Error::RequestLength));
                }
                *left -= n;
                if *left == 0 {
                    self.body = None;
                }
            }
            SendFraming::Chunked => {
                if self.conn.wpos == self.conn.wbuf.len() {
                    self.conn.wbuf.clear();
                    self.conn.wpos = 0;
                }
                let _ = write!(self.conn.wbuf, "{:x}\r\n", data.len());
                if end {
                    self.conn.tail = b"\r\n0\r\n\r\n";
                    self.body = None;
                } else {
                    self.conn.tail = b"\r\n";
                }
            }
        }
        self.conn.data = data;
        Poll::Ready(Ok(()))
    }

    pub(super) fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let st = &mut *self.conn;
        let io = Pin::new(&mut st.io);
        let slices = [
            IoSlice::new(&st.wbuf[st.wpos..]),
            IoSlice::new(&st.data),
            IoSlice::new(st.tail),
        ];
        if io.is_write_vectored() {
            return io.poll_write_vectored(cx, &slices);
        }
        match slices.iter().find(|s| !s.is_empty()) {
            Some(s) => io.poll_write(cx, s),
            None => Poll::Ready(Ok(0)),
        }
    }

    pub(super) fn advance(&mut self, mut n: usize) {
        let st = &mut *self.conn;
        // The written head stays in the buffer (a retry writes it again) until a chunk-size
        // line needs the room.
        let w = (st.wbuf.len() - st.wpos).min(n);
        st.wpos += w;
        n -= w;
        let d = st.data.len().min(n);
        st.data.advance(d);
        n -= d;
        st.tail = &st.tail[n.min(st.tail.len())..];
    }

    /// Writes what it can of the request while the response is being read. A failure of the
    /// caller's body is an error (the server would wait for the rest forever); a failure to
    /// write stops the sending (the server stopped reading, and may have answered, say 413) and
    /// is returned to report if no answer comes.
    pub(super) fn progress_send(&mut self, cx: &mut Context<'_>) -> Result<Option<Error>, Error> {
        if !self.sending() {
            return Ok(None);
        }
        match self.poll_send(cx) {
            Poll::Ready(Err(e @ (Error::RequestBody(_) | Error::RequestLength))) => Err(e),
            Poll::Ready(Err(e)) => {
                self.abandon_send();
                Ok(Some(e))
            }
            Poll::Ready(Ok(())) | Poll::Pending => Ok(None),
        }
    }

    /// Drives the request forward (if it is still being written) and reads the response head.
    pub(super) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(http::response::Parts, Recv), Error>> {
        let mut send_failed = self.progress_send(cx)?;
        loop {
            if !self.conn.rbuf.is_empty()
                && let Some(head) = self.parse_head()?
            {
                return Poll::Ready(Ok(head));
            }
            if self.conn.rbuf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::HeadTooLarge));
            }
            let empty = self.conn.rbuf.is_empty();
            let read = match (ready!(self.conn.poll_read_more(cx)), send_failed.take()) {
                (Ok(n), _) if n > 0 => n,
                (_, Some(e)) if empty => return Poll::Ready(Err(e)),
                (r, _) => r?,
            };
            if read == 0 {
                return Poll::Ready(Err(if empty {
                    Error::Closed
                } else {
                    Error::Invalid("the connection closed inside the response head")
                }));
            }
        }
    }

    /// A complete final response head from the read buffer, if it holds one (interim `1xx`
    /// responses are consumed and skipped).
    pub(super) fn parse_head(&mut self) -> Result<Option<(http::response::Parts, Recv)>, Error> {
        loop {
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut rsp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut rsp,
                &self.conn.rbuf,
                &mut headers,
            )?;
            let len = match parsed {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => return Ok(None),
            };
            let code = rsp.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(Error::Invalid("101 Switching Protocols without an upgrade"));
                }
                self.conn.rbuf.advance(len);
                if self.conn.rbuf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
            let version = if rsp.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // Where each name and value lies in the buffer, to slice them out of it once it
            // is frozen instead of copying each value.
            let base = self.conn.rbuf.as_ptr() as usize;
            let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
            let count = rsp.headers.len();
            for (slot, h) in at.iter_mut().zip(rsp.headers.iter()) {
                let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
                *slot = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
            }
            let head = self.conn.rbuf.split_to(len).freeze();
            let mut map = HeaderMap::with_capacity(count);
            for &(n0, n1, v0, v1) in &at[..count] {
                let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
                let name = HeaderName::from_bytes(&head[n0..n1])
                    .map_err(|_| Error::Invalid("header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                    .map_err(|_| Error::Invalid("header value"))?;
                map.append(name, value);
            }
            let recv = self.response_framing(status, version, &mut map)?;
            let mut parts = Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = version;
            parts.headers = map;
            return Ok(Some((parts, recv)));
        }
    }

    /// RFC 9112 section 6.3, and whether the connection outlives the response.
    pub(super) fn response_framing(
        &mut self,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<Recv, Error> {
        let connection = |token: &str| {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if version == Version::HTTP_10 {
            self.keep_alive &= connection("keep-alive");
        } else if connection("close") {
            self.keep_alive = false;
        }
        if self.head_method
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Recv::Done);
        }
        let te_chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .map(|te| {
                te.to_str()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
        if let Some(chunked) = te_chunked {
            // A message with both is a smuggling vector: never reuse its connection, and do not
            // pass the length on (RFC 9112 section 6.3). HTTP/1.0 has no transfer codings.
            if headers.remove(header::CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
                self.keep_alive = false;
            }
            return Ok(if chunked {
                Recv::Chunked(Chunk::Size)
            } else {
                self.keep_alive = false;
                Recv::Eof
            });
        }
        let mut length = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            // Repeated values must agree (a comma-separated list counts as repeated).
            for part in v.as_bytes().split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(Error::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("content-length"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Recv::Done,
            Some(n) => Recv::Length(n),
            None => {
                self.keep_alive = false;
                Recv::Eof
            }
        })
    }

    /// Whether the request may be sent again on another connection after this one (from the
    /// pool) failed before any byte of a response: an idempotent request none of whose body
    /// was taken yet.
    pub(super) fn retryable(&self) -> bool {
        self.idempotent && !self.body_read && self.conn.rbuf.is_empty()
    }

    /// Moves the request over to `conn`, to be written again from its start.
    pub(super) fn retry_on(&mut self, mut conn: Conn) {
        std::mem::swap(&mut conn.wbuf, &mut self.conn.wbuf);
        conn.wpos = 0;
        self.conn = conn;
    }
}
