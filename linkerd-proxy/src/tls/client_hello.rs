//! Reading the server name (SNI) from a TLS ClientHello without consuming it.
//!
//! The inbound proxy terminates TLS only when the client asks for the proxy's own identity;
//! any other TLS (the application's own, end to end) passes through untouched. So it peeks at
//! the first record, parses just enough of the ClientHello to find `server_name`, and replays
//! the bytes to whichever path handles the connection.

use crate::io::PrefixedIo;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest ClientHello record we wait for (one TLS record).
const MAX_RECORD: usize = 5 + (1 << 14);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// The first bytes are not a TLS handshake record.
    NotTls,
    /// A ClientHello, with its SNI if it sent one.
    ClientHello(Option<String>),
    /// More bytes are needed.
    Incomplete,
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Peek {
    let Some(&content_type) = buf.first() else {
        return Peek::Incomplete;
    };
    if content_type != 0x16 {
        return Peek::NotTls;
    }
    if buf.len() < 5 {
        return Peek::Incomplete;
    }
    if buf[1] != 0x03 {
        return Peek::NotTls;
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return Peek::Incomplete;
    }
    match client_hello_sni(&buf[5..5 + len]) {
        Some(sni) => Peek::ClientHello(sni),
        None => Peek::NotTls,
    }
}

/// A tiny cursor over a byte slice; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// `Some(sni)` for a well-formed ClientHello (`sni` is `None` without the extension); `None`
/// for anything else.
fn client_hello_sni(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut hello = Reader(r.take(len)?);
    hello.take(2)?; // legacy_version
    hello.take(32)?; // random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    if hello.0.is_empty() {
        return Some(None);
    }
    let mut exts = Reader(hello.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .map(|n| Some(n.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Reads until the first record is parsed (or is not TLS), within `timeout`. Returns what was
/// found and the connection with every byte read replayed. A timeout or EOF counts as not TLS.
pub async fn peek<I: AsyncRead + Unpin>(
    mut io: I,
    timeout: Duration,
) -> std::io::Result<(Peek, PrefixedIo<I>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok((Peek::NotTls, PrefixedIo::new(buf.freeze(), io))),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        match parse(&buf) {
            Peek::Incomplete if buf.len() < MAX_RECORD => {}
            Peek::Incomplete => return Ok((Peek::NotTls, PrefixedIo::new(buf.freeze(), io))),
            found => return Ok((found, PrefixedIo::new(buf.freeze(), io))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, produced by rustls for `server_name`.
    fn hello(server_name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_sni_of_a_real_client_hello() {
        let bytes = hello("web.ns.serviceaccount.identity.linkerd.cluster.local");
        assert_eq!(
            parse(&bytes),
            Peek::ClientHello(Some(
                "web.ns.serviceaccount.identity.linkerd.cluster.local".into()
            ))
        );
        // Every strict prefix is incomplete, never a wrong answer.
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Peek::Incomplete, "prefix {n}");
        }
        // An IP address is sent without SNI.
        assert_eq!(parse(&hello("10.0.0.1")), Peek::ClientHello(None));
    }

    #[test]
    fn other_bytes_are_not_tls_and_garbage_never_panics() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Peek::NotTls);
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 2, 0, 0, 0]),
            Peek::NotTls
        );
        let mut rng = fastrand::Rng::with_seed(3);
        let real = hello("a.b");
        for _ in 0..20_000 {
            let mut b = real.clone();
            let i = rng.usize(5..b.len());
            b[i] = rng.u8(..);
            b.truncate(rng.usize(0..=b.len()));
            let _ = parse(&b);
        }
    }
}
