//! Listening, accepting and connecting: original destinations, keepalives, timeouts.

use socket2::{SockRef, TcpKeepalive};
use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpStream};

/// The destination a client originally dialled, before iptables redirected it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// An accepted connection and the addresses that describe it.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    /// The address the connection arrived on (the listener's own address).
    pub local: SocketAddr,
    /// Set when the connection was redirected to us (`SO_ORIGINAL_DST` differs from `local`).
    pub orig_dst: Option<OrigDstAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

const KEEPALIVE: Duration = Duration::from_secs(10);

pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Prepares an accepted socket and recovers its original destination.
pub fn accepted(stream: TcpStream, client: SocketAddr) -> io::Result<Accepted> {
    let local = stream.local_addr()?;
    set_socket_options(&stream);
    let orig_dst = original_dst(&stream, local).filter(|o| *o != canonical(local));
    Ok(Accepted {
        stream,
        client,
        local,
        orig_dst: orig_dst.map(OrigDstAddr),
    })
}

/// `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST` for IPv6), in canonical form.
///
/// A dual-stack listener (`[::]:4143`) also accepts IPv4 connections, as IPv4-mapped IPv6
/// addresses; netfilter tracks those as IPv4, so they are asked with the IPv4 option and
/// answer with a plain IPv4 address.
fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match canonical(local) {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    // ENOENT (no NAT entry) means the connection was not redirected.
    addr.ok().and_then(|a| a.as_socket()).map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as the IPv4 addresses they are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn set_socket_options(stream: &TcpStream) {
    // Best effort: a socket that refuses an option still carries traffic.
    let _ = stream.set_nodelay(true);
    let sock = SockRef::from(stream);
    let _ = sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE));
}

/// Connects with a timeout, and sets the options every proxy socket gets.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok(stream)) => {
            set_socket_options(&stream);
            Ok(stream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:4143".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:4143".parse::<SocketAddr>().unwrap()
        );
        for plain in ["[fd00::1]:80", "10.1.2.3:80", "[::1]:4140"] {
            let a: SocketAddr = plain.parse().unwrap();
            assert_eq!(canonical(a), a);
        }
    }
}
