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
            if [4140, 4143, 4191].contains(&w.port) {
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
            if !load.path.starts_with('/') {
                bail!("load.path {:?} must start with '/'", load.path);
            }
            if load.rps == 0 || load.rps > 10_000 {
                bail!("load.rps {} must be 1-10000", load.rps);
            }
        }
        Ok(())
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
        ];
        for (text, want) in cases {
            let err = format!("{:#}", MeshFile::parse(text).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
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
