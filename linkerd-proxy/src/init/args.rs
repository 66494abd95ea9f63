//! The flags of `linkerd-proxy init`, parsed by hand (the proxy binary carries no CLI library).
//!
//! Names and syntax follow linkerd2-proxy-init's, so an injector written for Linkerd works
//! unchanged: `--flag value` or `--flag=value`; booleans as `--flag` or `--flag=true|false`;
//! lists comma-separated, and a list flag given twice adds to the list.

use std::{fmt, net::IpAddr};

/// Everything `init` needs to know. Defaults are Linkerd's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    pub incoming_proxy_port: u16,
    pub outgoing_proxy_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_ports_to_ignore: Vec<PortRange>,
    pub outbound_ports_to_ignore: Vec<PortRange>,
    /// Empty: every inbound TCP port is redirected. Otherwise only these ("listed" mode).
    pub ports_to_redirect: Vec<PortRange>,
    /// Sources whose inbound connections are not redirected, either family.
    pub subnets_to_ignore: Vec<Subnet>,
    /// `iptables` for IPv4; `None` detects a working one.
    pub firewall_bin_path: Option<String>,
    pub firewall_save_bin_path: Option<String>,
    /// Also program ip6tables.
    pub ipv6: bool,
    /// Remove the rules instead of installing them.
    pub cleanup: bool,
    /// Print the commands instead of running them.
    pub dry_run: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    Help,
}

/// A destination port or an inclusive range of them, written `a:b` in iptables rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// An address block in CIDR notation; a bare address is a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A rejected command line: the flag (or argument) and why. Exits with status 64.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct UsageError {
    pub flag: String,
    pub reason: String,
}

pub const USAGE: &str = "\
usage: linkerd-proxy init [flags]

Installs the pod's iptables nat rules that send its TCP traffic through the proxy
(chains PROXY_INIT_REDIRECT and PROXY_INIT_OUTPUT). Idempotent.

  --incoming-proxy-port PORT        inbound proxy port (4143)
  --outgoing-proxy-port PORT        outbound proxy port (4140)
  --proxy-uid UID                   the proxy's user, whose traffic is never redirected (2102)
  --proxy-gid GID                   also exempt this group (none)
  --inbound-ports-to-ignore LIST    ports or ranges (a-b) not redirected inbound
  --outbound-ports-to-ignore LIST   ports or ranges not redirected outbound
  --ports-to-redirect LIST          redirect only these inbound ports (default: all)
  --subnets-to-ignore LIST          source CIDRs (IPv4 or IPv6) not redirected inbound
  --firewall-bin-path PATH          iptables binary (detected: iptables-nft, -legacy, iptables)
  --firewall-save-bin-path PATH     iptables-save binary (derived from the above)
  --ipv6[=BOOL]                     also program ip6tables (true)
  --cleanup                         remove the rules and chains instead
  --dry-run                         print the commands instead of running them
  --log-level, --log-format VALUE   accepted for compatibility, ignored
";

/// Linkerd's defaults.
impl Default for Args {
    fn default() -> Self {
        Self {
            incoming_proxy_port: 4143,
            outgoing_proxy_port: 4140,
            proxy_uid: 2102,
            proxy_gid: None,
            inbound_ports_to_ignore: Vec::new(),
            outbound_ports_to_ignore: Vec::new(),
            ports_to_redirect: Vec::new(),
            subnets_to_ignore: Vec::new(),
            firewall_bin_path: None,
            firewall_save_bin_path: None,
            ipv6: true,
            cleanup: false,
            dry_run: false,
        }
    }
}

// === impl Args ===

