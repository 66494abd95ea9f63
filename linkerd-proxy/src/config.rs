//! Configuration from the environment.
//!
//! Every variable is read and validated once, at startup, into a plain [`Config`] tree. Names
//! follow linkerd2-proxy's (`LINKERD2_PROXY_*`) wherever Linkerd has an equivalent, so that a pod
//! spec written for linkerd2-proxy works unchanged; settings Linkerd does not have use the
//! `MESH_PROXY_*` prefix. Values are read through [`Strings`] so tests never touch the process
//! environment. Every variable is documented in `linkerd-proxy/README.md`.

pub use self::observe::*;
pub use crate::{
    access_log::Format as AccessLogFormat,
    inbound::Config as InboundConfig,
    listen::Limits,
    log::LogFormat,
    outbound::{Config as OutboundConfig, LocalListener},
    trace::TraceConfig,
};
mod observe;
mod values;

use self::values::*;
pub use self::values::{parse_addr, parse_duration, parse_ports};
use std::{collections::HashMap, net::SocketAddr, time::Duration};

pub const ENV_INBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";
pub const ENV_OUTBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR";
pub const ENV_ADMIN_LISTEN_ADDR: &str = "LINKERD2_PROXY_ADMIN_LISTEN_ADDR";
pub const ENV_INBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT";
pub const ENV_OUTBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT";
pub const ENV_INBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT";
pub const ENV_OUTBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT";
pub const ENV_INBOUND_OPAQUE_PORTS: &str =
    "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION";
pub const ENV_INBOUND_IPS: &str = "LINKERD2_PROXY_INBOUND_IPS";
pub const ENV_SHUTDOWN_GRACE_PERIOD: &str = "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD";
pub const ENV_SHUTDOWN_ENDPOINT_ENABLED: &str = "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED";
pub const ENV_LOG: &str = "LINKERD2_PROXY_LOG";
pub const ENV_LOG_FORMAT: &str = "LINKERD2_PROXY_LOG_FORMAT";
pub const ENV_CORES: &str = "LINKERD2_PROXY_CORES";

pub const ENV_IDENTITY_DIR: &str = "LINKERD2_PROXY_IDENTITY_DIR";
pub const ENV_IDENTITY_TRUST_ANCHORS: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
pub const ENV_IDENTITY_TOKEN_FILE: &str = "LINKERD2_PROXY_IDENTITY_TOKEN_FILE";
pub const ENV_IDENTITY_SVC_ADDR: &str = "LINKERD2_PROXY_IDENTITY_SVC_ADDR";
pub const ENV_IDENTITY_SVC_NAME: &str = "LINKERD2_PROXY_IDENTITY_SVC_NAME";
pub const ENV_IDENTITY_LOCAL_NAME: &str = "LINKERD2_PROXY_IDENTITY_LOCAL_NAME";
pub const ENV_IDENTITY_MIN_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MIN_REFRESH";
pub const ENV_IDENTITY_MAX_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";

pub const ENV_OUTBOUND_OPAQUE_PORTS: &str = "MESH_PROXY_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION";
pub const ENV_INBOUND_FORWARD_ADDR: &str = "MESH_PROXY_INBOUND_FORWARD_ADDR";
pub const ENV_OUTBOUND_RESPONSE_TIMEOUT: &str = "MESH_PROXY_OUTBOUND_RESPONSE_TIMEOUT";
pub const ENV_OUTBOUND_UPGRADE_HTTP1: &str = "MESH_PROXY_OUTBOUND_UPGRADE_HTTP1";
pub const ENV_LOCAL_LISTENERS: &str = "MESH_PROXY_LOCAL_LISTENERS";
pub const ENV_STATIC_ENDPOINTS: &str = "MESH_PROXY_STATIC_ENDPOINTS";
pub const ENV_DESTINATION_SVC_ADDR: &str = "LINKERD2_PROXY_DESTINATION_SVC_ADDR";
pub const ENV_DESTINATION_SVC_NAME: &str = "LINKERD2_PROXY_DESTINATION_SVC_NAME";
pub const ENV_DESTINATION_CONTEXT: &str = "LINKERD2_PROXY_DESTINATION_CONTEXT";
pub const ENV_DESTINATION_SUFFIXES: &str = "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES";
pub const ENV_OUTBOUND_FAILFAST_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT";
pub const ENV_OUTBOUND_DISCOVERY_IDLE_TIMEOUT: &str =
    "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT";
