//! Chunked transfer coding (RFC 9112 section 7.1), decoded in place from the read buffer.

use super::{Error, MAX_HEAD, MAX_HEADERS, exchange::Chunk};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

pub(super) enum Decoded {
    Frame(Frame<Bytes>),
    /// The last chunk and an empty trailer section.
    End,
    /// A state change with nothing to yield.
    Progress,
    NeedMore,
}

/// One step of decoding a chunked body from `buf`.
pub(super) fn decode_chunk(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, Error> {
    match *chunk {
        Chunk::Size => {
            let Some(eol) = find_crlf(buf) else {
                return if buf.len() > 1024 {
                    Err(Error::Invalid("chunk size line"))
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let line = &buf[..eol];
            let digits = line
                .iter()
                .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                .map_or(line, |i| &line[..i]);
            let size = parse_hex(digits).ok_or(Error::Invalid("chunk size"))?;
            buf.advance(eol + 2);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Decoded::Progress)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - n as u64;
            *chunk = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data longer than its size"));
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(Decoded::Progress)
        }
        Chunk::Trailers => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End);
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let len = match httparse::parse_headers(buf, &mut headers)? {
                httparse::Status::Complete((n, _)) => n,
                httparse::Status::Partial if buf.len() >= MAX_HEAD => {
                    return Err(Error::HeadTooLarge);
                }
                httparse::Status::Partial => return Ok(Decoded::NeedMore),
            };
            let mut map = HeaderMap::new();
            for h in headers.iter().take_while(|h| !h.name.is_empty()) {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Error::Invalid("trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| Error::Invalid("trailer value"))?;
                map.append(name, value);
            }
            buf.advance(len);
            Ok(Decoded::Frame(Frame::trailers(map)))
        }
    }
}

pub(super) fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

pub(super) fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
}

pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
