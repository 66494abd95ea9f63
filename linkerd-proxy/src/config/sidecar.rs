//! A sidecar's environment, built from typed values: what a launcher (`mesh up`, a test, a
//! benchmark) sets to start a proxy as a process, named by this module's own `ENV_*`
//! constants, so a launcher cannot misspell a variable or drift from what [`Config`] parses.
//!
//! ```
//! use linkerd_proxy::config::sidecar::SidecarEnv;
//! let vars = SidecarEnv::new()
//!     .inbound("127.0.0.10:4143".parse().unwrap())
//!     .outbound("127.0.0.10:4140".parse().unwrap())
//!     .admin("127.0.0.10:4191".parse().unwrap())
//!     .inbound_forward("127.0.0.10:8080".parse().unwrap())
//!     .into_vars();
//! assert_eq!(vars[0], ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.10:4143".to_string()));
//! ```
//!
//! [`Config`]: super::Config

use super::*;
use std::path::PathBuf;

/// The variables of one sidecar, in the order they were set. Each setter replaces an earlier
/// value of the same variable.
#[derive(Clone, Debug, Default)]
pub struct SidecarEnv {
    vars: Vec<(&'static str, String)>,
}

/// How the proxy gets its certificate (`LINKERD2_PROXY_IDENTITY_*`).
#[derive(Clone, Debug)]
pub struct Identity {
    /// PEM bundle of the mesh's trust anchors.
    pub trust_anchors_pem: String,
    /// This proxy's identity, e.g. `web.default.serviceaccount.identity.linkerd.cluster.local`.
    pub local_name: String,
    /// The identity service, `host:port` (plaintext when it is a loopback address).
    pub svc_addr: String,
    /// The token sent with every `Certify`.
    pub token_file: PathBuf,
    /// The identity service's own identity, for a non-loopback address.
    pub svc_name: Option<String>,
}

/// The workload whose inbound policy the proxy watches (`LINKERD2_PROXY_POLICY_WORKLOAD`).
#[derive(Clone, Debug)]
pub struct PolicyWorkload {
    pub namespace: String,
    pub pod: String,
}

/// One logical name resolved without discovery: `host:port` and its endpoints, each with the
/// identity of its proxy when it is meshed.
#[derive(Clone, Debug)]
pub struct StaticEndpoint {
    pub authority: String,
    pub endpoints: Vec<(SocketAddr, Option<String>)>,
}

impl SidecarEnv {
    pub fn new() -> Self {
        Self::default()
    }

    fn set(mut self, name: &'static str, value: String) -> Self {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value));
        self
    }

    /// `LINKERD2_PROXY_INBOUND_LISTEN_ADDR`.
    pub fn inbound(self, addr: SocketAddr) -> Self {
        self.set(ENV_INBOUND_LISTEN_ADDR, addr.to_string())
    }

    /// `LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR`.
    pub fn outbound(self, addr: SocketAddr) -> Self {
        self.set(ENV_OUTBOUND_LISTEN_ADDR, addr.to_string())
    }

    /// `LINKERD2_PROXY_ADMIN_LISTEN_ADDR`.
    pub fn admin(self, addr: SocketAddr) -> Self {
        self.set(ENV_ADMIN_LISTEN_ADDR, addr.to_string())
    }

    /// `MESH_PROXY_INBOUND_FORWARD_ADDR`: where connections made directly to the inbound
    /// listener go (the app, in local mode).
    pub fn inbound_forward(self, addr: SocketAddr) -> Self {
        self.set(ENV_INBOUND_FORWARD_ADDR, addr.to_string())
    }

    /// `LINKERD2_PROXY_IDENTITY_*`.
    pub fn identity(self, id: Identity) -> Self {
        let mut env = self
            .set(ENV_IDENTITY_TRUST_ANCHORS, id.trust_anchors_pem)
            .set(ENV_IDENTITY_LOCAL_NAME, id.local_name)
            .set(ENV_IDENTITY_SVC_ADDR, id.svc_addr)
            .set(
                ENV_IDENTITY_TOKEN_FILE,
                id.token_file.to_string_lossy().into_owned(),
            );
        if let Some(name) = id.svc_name {
            env = env.set(ENV_IDENTITY_SVC_NAME, name);
        }
        env
    }