pub const ENV_BALANCE_DEFAULT_RTT: &str = "MESH_PROXY_BALANCE_DEFAULT_RTT";
pub const ENV_BALANCE_DECAY: &str = "MESH_PROXY_BALANCE_DECAY";
pub const ENV_INBOUND_DEFAULT_POLICY: &str = "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY";
pub const ENV_INBOUND_PORTS: &str = "LINKERD2_PROXY_INBOUND_PORTS";
pub const ENV_POLICY_SVC_ADDR: &str = "LINKERD2_PROXY_POLICY_SVC_ADDR";
pub const ENV_POLICY_SVC_NAME: &str = "LINKERD2_PROXY_POLICY_SVC_NAME";
pub const ENV_POLICY_WORKLOAD: &str = "LINKERD2_PROXY_POLICY_WORKLOAD";
pub const ENV_POLICY_CLUSTER_NETWORKS: &str = "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS";
pub const ENV_OUTBOUND_IDLE_CONNECTIONS: &str =
    "MESH_PROXY_OUTBOUND_MAX_IDLE_CONNECTIONS_PER_ENDPOINT";
pub const ENV_INBOUND_MAX_IN_FLIGHT: &str = "LINKERD2_PROXY_INBOUND_MAX_IN_FLIGHT";
pub const ENV_OUTBOUND_MAX_IN_FLIGHT: &str = "LINKERD2_PROXY_OUTBOUND_MAX_IN_FLIGHT";
pub const ENV_INBOUND_MAX_CONNECTIONS: &str = "MESH_PROXY_INBOUND_MAX_CONNECTIONS";
pub const ENV_OUTBOUND_MAX_CONNECTIONS: &str = "MESH_PROXY_OUTBOUND_MAX_CONNECTIONS";
pub const ENV_HTTP_HEADER_READ_TIMEOUT: &str = "MESH_PROXY_HTTP_HEADER_READ_TIMEOUT";
pub const ENV_OUTBOUND_PROXY_ALLOW: &str = "MESH_PROXY_OUTBOUND_PROXY_ALLOW";

/// Ports on which clients do not speak first (SMTP, MySQL, ...), so detection is skipped and
/// the connection is forwarded as opaque TCP at once. The same list as Linkerd's default.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// The default protocol-detection timeout. Linkerd's is 10 s; ours is short so that a
/// server-speaks-first protocol on a port nobody declared opaque stalls for at most this long
/// before it is forwarded as opaque TCP.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle HTTP/1 connections kept per endpoint. The pool never holds more than the endpoint's
/// peak of concurrent requests over the idle timeout, and a cap below that peak closes
/// connections only to dial new ones moments later (at 100 concurrent requests, a cap of 64
/// cost ~2.7 connects per 100 requests). 1,024 idle connections hold ~10 MB.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Requests each direction may have in flight before it sheds load (503 / `REFUSED_STREAM`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Connections each of the inbound and outbound listeners holds open at once; beyond it a new
/// connection is closed as soon as it is accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long an HTTP/1 client may take to send a request head once it has started one.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A source of configuration strings: the process environment, or a map in tests.
pub trait Strings {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

/// Why a variable was rejected. Exits the process with status 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// The whole proxy configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    /// How long in-flight requests and connections may take to finish after SIGTERM.
    pub shutdown_grace_period: Duration,
    /// Worker threads for the runtime; 1 runs everything on one thread.
    pub cores: usize,
    /// A `tracing` filter such as `warn,linkerd_proxy=info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// mTLS identity; `None` runs without identity (plaintext between proxies, ready at once).
    pub identity: Option<crate::identity::IdentityConfig>,
    /// Service discovery; `None` resolves only static names, IPs and DNS.
    pub destination: Option<crate::destination::DestinationConfig>,
    /// Inbound authorization: the default policy and, optionally, the policy service.
    pub policy: crate::inbound::policy::client::InboundPolicyConfig,
    /// Span export; `None`: trace headers pass through untouched.
    pub trace: Option<TraceConfig>,
    /// Inbound access log lines on stderr.
    pub access_log: Option<AccessLogFormat>,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen_addr: SocketAddr,
    pub shutdown_endpoint_enabled: bool,
}

