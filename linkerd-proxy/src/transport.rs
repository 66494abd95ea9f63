//! Listening, accepting and connecting: original destinations, keepalives, timeouts.

use socket2::{SockRef, TcpKeepalive};
use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};
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

/// An IP network (`10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub const ALL_V4: Net = Net {
        addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };
    pub const ALL_V6: Net = Net {
        addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        prefix: 0,
    };

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0-{max}"))?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }
}

/// Which of the proxy's listeners an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Inbound,
    Outbound,
    Admin,
    Local,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Inbound => "the proxy's own inbound listener",
            Listener::Outbound => "the proxy's own outbound listener",
            Listener::Admin => "the proxy's own admin listener",
            Listener::Local => "one of the proxy's own local listeners",
        }
    }
}

/// The proxy's own listening addresses. A connection from the proxy to one of them would come
/// straight back to it: the proxy never dials them. A listener bound to an unspecified address
/// (`0.0.0.0`, `::`) is reachable on every local address.
#[derive(Clone, Debug, Default)]
pub struct OwnAddrs {
    listeners: Vec<(SocketAddr, Listener)>,
}

impl OwnAddrs {
    pub fn new(listeners: Vec<(SocketAddr, Listener)>) -> Self {
        Self { listeners }
    }

    /// The listener `addr` reaches, if it is one of ours. Cheap unless the port is one of our
    /// listeners' and the listener is bound to every address: then it asks the kernel whether
    /// the IP is local.
    pub fn find(&self, addr: SocketAddr) -> Option<Listener> {
        let addr = canonical(addr);
        let mut by_port = self
            .listeners
            .iter()
            .filter(|(l, _)| l.port() == addr.port());
        by_port.find_map(|(l, which)| {
            let l = canonical(*l);
            let ours = l.ip() == addr.ip()
                || (l.ip().is_unspecified() && l.is_ipv4() == addr.is_ipv4() && is_local(addr.ip()))
                // A dual-stack `[::]` listener also takes IPv4.
                || (l.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    && addr.is_ipv4()
                    && is_local(addr.ip()));
            ours.then_some(*which)
        })
    }
}

/// Which addresses the outbound listener's HTTP-proxy mode (absolute-form requests, `Host`
/// without an original destination, `CONNECT`: local mode) may dial, besides the mesh's own
/// destinations (names that static endpoints or discovery resolve). By default only external
/// addresses: not loopback, link-local (cloud metadata services), unspecified or this host's
/// own, so that the sidecar is not an open door to everything on the host. The operator adds
/// networks (`MESH_PROXY_OUTBOUND_PROXY_ALLOW`). Never allowed, whatever the list says: the
/// control plane's services, and admin ports on this host (proxies' and the control plane's:
/// `/shutdown`, `/proxy-log-level`).
#[derive(Clone, Debug, Default)]
pub struct ProxyAllow {
    /// `external` in the list (the default).
    pub external: bool,
    /// Networks and single addresses, optionally with a port.
    pub nets: Vec<(Net, Option<u16>)>,
    /// The control plane's services (identity, destination, policy).
    pub control_plane: Vec<SocketAddr>,
    /// Admin ports, refused on local addresses.
    pub admin_ports: Vec<u16>,
}

/// The control plane's admin ports (identity, injector, destination, policy), refused on local
/// addresses in HTTP-proxy mode.
pub(crate) const CONTROL_PLANE_ADMIN_PORTS: [u16; 4] = [9990, 9995, 9996, 9997];

impl ProxyAllow {
    /// Parses `external`, `none`, `CIDR`, `IP`, `IP:port`, `[IPv6]:port`, comma-separated.
    pub fn parse(v: &str) -> Result<Self, String> {
        let mut allow = ProxyAllow::default();
        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "external" => allow.external = true,
                "none" => {}
                _ => {
                    if let Ok(sa) = item.parse::<SocketAddr>() {
                        let net = Net {
                            addr: sa.ip(),
                            prefix: if sa.is_ipv4() { 32 } else { 128 },
                        };
                        allow.nets.push((net, Some(sa.port())));
                    } else {
                        let net = item.parse::<Net>().map_err(|_| {
                            format!("{item:?}: expected external, none, a CIDR, an IP or IP:port")
                        })?;
                        allow.nets.push((net, None));
                    }
                }
            }
        }
        Ok(allow)
    }

    /// Whether HTTP-proxy mode may dial `addr`.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let ip = addr.ip();
        if self.control_plane.iter().any(|c| canonical(*c) == addr)
            || (self.admin_ports.contains(&addr.port()) && is_local(ip))
        {
            return false;
        }
        let listed = self
            .nets
            .iter()
            .any(|(n, port)| n.contains(ip) && port.is_none_or(|p| p == addr.port()));
        listed || (self.external && is_external(ip))
    }
}