    /// `LINKERD2_PROXY_DESTINATION_SVC_ADDR` and the suffixes resolved through it (each like
    /// `demo.svc.cluster.local.`).
    pub fn destination<S: AsRef<str>>(self, svc_addr: impl Into<String>, suffixes: &[S]) -> Self {
        let suffixes: Vec<&str> = suffixes.iter().map(AsRef::as_ref).collect();
        let env = self.set(ENV_DESTINATION_SVC_ADDR, svc_addr.into());
        if suffixes.is_empty() {
            env
        } else {
            env.set(ENV_DESTINATION_SUFFIXES, suffixes.join(","))
        }
    }

    /// `LINKERD2_PROXY_POLICY_SVC_ADDR`, the workload and the inbound ports whose policy it
    /// watches.
    pub fn policy(
        self,
        svc_addr: impl Into<String>,
        workload: PolicyWorkload,
        ports: &[u16],
    ) -> Self {
        let workload = format!(
            "{{\"ns\":{},\"pod\":{}}}",
            json_string(&workload.namespace),
            json_string(&workload.pod)
        );
        self.set(ENV_POLICY_SVC_ADDR, svc_addr.into())
            .set(ENV_POLICY_WORKLOAD, workload)
            .set(ENV_INBOUND_PORTS, join(ports))
    }

    /// `MESH_PROXY_STATIC_ENDPOINTS`.
    pub fn static_endpoints(self, names: &[StaticEndpoint]) -> Self {
        if names.is_empty() {
            return self;
        }
        let value = names
            .iter()
            .map(|n| {
                let eps: Vec<String> = n
                    .endpoints
                    .iter()
                    .map(|(addr, id)| match id {
                        Some(id) => format!("{addr}#{id}"),
                        None => addr.to_string(),
                    })
                    .collect();
                format!("{}={}", n.authority, eps.join("|"))
            })
            .collect::<Vec<_>>()
            .join(";");
        self.set(ENV_STATIC_ENDPOINTS, value)
    }

    /// `MESH_PROXY_LOCAL_LISTENERS`: opaque-TCP listeners forwarding to logical services.
    pub fn local_listeners(self, listeners: &[LocalListener]) -> Self {
        if listeners.is_empty() {
            return self;
        }
        let value = listeners
            .iter()
            .map(|l| format!("{}={}>{}", l.name, l.listen_addr, l.target))
            .collect::<Vec<_>>()
            .join(",");
        self.set(ENV_LOCAL_LISTENERS, value)
    }

    /// `LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION` (replaces the default list).
    pub fn inbound_opaque_ports(self, ports: &[u16]) -> Self {
        self.set(ENV_INBOUND_OPAQUE_PORTS, join(ports))
    }

    /// `MESH_PROXY_OUTBOUND_PROXY_ALLOW`: what HTTP-proxy mode may reach besides mesh
    /// destinations (`external`, CIDRs, IPs, `IP:port`, or `none`).
    pub fn outbound_proxy_allow<S: AsRef<str>>(self, items: &[S]) -> Self {
        let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
        self.set(ENV_OUTBOUND_PROXY_ALLOW, items.join(","))
    }

    /// `LINKERD2_PROXY_CORES`.
    pub fn cores(self, cores: usize) -> Self {
        self.set(ENV_CORES, cores.to_string())
    }

    /// `LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD`.
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.set(
            ENV_SHUTDOWN_GRACE_PERIOD,
            format!("{}ms", grace.as_millis()),
        )
    }

    /// `LINKERD2_PROXY_LOG`.
    pub fn log(self, filter: impl Into<String>) -> Self {
        self.set(ENV_LOG, filter.into())
    }