// === impl Strings ===

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl<const N: usize> Strings for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_string())
    }
}

// === impl Config ===

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_strings(&Env)
    }

    /// Reads and validates every setting; the first invalid one is returned as the error.
    pub fn from_strings(s: &dyn Strings) -> Result<Self, ConfigError> {
        let inbound = InboundConfig {
            listen_addr: parse(s, ENV_INBOUND_LISTEN_ADDR, parse_addr)?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 4143))),
            detect_timeout: parse(s, ENV_INBOUND_DETECT_TIMEOUT, parse_duration)?
                .unwrap_or(DEFAULT_DETECT_TIMEOUT),
            connect_timeout: parse(s, ENV_INBOUND_CONNECT_TIMEOUT, parse_duration)?
                .unwrap_or(Duration::from_millis(100)),
            opaque_ports: parse(s, ENV_INBOUND_OPAQUE_PORTS, parse_ports)?
                .unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.to_vec()),
            forward_addr: parse(s, ENV_INBOUND_FORWARD_ADDR, parse_addr)?,
            ips: parse(s, ENV_INBOUND_IPS, |v| {
                list(v)
                    .map(|ip| ip.parse().map_err(|e| format!("{ip:?}: {e}")))
                    .collect()
            })?
            .unwrap_or_default(),
            limits: parse_limits(s, ENV_INBOUND_MAX_IN_FLIGHT, ENV_INBOUND_MAX_CONNECTIONS)?,
        };
        let outbound = OutboundConfig {
            listen_addr: parse(s, ENV_OUTBOUND_LISTEN_ADDR, parse_addr)?
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4140))),
            detect_timeout: parse(s, ENV_OUTBOUND_DETECT_TIMEOUT, parse_duration)?
                .unwrap_or(DEFAULT_DETECT_TIMEOUT),
            connect_timeout: parse(s, ENV_OUTBOUND_CONNECT_TIMEOUT, parse_duration)?
                .unwrap_or(Duration::from_secs(1)),
            response_timeout: parse(s, ENV_OUTBOUND_RESPONSE_TIMEOUT, parse_duration)?,
            upgrade_http1: parse(s, ENV_OUTBOUND_UPGRADE_HTTP1, parse_bool)?.unwrap_or(true),
            opaque_ports: parse(s, ENV_OUTBOUND_OPAQUE_PORTS, parse_ports)?
                .unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.to_vec()),
            local_listeners: parse(s, ENV_LOCAL_LISTENERS, parse_local_listeners)?
                .unwrap_or_default(),
            static_endpoints: parse(s, ENV_STATIC_ENDPOINTS, parse_static_endpoints)?
                .unwrap_or_default(),
            max_idle_per_endpoint: parse(s, ENV_OUTBOUND_IDLE_CONNECTIONS, |v| {
                v.parse::<usize>().map_err(|e| e.to_string())
            })?
            .unwrap_or(DEFAULT_MAX_IDLE_PER_ENDPOINT),
            balance: {
                let d = crate::balance::BalanceConfig::default();
                crate::balance::BalanceConfig {
                    default_rtt: parse(s, ENV_BALANCE_DEFAULT_RTT, parse_nonzero_duration)?
                        .unwrap_or(d.default_rtt),
                    decay: parse(s, ENV_BALANCE_DECAY, parse_nonzero_duration)?.unwrap_or(d.decay),
                    failfast: parse(s, ENV_OUTBOUND_FAILFAST_TIMEOUT, parse_duration)?
                        .unwrap_or(d.failfast),
                    ..d
                }
            },
            discovery_idle_timeout: parse(
                s,
                ENV_OUTBOUND_DISCOVERY_IDLE_TIMEOUT,
                parse_nonzero_duration,
            )?
            .unwrap_or(Duration::from_secs(5)),
            limits: parse_limits(s, ENV_OUTBOUND_MAX_IN_FLIGHT, ENV_OUTBOUND_MAX_CONNECTIONS)?,
            proxy_allow: parse(
                s,
                ENV_OUTBOUND_PROXY_ALLOW,
                crate::transport::ProxyAllow::parse,
            )?
            .unwrap_or_else(|| crate::transport::ProxyAllow {
                external: true,
                ..Default::default()
            }),
        };
        let admin = AdminConfig {
            listen_addr: parse(s, ENV_ADMIN_LISTEN_ADDR, parse_addr)?
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4191))),
            shutdown_endpoint_enabled: parse(s, ENV_SHUTDOWN_ENDPOINT_ENABLED, parse_bool)?
                .unwrap_or(true),
        };
        let cores = parse(s, ENV_CORES, |v| match v.parse::<usize>() {
            Ok(0) => Err("must be at least 1".to_string()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        })?
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let log_level = parse(s, ENV_LOG, |v| {
            crate::log::parse_filter(v)
                .map(|_| v.to_string())
                .map_err(|e| e.to_string())
        })?
        .unwrap_or_else(|| "warn,linkerd_proxy=info".to_string());
        let log_format = parse(s, ENV_LOG_FORMAT, |v| {
            match v.to_ascii_lowercase().as_str() {
                "plain" => Ok(LogFormat::Plain),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `plain` or `json`".to_string()),
            }
        })?
        .unwrap_or(LogFormat::Plain);

        let identity = parse_identity(s)?;
        let destination = parse_destination(s)?;
        if let Some(d) = &destination
            && d.svc_name.is_some()
            && identity.is_none()
        {
            return Err(ConfigError {
                name: ENV_DESTINATION_SVC_NAME,
                value: d.svc_name.clone().unwrap_or_default(),
                reason: "talking mTLS to the destination service needs the proxy's identity \
                         (LINKERD2_PROXY_IDENTITY_*)"
                    .into(),
            });
        }
        let policy = parse_policy(s)?;
        if let Some(p) = &policy.service
            && p.svc_name.is_some()
            && identity.is_none()
        {
            return Err(ConfigError {
                name: ENV_POLICY_SVC_NAME,
                value: p.svc_name.clone().unwrap_or_default(),
                reason: "talking mTLS to the policy service needs the proxy's identity \
                         (LINKERD2_PROXY_IDENTITY_*)"
                    .into(),
            });
        }
        let trace = parse_trace(s, identity.is_some())?;
        let access_log = parse_access_log(s)?;
        let mut outbound = outbound;
        // The control plane is never reached through HTTP-proxy mode.
        let control_plane = [
            identity.as_ref().map(|i| i.svc_addr.as_str()),
            destination.as_ref().map(|d| d.svc_addr.as_str()),
            policy.service.as_ref().map(|p| p.svc_addr.as_str()),
            trace.as_ref().map(|t| t.collector_addr.as_str()),
        ];
        outbound.proxy_allow.control_plane = control_plane
            .into_iter()
            .flatten()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .collect();
        outbound.proxy_allow.admin_ports = crate::transport::CONTROL_PLANE_ADMIN_PORTS.to_vec();
        outbound
            .proxy_allow
            .admin_ports
            .push(admin.listen_addr.port());
        let config = Config {
            trace,
            access_log,
            identity,
            destination,
            policy,
            inbound,
            outbound,
            admin,
            shutdown_grace_period: parse(s, ENV_SHUTDOWN_GRACE_PERIOD, parse_duration)?
                .unwrap_or(Duration::from_secs(120)),
            cores,
            log_level,
            log_format,
        };
        config.check_listeners_distinct()?;
        Ok(config)
    }

    fn check_listeners_distinct(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<(SocketAddr, &'static str)> = vec![
            (self.inbound.listen_addr, ENV_INBOUND_LISTEN_ADDR),
            (self.outbound.listen_addr, ENV_OUTBOUND_LISTEN_ADDR),
            (self.admin.listen_addr, ENV_ADMIN_LISTEN_ADDR),
        ];
        for l in &self.outbound.local_listeners {
            seen.push((l.listen_addr, ENV_LOCAL_LISTENERS));
        }
        for (i, (a, name)) in seen.iter().enumerate() {
            if a.port() == 0 {
                continue;
            }
            if let Some((_, other)) = seen[..i].iter().find(|(b, _)| b == a) {
                return Err(ConfigError {
                    name,
                    value: a.to_string(),
                    reason: format!("address is already used by {other}"),
                });
            }
        }
        // Forwarding inbound connections to one of the proxy's own listeners would loop.
        if let Some(fwd) = self.inbound.forward_addr
            && let Some((_, other)) = seen.iter().find(|(l, _)| *l == fwd && l.port() != 0)
        {
            return Err(ConfigError {
                name: ENV_INBOUND_FORWARD_ADDR,
                value: fwd.to_string(),
                reason: format!("is the proxy's own listener ({other}): it would loop"),
            });
        }
        Ok(())
    }
}

