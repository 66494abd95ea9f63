//! Addresses: the API's `TcpAddress` and the `host:port` authorities used in lookups.

use crate::api::net::TcpAddress;
use std::{fmt, net::SocketAddr, str::FromStr};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAddr {
    #[error("address has no IP")]
    MissingIp,
    #[error("port {0} is out of range")]
    BadPort(u32),
    #[error("{0:?} is not host:port")]
    BadAuthority(String),
}

/// Converts a wire address to a socket address, rejecting a missing IP or port > 65535.
pub fn to_socket_addr(a: &TcpAddress) -> Result<SocketAddr, InvalidAddr> {
    let port = u16::try_from(a.port).map_err(|_| InvalidAddr::BadPort(a.port))?;
    let ip =
        a.ip.and_then(|ip| std::net::IpAddr::try_from(ip).ok())
            .ok_or(InvalidAddr::MissingIp)?;
    Ok(SocketAddr::new(ip, port))
}

pub fn to_tcp_address(a: SocketAddr) -> TcpAddress {
    TcpAddress::from(a)
}

/// A lookup key: lowercase host (no trailing dot) and port, e.g. `web.ns.svc.cluster.local:80`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

impl Authority {
    /// Parses `host[:port]`, using `default_port` when none is given.
    pub fn parse_with_default(s: &str, default_port: u16) -> Result<Self, InvalidAddr> {
        let bad = || InvalidAddr::BadAuthority(s.to_string());
        let (host, port) = match s.rsplit_once(':') {
            // A bare IPv6 address has colons but no port.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (s, default_port),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Self { host, port })
    }
}

impl FromStr for Authority {
    type Err = InvalidAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with_default(s, 80)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for s in ["10.1.2.3:8080", "[fd00::1]:443", "127.0.0.1:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(to_socket_addr(&to_tcp_address(a)).unwrap(), a);
        }
        let mut bad = to_tcp_address("1.2.3.4:80".parse().unwrap());
        bad.port = 70000;
        assert_eq!(to_socket_addr(&bad), Err(InvalidAddr::BadPort(70000)));
        bad.ip = None;
        bad.port = 1;
        assert_eq!(to_socket_addr(&bad), Err(InvalidAddr::MissingIp));
    }

    #[test]
    fn authorities() {
        let a: Authority = "Web.NS.svc.cluster.local.:8080".parse().unwrap();
        assert_eq!(a.to_string(), "web.ns.svc.cluster.local:8080");
        assert_eq!("web".parse::<Authority>().unwrap().port, 80);
        assert_eq!(
            Authority::parse_with_default("[::1]:9", 80).unwrap().host,
            "[::1]"
        );
        assert!("web:http".parse::<Authority>().is_err());
        assert!("web:0".parse::<Authority>().is_err());
        assert!(":80".parse::<Authority>().is_err());
    }
}