    /// The variables, for `Command::envs`.
    pub fn into_vars(self) -> Vec<(&'static str, String)> {
        self.vars
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON string literal (the workload's names are DNS labels, but nothing here relies on it).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses_back_into_the_config() {
        let ip = |s: &str| s.parse::<SocketAddr>().unwrap();
        let anchor = rcgen::CertificateParams::new(vec!["root".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let vars = SidecarEnv::new()
            .inbound(ip("127.0.0.10:4143"))
            .outbound(ip("127.0.0.10:4140"))
            .admin(ip("127.0.0.10:4191"))
            .inbound_forward(ip("127.0.0.10:8080"))
            .identity(Identity {
                trust_anchors_pem: anchor,
                local_name: "web.demo.serviceaccount.identity.linkerd.cluster.local".into(),
                svc_addr: "127.0.0.9:8080".into(),
                token_file: "/tmp/web.token".into(),
                svc_name: None,
            })
            .destination("127.0.0.9:8086", &["demo.svc.cluster.local."])
            .policy(
                "127.0.0.9:8090",
                PolicyWorkload {
                    namespace: "demo".into(),
                    pod: "web".into(),
                },
                &[8080],
            )
            .static_endpoints(&[StaticEndpoint {
                authority: "db.local:5432".into(),
                endpoints: vec![
                    (
                        ip("127.0.0.2:4143"),
                        Some("db.demo.serviceaccount.identity.linkerd.cluster.local".into()),
                    ),
                    (ip("127.0.0.3:5432"), None),
                ],
            }])
            .local_listeners(&[LocalListener {
                name: "cache".into(),
                listen_addr: ip("127.0.0.10:6379"),
                target: "cache.demo.svc.cluster.local:6379".into(),
            }])
            .inbound_opaque_ports(&[6379, 5432])
            .outbound_proxy_allow(&["external", "127.0.0.1:5432"])
            .cores(1)
            .shutdown_grace(Duration::from_secs(5))
            .log("warn")
            .log("warn,linkerd_proxy=info")
            .into_vars();
        // A setter called twice keeps one variable, the last value.
        assert_eq!(vars.iter().filter(|(n, _)| *n == ENV_LOG).count(), 1);
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        let c = Config::from_strings(&map).unwrap();
        assert_eq!(c.inbound.listen_addr, ip("127.0.0.10:4143"));
        assert_eq!(c.outbound.listen_addr, ip("127.0.0.10:4140"));
        assert_eq!(c.admin.listen_addr, ip("127.0.0.10:4191"));
        assert_eq!(c.inbound.forward_addr, Some(ip("127.0.0.10:8080")));
        let id = c.identity.unwrap();
        assert_eq!(id.svc_addr, "127.0.0.9:8080");
        assert_eq!(
            id.local_name,
            "web.demo.serviceaccount.identity.linkerd.cluster.local"
        );
        let dst = c.destination.unwrap();
        assert_eq!(dst.svc_addr, "127.0.0.9:8086");
        assert_eq!(dst.suffixes, vec!["demo.svc.cluster.local".to_string()]);
        let policy = c.policy.service.unwrap();
        assert_eq!(policy.workload, r#"{"ns":"demo","pod":"web"}"#);
        assert_eq!(policy.ports, vec![8080]);
        assert_eq!(c.outbound.static_endpoints.len(), 1);
        assert_eq!(c.outbound.static_endpoints[0].1.len(), 2);
        assert_eq!(c.outbound.local_listeners[0].name, "cache");
        assert_eq!(c.inbound.opaque_ports, vec![5432, 6379]);
        assert!(c.outbound.proxy_allow.external);
        assert!(c.outbound.proxy_allow.permits(ip("127.0.0.1:5432")));
        assert!(!c.outbound.proxy_allow.permits(ip("127.0.0.1:5433")));
        assert_eq!(c.cores, 1);
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(5));
        assert_eq!(c.log_level, "warn,linkerd_proxy=info");
    }

    #[test]
    fn names_are_json_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