/// One direction's limits; the header-read timeout is shared by both.
fn parse_limits(
    s: &dyn Strings,
    in_flight: &'static str,
    connections: &'static str,
) -> Result<Limits, ConfigError> {
    let positive = |v: &str| match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    };
    Ok(Limits {
        max_in_flight: parse(s, in_flight, positive)?.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        max_connections: parse(s, connections, positive)?.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        header_read_timeout: parse(s, ENV_HTTP_HEADER_READ_TIMEOUT, parse_nonzero_duration)?
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
    })
}

/// Identity is enabled when any of its variables is set; then the trust anchors, the local
/// name, the service address and the token file are all required.
fn parse_identity(s: &dyn Strings) -> Result<Option<crate::identity::IdentityConfig>, ConfigError> {
    let get = |name| s.get(name).filter(|v| !v.trim().is_empty());
    let anchors = get(ENV_IDENTITY_TRUST_ANCHORS);
    let local_name = get(ENV_IDENTITY_LOCAL_NAME);
    let svc_addr = get(ENV_IDENTITY_SVC_ADDR);
    if anchors.is_none() && local_name.is_none() && svc_addr.is_none() {
        return Ok(None);
    }
    let required = |name: &'static str, v: Option<String>| {
        v.ok_or_else(|| ConfigError {
            name,
            value: String::new(),
            reason: "required when identity is configured".into(),
        })
    };
    let anchors = required(ENV_IDENTITY_TRUST_ANCHORS, anchors)?;
    if let Err(e) = crate::tls::TrustRoots::from_pem(&anchors) {
        return Err(ConfigError {
            name: ENV_IDENTITY_TRUST_ANCHORS,
            value: "<PEM>".into(),
            reason: e.to_string(),
        });
    }
    let local_name = required(ENV_IDENTITY_LOCAL_NAME, local_name)?;
    if let Err(e) = local_name.parse::<proto::id::IdentityName>() {
        return Err(ConfigError {
            name: ENV_IDENTITY_LOCAL_NAME,
            value: local_name,
            reason: e.to_string(),
        });
    }
    let svc_addr = required(ENV_IDENTITY_SVC_ADDR, svc_addr)?;
    check_authority(svc_addr.trim()).map_err(|reason| ConfigError {
        name: ENV_IDENTITY_SVC_ADDR,
        value: svc_addr.clone(),
        reason,
    })?;
    let token_file = required(ENV_IDENTITY_TOKEN_FILE, get(ENV_IDENTITY_TOKEN_FILE))?;
    let min_refresh =
        parse(s, ENV_IDENTITY_MIN_REFRESH, parse_duration)?.unwrap_or(Duration::from_secs(10));
    let max_refresh = parse(s, ENV_IDENTITY_MAX_REFRESH, parse_duration)?
        .unwrap_or(Duration::from_secs(24 * 3600));
    if min_refresh > max_refresh || min_refresh.is_zero() {
        return Err(ConfigError {
            name: ENV_IDENTITY_MIN_REFRESH,
            value: format!("{min_refresh:?}"),
            reason: format!("must be non-zero and at most {ENV_IDENTITY_MAX_REFRESH}"),
        });
    }
    Ok(Some(crate::identity::IdentityConfig {
        local_name: local_name.trim().trim_end_matches('.').to_string(),
        trust_anchors_pem: anchors,
        token_file: token_file.trim().into(),
        svc_addr: svc_addr.trim().trim_end_matches('.').to_string(),
        svc_name: get(ENV_IDENTITY_SVC_NAME).map(|n| n.trim().to_string()),
        dir: get(ENV_IDENTITY_DIR).map(|d| d.trim().into()),
        min_refresh,
        max_refresh,
    }))
}