/// Not loopback, link-local, unspecified, multicast or one of this host's addresses.
fn is_external(ip: std::net::IpAddr) -> bool {
    let special = match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    };
    !special && !is_local(ip)
}

/// Whether `ip` is one of this host's (or network namespace's) addresses: loopback, or an
/// address a socket can be bound to. Binding a UDP socket sends nothing and does not block.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Prepares an accepted socket and recovers its original destination.
pub(crate) fn accepted(stream: TcpStream, client: SocketAddr) -> io::Result<Accepted> {
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
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
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
    fn own_addresses_are_found_on_every_local_address_of_a_wildcard_listener() {
        let own = OwnAddrs::new(vec![
            ("0.0.0.0:4143".parse().unwrap(), Listener::Inbound),
            ("127.0.0.1:4140".parse().unwrap(), Listener::Outbound),
            ("127.0.0.9:4191".parse().unwrap(), Listener::Admin),
        ]);
        let find = |a: &str| own.find(a.parse().unwrap());
        assert_eq!(find("127.0.0.1:4143"), Some(Listener::Inbound));
        assert_eq!(find("127.0.0.77:4143"), Some(Listener::Inbound));
        assert_eq!(find("[::ffff:127.0.0.1]:4140"), Some(Listener::Outbound));
        assert_eq!(find("127.0.0.1:4140"), Some(Listener::Outbound));
        assert_eq!(find("127.0.0.9:4191"), Some(Listener::Admin));
        // Another proxy's listeners on another loopback address (as `mesh up` runs them).
        assert_eq!(find("127.0.0.2:4140"), None);
        assert_eq!(find("127.0.0.1:4191"), None);
        // TEST-NET-3 is nobody's address here.
        assert_eq!(find("203.0.113.7:4143"), None);
        assert_eq!(find("127.0.0.1:8080"), None);
    }

    #[test]
    fn http_proxy_mode_reaches_external_addresses_and_what_the_operator_lists() {
        let allow = ProxyAllow::parse("external").unwrap();
        let ok = |a: &ProxyAllow, s: &str| a.permits(s.parse().unwrap());
        assert!(ok(&allow, "93.184.216.34:80"));
        assert!(ok(&allow, "[2606:4700::1111]:443"));
        for denied in [
            "127.0.0.1:9990",
            "127.0.0.9:8080",
            "[::1]:4191",
            "169.254.169.254:80",
            "0.0.0.0:80",
            "[fe80::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(!ok(&allow, denied), "{denied}");
        }
        let listed =
            ProxyAllow::parse("external, 127.0.0.0/24, 127.0.1.1:6379, [::1]:8080").unwrap();
        assert!(ok(&listed, "127.0.0.5:1234"));
        assert!(ok(&listed, "127.0.1.1:6379"));
        assert!(!ok(&listed, "127.0.1.1:6380"));
        assert!(ok(&listed, "[::1]:8080"));
        let mut cp = listed.clone();
        cp.control_plane.push("127.0.0.5:8080".parse().unwrap());
        cp.admin_ports = vec![4191, 9990];
        assert!(
            !ok(&cp, "127.0.0.5:8080"),
            "the control plane is never reachable"
        );
        assert!(!ok(&cp, "127.0.0.5:9990"), "nor an admin port on this host");
        assert!(!ok(&cp, "127.0.0.7:4191"), "nor an admin port on this host");
        assert!(ok(&cp, "127.0.0.5:8081"));
        let none = ProxyAllow::parse("none").unwrap();
        assert!(!ok(&none, "93.184.216.34:80"));
        assert!(ProxyAllow::parse("localhost").is_err());
    }

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