impl Args {
    /// Parses the arguments that follow `init`.
    pub fn parse<I, S>(args: I) -> Result<Parsed, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out = Args::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Parsed::Help);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(usage(&arg, "unexpected argument (flags start with --)"));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let flag = format!("--{name}");
            let err = |reason: String| usage(&flag, reason);
            if let Some(field) = out.bool_field(name) {
                *field = match inline.as_deref() {
                    None => true,
                    Some(v) => parse_bool(v).map_err(err)?,
                };
                continue;
            }
            if !is_value_flag(name) {
                return Err(err("unknown flag (see --help)".into()));
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| err("needs a value".into()))?,
            };
            out.set(name, &value).map_err(err)?;
        }
        if out.incoming_proxy_port == out.outgoing_proxy_port {
            return Err(usage(
                "--outgoing-proxy-port",
                "must differ from --incoming-proxy-port",
            ));
        }
        Ok(Parsed::Run(out))
    }

    fn bool_field(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "ipv6" => Some(&mut self.ipv6),
            "cleanup" => Some(&mut self.cleanup),
            "dry-run" => Some(&mut self.dry_run),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "incoming-proxy-port" => self.incoming_proxy_port = parse_port(v)?,
            "outgoing-proxy-port" => self.outgoing_proxy_port = parse_port(v)?,
            "proxy-uid" => self.proxy_uid = parse_id(v)?,
            "proxy-gid" => self.proxy_gid = Some(parse_id(v)?),
            "inbound-ports-to-ignore" => add(&mut self.inbound_ports_to_ignore, parse_ports(v)?),
            "outbound-ports-to-ignore" => add(&mut self.outbound_ports_to_ignore, parse_ports(v)?),
            "ports-to-redirect" => add(&mut self.ports_to_redirect, parse_ports(v)?),
            "subnets-to-ignore" => add(&mut self.subnets_to_ignore, parse_subnets(v)?),
            "firewall-bin-path" => self.firewall_bin_path = Some(parse_path(v)?),
            "firewall-save-bin-path" => self.firewall_save_bin_path = Some(parse_path(v)?),
            // Linkerd's logging flags: our output is a list of commands, nothing to tune.
            "log-level" | "log-format" => {}
            _ => return Err("unknown flag (see --help)".into()),
        }
        Ok(())
    }
}

/// Appends what is not there yet (a repeated list flag adds to the list).
fn add<T: PartialEq>(list: &mut Vec<T>, new: Vec<T>) {
    for item in new {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

fn is_value_flag(name: &str) -> bool {
    matches!(
        name,
        "incoming-proxy-port"
            | "outgoing-proxy-port"
            | "proxy-uid"
            | "proxy-gid"
            | "inbound-ports-to-ignore"
            | "outbound-ports-to-ignore"
            | "ports-to-redirect"
            | "subnets-to-ignore"
            | "firewall-bin-path"
            | "firewall-save-bin-path"
            | "log-level"
            | "log-format"
    )
}

fn usage(flag: &str, reason: impl Into<String>) -> UsageError {
    UsageError {
        flag: flag.to_string(),
        reason: reason.into(),
    }
}

/// Go's `strconv.ParseBool`, which Linkerd's flags use.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean (true or false)")),
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{v:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn parse_id(v: &str) -> Result<u32, String> {
    v.trim()
        .parse::<u32>()
        .map_err(|_| format!("{v:?} is not a numeric user or group id"))
}

fn parse_path(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(v.to_string())
}

/// `25,587,4000-4010`; empty entries (and an empty list) are allowed, as an injector writes
/// `--outbound-ports-to-ignore ""` when there is nothing to skip.
pub(super) fn parse_ports(v: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_port(first)?, parse_port(last)?);
                if first > last {
                    return Err(format!("range {part:?} is backwards"));
                }
                PortRange { first, last }
            }
            None => {
                let p = parse_port(part)?;
                PortRange { first: p, last: p }
            }
        };
        add(&mut out, vec![range]);
    }
    Ok(out)
}

/// `10.0.0.0/8,fd00::/8`; a bare address means that one host.
pub(super) fn parse_subnets(v: &str) -> Result<Vec<Subnet>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (addr, prefix) = match part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (part, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{part:?} is not a CIDR (address/prefix)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{part:?}: prefix must be 0-{max}")),
            },
        };
        out.push(Subnet { addr, prefix });
    }
    Ok(out)
}

// === impl PortRange ===

impl PortRange {
    /// How many ports the rule's `multiport` match counts this as (a range takes two).
    pub fn weight(&self) -> usize {
        if self.first == self.last { 1 } else { 2 }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

// === impl Subnet ===

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