/// The inbound default policy, and the policy service when `LINKERD2_PROXY_POLICY_SVC_ADDR` is
/// set (which then needs `LINKERD2_PROXY_POLICY_WORKLOAD`).
fn parse_policy(
    s: &dyn Strings,
) -> Result<crate::inbound::policy::client::InboundPolicyConfig, ConfigError> {
    use crate::inbound::policy::{
        DefaultPolicy, Net,
        client::{InboundPolicyConfig, PolicyServiceConfig, default_cluster_networks},
    };
    let default = parse(s, ENV_INBOUND_DEFAULT_POLICY, |v| {
        v.parse::<DefaultPolicy>()
    })?
    .unwrap_or(DefaultPolicy::AllUnauthenticated);
    let cluster_networks = parse(s, ENV_POLICY_CLUSTER_NETWORKS, |v| {
        list(v).map(|n| n.parse::<Net>()).collect()
    })?
    .unwrap_or_else(default_cluster_networks);
    let get = |name| s.get(name).filter(|v| !v.trim().is_empty());
    let service = match get(ENV_POLICY_SVC_ADDR) {
        None => None,
        Some(addr) => {
            let addr = addr.trim().to_string();
            check_authority(&addr).map_err(|reason| ConfigError {
                name: ENV_POLICY_SVC_ADDR,
                value: addr.clone(),
                reason,
            })?;
            let workload = get(ENV_POLICY_WORKLOAD).ok_or_else(|| ConfigError {
                name: ENV_POLICY_WORKLOAD,
                value: String::new(),
                reason: "required with LINKERD2_PROXY_POLICY_SVC_ADDR: the workload whose \
                         policy to watch, {\"ns\":\"…\",\"pod\":\"…\"}"
                    .into(),
            })?;
            Some(PolicyServiceConfig {
                svc_addr: addr,
                svc_name: get(ENV_POLICY_SVC_NAME).map(|n| n.trim().to_string()),
                workload: workload.trim().to_string(),
                ports: parse(s, ENV_INBOUND_PORTS, parse_ports)?.unwrap_or_default(),
            })
        }
    };
    Ok(InboundPolicyConfig {
        default,
        cluster_networks,
        service,
    })
}

/// Discovery is on when `LINKERD2_PROXY_DESTINATION_SVC_ADDR` is set.
fn parse_destination(
    s: &dyn Strings,
) -> Result<Option<crate::destination::DestinationConfig>, ConfigError> {
    let get = |name| s.get(name).filter(|v| !v.trim().is_empty());
    let Some(addr) = get(ENV_DESTINATION_SVC_ADDR) else {
        return Ok(None);
    };
    let addr = addr.trim().to_string();
    check_authority(&addr).map_err(|reason| ConfigError {
        name: ENV_DESTINATION_SVC_ADDR,
        value: addr.clone(),
        reason,
    })?;
    let suffixes = get(ENV_DESTINATION_SUFFIXES)
        .unwrap_or_else(|| "svc.cluster.local.".into())
        .split(',')
        .map(|x| x.trim().trim_matches('.').to_ascii_lowercase())
        .collect();
    Ok(Some(crate::destination::DestinationConfig {
        svc_addr: addr,
        svc_name: get(ENV_DESTINATION_SVC_NAME).map(|n| n.trim().to_string()),
        context: get(ENV_DESTINATION_CONTEXT).unwrap_or_default(),
        suffixes,
    }))
}

pub mod sidecar;

#[cfg(test)]
mod tests;
