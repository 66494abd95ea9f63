//! The grammar of single values: addresses, booleans, durations, port lists, local listeners,
//! static endpoints. Each parser returns the reason a value is wrong; [`parse`] names the
//! variable it came from.

use super::{ConfigError, LocalListener, Strings};
use std::{net::SocketAddr, str::FromStr, time::Duration};

pub(super) fn parse<T>(
    s: &dyn Strings,
    name: &'static str,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    match s.get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => f(v.trim()).map(Some).map_err(|reason| ConfigError {
            name,
            value: v,
            reason,
        }),
    }
}

pub(super) fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|p| !p.is_empty())
}

pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(v).map_err(|_| "expected an IP:port address such as 127.0.0.1:4140".into())
}

pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Durations as Linkerd writes them: `100ms`, `10s`, `5m`, `1h`, `365d`; a bare number is
/// milliseconds.
pub(super) fn parse_nonzero_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 100ms, 10s, 5m or 1h".to_string())?;
    let secs = match unit {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("duration must be finite and non-negative".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Ports and ranges: `25,587,4000-4010`.
pub fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in list(v) {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("range {part:?} is backwards"));
                }
                ports.extend(lo..=hi);
            }
            None => ports.push(port(part)?),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

pub(super) fn parse_local_listeners(v: &str) -> Result<Vec<LocalListener>, String> {
    list(v)
        .map(|entry| {
            let bad = || format!("{entry:?}: expected name=listen_ip:port>target_host:port");
            let (name, rest) = entry.split_once('=').ok_or_else(bad)?;
            let (listen, target) = rest.split_once('>').ok_or_else(bad)?;
            let listen_addr = parse_addr(listen.trim()).map_err(|e| format!("{entry:?}: {e}"))?;
            let target = target.trim();
            check_authority(target).map_err(|e| format!("{entry:?}: {e}"))?;
            if name.trim().is_empty() {
                return Err(bad());
            }
            Ok(LocalListener {
                name: name.trim().to_string(),
                listen_addr,
                target: target.to_string(),
            })
        })
        .collect()
}

/// `host:port=ip:port[#identity]|ip:port;host2:port=...`
pub(super) fn parse_static_endpoints(v: &str) -> Result<Vec<crate::resolve::StaticName>, String> {
    v.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (name, addrs) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected host:port=ip:port|ip:port"))?;
            check_authority(name.trim()).map_err(|e| format!("{entry:?}: {e}"))?;
            let addrs = addrs
                .split('|')
                .map(|a| {
                    let (addr, id) = match a.split_once('#') {
                        Some((addr, id)) => (addr, Some(id.trim())),
                        None => (a, None),
                    };
                    let addr = parse_addr(addr.trim()).map_err(|e| format!("{entry:?}: {e}"))?;
                    if let Some(id) = id {
                        id.parse::<proto::id::IdentityName>()
                            .map_err(|e| format!("{entry:?}: identity {id:?}: {e}"))?;
                    }
                    Ok((addr, id.map(str::to_string)))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((name.trim().to_ascii_lowercase(), addrs))
        })
        .collect()
}

pub(super) fn check_authority(a: &str) -> Result<(), String> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("{a:?} is not host:port")),
    }
}
