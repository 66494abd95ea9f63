//! The `mesh up` file: which workloads to run, how to start them, what they serve and where
//! the load generator sends. The built-in demo is such a file (`examples/demo.yaml`); a
//! commented example of the format is `examples/mesh.yaml`.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::{collections::BTreeMap, path::Path};

/// The built-in demo, in the same format as a user's file.
pub const DEMO: &str = include_str!("../../../examples/demo.yaml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Services are `<service>.<namespace>.svc.cluster.local`; identities are
    /// `<workload>.<namespace>.serviceaccount.identity.linkerd.cluster.local`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    pub load: Option<LoadSpec>,
    /// Policy resources for the policy service, as its registry sections (`servers`,
    /// `authorizationPolicies`, `meshTLSAuthentications`, `networkAuthentications`,
    /// `httpLocalRateLimitPolicies`, `httpRoutes`, `grpcRoutes`, `namespaces`), each a list of
    /// `{name, namespace, spec}` with the Kubernetes resource's spec (see policy/README.md).
    #[serde(default)]
    pub policy: Option<BTreeMap<String, serde_json::Value>>,
    /// Circuit breaking for every service of the file: `consecutive` (the default: the
    /// Service annotation `balancer.linkerd.io/failure-accrual: consecutive`, so callers stop
    /// sending to an endpoint after 7 failures in a row and probe it again later) or `none`.
    /// `policy.serviceAnnotations` entries override it per service.
    #[serde(default, rename = "failureAccrual")]
    pub failure_accrual: FailureAccrual,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailureAccrual {
    #[default]
    Consecutive,
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Unique; also the workload's service account, hence its identity.
    pub name: String,
    /// The service it serves (default: its name). Several workloads may serve one service;
    /// each of them is then also a service of its own name (an HTTPRoute can split the shared
    /// service between them):
    /// the callers' sidecars balance over them.
    #[serde(default)]
    pub service: Option<String>,
    /// The port the app listens on, on the workload's own loopback address (`$MESH_IP`).
    pub port: u16,
    /// The app, run with `sh -c` (see the environment it gets in examples/mesh.yaml).
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Called from outside the mesh (the load generator), so its inbound traffic is
    /// plaintext; every other workload's inbound traffic must be mTLS.
    #[serde(default)]
    pub ingress: bool,
    /// What the app speaks on its port: `http` (HTTP/1, HTTP/2, gRPC; the default) or `tcp`
    /// (anything else: its port is opaque, relayed as TCP over mTLS without detection).
    #[serde(default)]
    pub protocol: Protocol,
    /// When the workload is ready to be in discovery: `tcp` (the default: its port accepts a
    /// connection), an HTTP path (`/healthz`: a GET answers 2xx or 3xx), or `none` (its app
    /// is running). Checked every 250 ms; three failures in a row take it out of discovery,
    /// one success brings it back.
    #[serde(default)]
    pub health: Health,
    /// What happens when the app exits: `never` (the default: the workload is reported
    /// failed), `on-failure` (restarted unless it exited 0) or `always`; restarts back off
    /// from 1 s to 30 s.
    #[serde(default)]
    pub restart: Restart,
    /// TCP services this workload calls: each gets a port on `$MESH_IP` (the service's own,
    /// or `port:`) where the sidecar listens and carries every connection over mTLS to the
    /// service's workloads, balanced per connection. The address is in `MESH_TCP_<SERVICE>`.
    #[serde(default)]
    pub uses: Vec<Use>,
    /// What the app may reach through its sidecar's HTTP proxy besides mesh services
    /// (`MESH_PROXY_OUTBOUND_PROXY_ALLOW`): `external`, CIDRs, IPs or `IP:port`. Default:
    /// `[external]`; a loopback service (a local database) must be listed.
    #[serde(default, rename = "outboundAllow")]
    pub outbound_allow: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Health {
    #[default]
    Tcp,
    Http(String),
    None,
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "tcp" => Ok(Health::Tcp),
            "none" => Ok(Health::None),
            p if p.starts_with('/') => Ok(Health::Http(p.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "health {other:?}: expected tcp, none, or an HTTP path starting with /"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Never,
    OnFailure,
    Always,
}

/// A TCP service a workload calls through a local port of its sidecar: `cache`, or
/// `{service: cache, port: 16379}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub service: String,
    /// The local port (default: the service's port).
    pub port: Option<u16>,
}

impl<'de> Deserialize<'de> for Use {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Name(String),
            Full(Full),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            service: String,
            #[serde(default)]
            port: Option<u16>,
        }
        Ok(match Form::deserialize(d)? {
            Form::Name(service) => Use {
                service,
                port: None,
            },
            Form::Full(f) => Use {
                service: f.service,
                port: f.port,
            },
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// The service the load generator calls, through the inbound sidecar of a workload
    /// serving it, as a client outside the mesh would.
    pub service: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_rps")]
    pub rps: u32,
}

fn default_namespace() -> String {
    "demo".into()
}

fn default_path() -> String {
    "/".into()
}

fn default_rps() -> u32 {
    20
}

impl WorkloadSpec {
    pub fn service(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }
}

/// The sidecar's own ports on each workload's address.
pub const SIDECAR_PORTS: [u16; 3] = [4140, 4143, 4191];

impl MeshFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{} is not a valid mesh file", path.display()))
    }

    pub fn demo() -> anyhow::Result<Self> {
        Self::parse(DEMO).context("the built-in demo is invalid")
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: MeshFile = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !is_dns_label(&self.namespace) {
            bail!(
                "namespace {:?} is not a DNS label (lowercase letters, digits and '-')",
                self.namespace
            );
        }
        if self.workloads.is_empty() {
            bail!("no workloads: list at least one under `workloads:`");
        }
        if self.workloads.len() > 200 {
            bail!(
                "{} workloads: at most 200 fit on loopback",
                self.workloads.len()
            );
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ports = BTreeMap::new();
        for w in &self.workloads {
            if !is_dns_label(&w.name) {
                bail!(
                    "workload name {:?} is not a DNS label (lowercase letters, digits and '-')",
                    w.name
                );
            }
            if !names.insert(w.name.as_str()) {
                bail!("two workloads are named {:?}", w.name);
            }
            if !is_dns_label(w.service()) {
                bail!(
                    "workload {:?}: service {:?} is not a DNS label",
                    w.name,
                    w.service()
                );
            }
            if w.port == 0 {
                bail!("workload {:?}: port must be 1-65535", w.name);
            }
            if SIDECAR_PORTS.contains(&w.port) {
                bail!(
                    "workload {:?}: port {} is the sidecar's (inbound 4143, outbound 4140, admin 4191)",
                    w.name,
                    w.port
                );
            }
            if w.command.trim().is_empty() {
                bail!("workload {:?}: command is empty", w.name);
            }
            if let Some(prev) = ports.insert(w.service(), w.port)
                && prev != w.port
            {
                bail!(
                    "service {:?} is served on ports {prev} and {} by different workloads; one service has one port here",
                    w.service(),
                    w.port
                );
            }
        }
        for w in &self.workloads {
            self.validate_workload(w, &ports)?;
        }
        // A workload serving a shared service is also its own service (for routes that split
        // traffic between versions), so its name must not be another service's.
        for w in &self.workloads {
            if w.service() != w.name && ports.contains_key(w.name.as_str()) {
                bail!(
                    "workload {:?} serves service {:?}, and its name is also a service: a workload \
                     of a shared service is addressable by its own name too, so rename one",
                    w.name,
                    w.service()
                );
            }
        }
        const POLICY_SECTIONS: &[&str] = &[
            "servers",
            "authorizationPolicies",
            "meshTLSAuthentications",
            "networkAuthentications",
            "httpLocalRateLimitPolicies",
            "httpRoutes",
            "grpcRoutes",
            "namespaces",
            "serviceAnnotations",
        ];
        for key in self.policy.iter().flat_map(|p| p.keys()) {
            if !POLICY_SECTIONS.contains(&key.as_str()) {
                bail!(
                    "policy.{key}: unknown section (expected one of {})",
                    POLICY_SECTIONS.join(", ")
                );
            }
        }
        if let Some(load) = &self.load {
            if !self.workloads.iter().any(|w| w.service() == load.service) {
                bail!(
                    "load.service {:?} is not served by any workload",
                    load.service
                );
            }
            if self
                .workloads
                .iter()
                .any(|w| w.service() == load.service && w.protocol == Protocol::Tcp)
            {
                bail!(
                    "load.service {:?} speaks TCP; the load generator sends HTTP",
                    load.service
                );
            }
            if !load.path.starts_with('/') {
                bail!("load.path {:?} must start with '/'", load.path);
            }
            if load.rps == 0 || load.rps > 10_000 {
                bail!("load.rps {} must be 1-10000", load.rps);
            }
        }
        Ok(())
    }

    fn validate_workload(
        &self,
        w: &WorkloadSpec,
        ports: &BTreeMap<&str, u16>,
    ) -> anyhow::Result<()> {
        let protocols: std::collections::BTreeSet<Protocol> = self
            .workloads
            .iter()
            .filter(|o| o.service() == w.service())
            .map(|o| o.protocol)
            .collect();
        if protocols.len() > 1 {
            bail!(
                "service {:?} is served as http by some workloads and tcp by others",
                w.service()
            );
        }
        if w.protocol == Protocol::Tcp && matches!(w.health, Health::Http(_)) {
            bail!(
                "workload {:?}: an HTTP health check on a tcp workload (use tcp or none)",
                w.name
            );
        }
        let mut local = std::collections::BTreeSet::new();
        for u in &w.uses {
            let Some(port) = ports.get(u.service.as_str()) else {
                bail!(
                    "workload {:?}: uses {:?}, which no workload serves",
                    w.name,
                    u.service
                );
            };
            let listen = u.port.unwrap_or(*port);
            if listen == 0 || listen == w.port || SIDECAR_PORTS.contains(&listen) {
                bail!(
                    "workload {:?}: the local port {listen} for {:?} is taken (by its app or \
                     its sidecar); give another with `port:`",
                    w.name,
                    u.service
                );
            }
            if !local.insert(listen) {
                bail!(
                    "workload {:?}: two services use local port {listen}",
                    w.name
                );
            }
        }
        if let Some(allow) = &w.outbound_allow {
            // As the sidecar will read it: a value it refuses is refused here, before anything
            // starts.
            use linkerd_proxy::config::{Config, ENV_OUTBOUND_PROXY_ALLOW};
            let value = allow.join(",");
            Config::from_strings(&[(ENV_OUTBOUND_PROXY_ALLOW, value.as_str())]).map_err(|e| {
                anyhow::anyhow!("workload {:?}: outboundAllow: {}", w.name, e.reason)
            })?;
        }
        Ok(())
    }

    /// Whether `service` is served as opaque TCP.
    pub fn is_tcp(&self, service: &str) -> bool {
        self.workloads
            .iter()
            .any(|w| w.service() == service && w.protocol == Protocol::Tcp)
    }

    /// Each service once, with its port, in the order the workloads list them.
    pub fn services(&self) -> Vec<(&str, u16)> {
        let mut out: Vec<(&str, u16)> = Vec::new();
        for w in &self.workloads {
            if !out.iter().any(|(s, _)| *s == w.service()) {
                out.push((w.service(), w.port));
            }
        }
        out
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The name of the environment variable that gives a service's address to every app:
/// `MESH_SVC_<SERVICE>` with `-` as `_`, upper case.
pub fn service_env(service: &str) -> String {
    format!(
        "MESH_SVC_{}",
        service.replace('-', "_").to_ascii_uppercase()
    )
}

/// The variable with the local address of a TCP service a workload uses: `MESH_TCP_<SERVICE>`.
pub fn tcp_env(service: &str) -> String {
    format!(
        "MESH_TCP_{}",
        service.replace('-', "_").to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_and_the_example_parse() {
        let demo = MeshFile::demo().unwrap();
        assert!(demo.workloads.len() >= 4);
        assert!(demo.workloads.iter().any(|w| w.ingress));
        let example = MeshFile::parse(include_str!("../../../examples/mesh.yaml")).unwrap();
        assert!(!example.workloads.is_empty());
        // The format's documentation shows policy, health checks and restarts.
        assert!(
            example
                .policy
                .as_ref()
                .is_some_and(|p| p.contains_key("authorizationPolicies"))
        );
        assert!(example.workloads.iter().any(|w| w.health != Health::Tcp));
        assert!(
            example
                .workloads
                .iter()
                .any(|w| w.restart != Restart::Never)
        );
        let redis = MeshFile::parse(include_str!("../../../examples/redis.yaml")).unwrap();
        assert!(redis.is_tcp("redis"));
        assert_eq!(redis.workloads[0].uses[0].service, "redis");
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let cases = [
            ("workloads: []", "no workloads"),
            (
                "workloads: [{name: A, port: 80, command: x}]",
                "not a DNS label",
            ),
            (
                "workloads: [{name: a, port: 80, command: x}, {name: a, port: 81, command: y}]",
                "two workloads are named",
            ),
            ("workloads: [{name: a, port: 4143, command: x}]", "sidecar"),
            (
                "workloads: [{name: a, port: 80, command: x}]\nload: {service: b}",
                "not served by any workload",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, colour: red}]",
                "colour",
            ),
            (
                "workloads: [{name: a, service: s, port: 80, command: x}, {name: b, service: s, port: 81, command: y}]",
                "ports 80 and 81",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, uses: [db]}]",
                "which no workload serves",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, uses: [{service: a, port: 4140}]}]",
                "local port 4140",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, protocol: tcp, health: /h}]",
                "HTTP health check on a tcp workload",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, health: ready}]",
                "expected tcp, none, or an HTTP path",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, restart: sometimes}]",
                "sometimes",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, outboundAllow: [localhost]}]",
                "outboundAllow",
            ),
            (
                "workloads: [{name: a, port: 80, command: x, protocol: tcp}]\nload: {service: a}",
                "speaks TCP",
            ),
            (
                "workloads: [{name: a, port: 80, command: x}]\nfailureAccrual: sometimes",
                "sometimes",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", MeshFile::parse(text).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_new_fields_have_defaults_and_short_forms() {
        let f = MeshFile::parse(
            "workloads:\n  - {name: web, port: 80, command: x, uses: [cache, {service: db, port: 15432}], health: /healthz, restart: on-failure, outboundAllow: [external, 127.0.0.1:9000]}\n  - {name: cache, port: 6379, command: x, protocol: tcp}\n  - {name: db, port: 5432, command: x, protocol: tcp, health: none}\n",
        )
        .unwrap();
        let web = &f.workloads[0];
        assert_eq!(
            web.uses,
            vec![
                Use {
                    service: "cache".into(),
                    port: None
                },
                Use {
                    service: "db".into(),
                    port: Some(15432)
                }
            ]
        );
        assert_eq!(web.health, Health::Http("/healthz".into()));
        assert_eq!(web.restart, Restart::OnFailure);
        assert_eq!(web.protocol, Protocol::Http);
        assert_eq!(f.workloads[1].health, Health::Tcp);
        assert_eq!(f.workloads[2].health, Health::None);
        assert_eq!(f.workloads[1].restart, Restart::Never);
        assert_eq!(f.failure_accrual, FailureAccrual::Consecutive);
        assert!(f.is_tcp("cache") && !f.is_tcp("web"));
        assert_eq!(tcp_env("my-db"), "MESH_TCP_MY_DB");
    }

    #[test]
    fn services_are_listed_once_with_their_port() {
        let f = MeshFile::parse(
            "workloads:\n  - {name: v1, service: api, port: 80, command: x}\n  - {name: v2, service: api, port: 80, command: x}\n  - {name: web, port: 81, command: x}\n",
        )
        .unwrap();
        assert_eq!(f.services(), vec![("api", 80), ("web", 81)]);
        assert_eq!(service_env("my-api"), "MESH_SVC_MY_API");
    }
}
