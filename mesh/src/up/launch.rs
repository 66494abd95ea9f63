//! The one way `mesh up` starts a workload's processes: its sidecar, with an environment built
//! from the proxy's own configuration names (`linkerd_proxy::config::sidecar::SidecarEnv`),
//! and its app, under `mesh supervise`, with the environment examples/mesh.yaml documents.

use super::config::{self, MeshFile, Protocol};
use super::control::{self, Endpoints};
use super::process::{self, log_file};
use super::workloads::{Workload, fqdn};
use anyhow::{Context, bail};
use linkerd_proxy::config::{
    DEFAULT_OPAQUE_PORTS, LocalListener,
    sidecar::{Identity, PolicyWorkload, SidecarEnv},
};
use rustix::process::Signal;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::process::Child;

/// How to start a sidecar: a proxy binary, or `mesh proxy`.
#[derive(Debug)]
pub struct ProxyCommand {
    pub program: PathBuf,
    pub args: Vec<&'static str>,
}

impl ProxyCommand {
    pub fn choose(exe: &Path, explicit: Option<&Path>) -> anyhow::Result<Self> {
        let builtin = Self {
            program: exe.to_path_buf(),
            args: vec!["proxy"],
        };
        match explicit {
            None => Ok(Self::standalone_beside(exe).unwrap_or(builtin)),
            Some(p) if p.as_os_str() == "builtin" => Ok(builtin),
            Some(p) if p.is_file() => Ok(Self {
                program: p.to_path_buf(),
                args: vec![],
            }),
            Some(p) => bail!("--proxy-bin {}: no such file", p.display()),
        }
    }

    /// `linkerd-proxy` in this binary's directory, if it was built with this binary (not more
    /// than ten minutes before it: an older one may be another version of the proxy).
    fn standalone_beside(exe: &Path) -> Option<Self> {
        let path = exe.parent()?.join("linkerd-proxy");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let (proxy, mesh) = (modified(&path)?, modified(exe)?);
        let fresh = proxy + Duration::from_secs(600) >= mesh;
        if !fresh {
            crate::out::errln!(
                "mesh up: not using {} (older than this binary; rebuild it with \
                 `cargo build --release -p mesh -p linkerd-proxy`): sidecars run `mesh proxy`",
                path.display()
            );
        }
        fresh.then(|| Self {
            program: path,
            args: vec![],
        })
    }

    pub fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// What starts a workload's processes.
#[derive(Debug)]
pub struct Launcher<'a> {
    pub exe: &'a Path,
    pub proxy: &'a ProxyCommand,
    pub file: &'a MeshFile,
    pub cp: &'a Endpoints,
    /// The instance directory (the apps' working directories are under it).
    pub dir: &'a Path,
    pub logs: &'a Path,
    /// The sidecars' trace export variables (`observe.rs`).
    pub trace_env: &'a [(&'static str, String)],
}

impl Launcher<'_> {
    /// The sidecar's environment, in the proxy's own terms.
    pub fn sidecar_env(&self, w: &Workload) -> Vec<(&'static str, String)> {
        let ns = &w.namespace;
        let mut env = SidecarEnv::new()
            .inbound(w.inbound())
            .outbound(w.outbound())
            .admin(w.admin())
            .inbound_forward(w.app_addr())
            .identity(Identity {
                trust_anchors_pem: self.cp.trust_anchor_pem.clone(),
                local_name: w.identity(),
                svc_addr: self.cp.addr(control::IDENTITY_PORT).to_string(),
                token_file: self.cp.tokens.join(format!("{}.token", w.name())),
                svc_name: None,
            })
            .destination(
                self.cp.addr(control::DESTINATION_PORT).to_string(),
                &[format!("{ns}.svc.cluster.local.")],
            )
            .policy(
                self.cp.addr(control::POLICY_PORT).to_string(),
                PolicyWorkload {
                    namespace: ns.clone(),
                    pod: w.name().to_string(),
                },
                &[w.spec.port],
            )
            .local_listeners(
                &w.uses(self.file)
                    .into_iter()
                    .map(|(svc, local, port)| LocalListener {
                        target: format!("{}:{port}", fqdn(&svc, ns)),
                        name: svc,
                        listen_addr: local,
                    })
                    .collect::<Vec<_>>(),
            )
            .cores(1)
            .shutdown_grace(Duration::from_secs(5))
            .log("warn,linkerd_proxy=info");
        if w.spec.protocol == Protocol::Tcp {
            let mut opaque = DEFAULT_OPAQUE_PORTS.to_vec();
            opaque.push(w.spec.port);
            opaque.sort_unstable();
            opaque.dedup();
            env = env.inbound_opaque_ports(&opaque);
        }
        if let Some(allow) = &w.spec.outbound_allow {
            env = env.outbound_proxy_allow(allow);
        }
        let mut vars = env.into_vars();
        vars.extend(self.trace_env.iter().cloned());
        vars.push((super::observe::Observe::SERVICE_NAME, w.name().to_string()));
        vars
    }

    pub fn spawn_sidecar(&self, w: &Workload) -> anyhow::Result<Child> {
        let mut cmd = process::command(&self.proxy.program, Signal::KILL);
        cmd.args(&self.proxy.args)
            .envs(self.sidecar_env(w))
            .stdout(log_file(self.logs, &format!("{}-proxy", w.name()))?)
            .stderr(log_file(self.logs, &format!("{}-proxy.err", w.name()))?)
            .spawn()
            .with_context(|| format!("cannot start the sidecar of {}", w.name()))
    }

    /// Runs the workload's command with `sh -c` under `mesh supervise`, in a working directory
    /// of its own, with the environment examples/mesh.yaml documents.
    pub fn spawn_app(&self, w: &Workload) -> anyhow::Result<Child> {
        let workdir = self.dir.join("work").join(w.name());
        crate::instance::private_dir(&workdir, false)?;
        let proxy = w.outbound().to_string();
        let mut cmd = process::command(self.exe, Signal::TERM);
        cmd.args(["supervise", "--", "sh", "-c"])
            .arg(&w.spec.command)
            .current_dir(&workdir)
            .env("MESH", self.exe)
            .env("MESH_IP", w.ip.to_string())
            .env("PORT", w.spec.port.to_string())
            .env("MESH_PROXY", &proxy)
            .env("http_proxy", format!("http://{proxy}"))
            .env("HTTP_PROXY", format!("http://{proxy}"))
            .env_remove("no_proxy")
            .env_remove("NO_PROXY");
        for (svc, port) in self.file.services() {
            cmd.env(
                config::service_env(svc),
                format!("{}:{port}", fqdn(svc, &self.file.namespace)),
            );
        }
        for (svc, local, _) in w.uses(self.file) {
            cmd.env(config::tcp_env(&svc), local.to_string());
        }
        cmd.envs(&w.spec.env)
            .stdout(log_file(self.logs, w.name())?)
            .stderr(log_file(self.logs, &format!("{}.err", w.name()))?)
            .spawn()
            .with_context(|| format!("cannot start {}", w.name()))
    }
}
