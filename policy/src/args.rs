//! `mesh policy …`: the command line (clap, with `MESH_POLICY_*` environment fallbacks).

use crate::{
    Error,
    k8s::KubeApiConfig,
    model::{ClusterConfig, DefaultPolicy, default_cluster_networks, parse_nets},
    server::{Config, Source},
};
use clap::{ArgGroup, Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

#[derive(Debug, Parser)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the policy service (InboundServerPolicies and OutboundPolicies on --addr).
    Serve(Box<ServeArgs>),
    /// Write the CRDs this service reads (generated from its types) into DIR as YAML.
    Crds {
        /// Where to write them (`policy/crds` in the repository); `-` prints them.
        #[arg(default_value = "policy/crds")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["registry", "kubernetes"])))]
pub struct ServeArgs {
    #[arg(long, env = "MESH_POLICY_ADDR", default_value = "0.0.0.0:8090")]
    pub addr: SocketAddr,
    #[arg(long, env = "MESH_POLICY_ADMIN_ADDR", default_value = "127.0.0.1:9997")]
    pub admin_addr: SocketAddr,
    /// The registry YAML file (the destination service's, with policy sections; watched).
    #[arg(long, env = "MESH_POLICY_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// How often the registry file is checked, in milliseconds.
    #[arg(long, env = "MESH_POLICY_REGISTRY_POLL_MS", default_value_t = 500)]
    pub registry_poll_ms: u64,
    /// Watch Pods, Services, Namespaces and the policy resources (in-cluster config).
    #[arg(long, env = "MESH_POLICY_KUBERNETES")]
    pub kubernetes: bool,
    #[arg(long, env = "MESH_POLICY_KUBE_API_URL", requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    #[arg(long, env = "MESH_POLICY_KUBE_CA", requires = "kubernetes")]
    pub kube_ca: Option<PathBuf>,
    #[arg(long, env = "MESH_POLICY_KUBE_TOKEN_FILE", requires = "kubernetes")]
    pub kube_token_file: Option<PathBuf>,
    /// The policy for ports no Server selects: all-unauthenticated, all-authenticated,
    /// cluster-unauthenticated, cluster-authenticated, audit or deny.
    #[arg(
        long,
        env = "MESH_POLICY_DEFAULT_POLICY",
        default_value = "all-unauthenticated"
    )]
    pub default_policy: DefaultPolicy,
    /// The networks of the `cluster-*` policies (comma-separated CIDRs).
    #[arg(long, env = "MESH_POLICY_CLUSTER_NETWORKS")]
    pub cluster_networks: Option<String>,
    /// Who may reach the synthesized probe routes (default: everyone).
    #[arg(
        long,
        env = "MESH_POLICY_PROBE_NETWORKS",
        default_value = "0.0.0.0/0,::/0"
    )]
    pub probe_networks: String,
    #[arg(
        long,
        env = "MESH_POLICY_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    #[arg(
        long,
        env = "MESH_POLICY_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    #[arg(long, env = "MESH_POLICY_CONTROL_PLANE_NS", default_value = "linkerd")]
    pub control_plane_ns: String,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "MESH_POLICY_LOG", default_value = "info")]
    pub log_level: tracing::Level,
}

/// Runs a `mesh policy` subcommand.
pub async fn run(args: Args) -> Result<ExitCode, Error> {
    match args.command {
        Command::Serve(a) => serve(*a).await,
        Command::Crds { dir } => {
            let crds = crate::resources::crd_yamls().map_err(Error::Crds)?;
            if dir.as_os_str() == "-" {
                for (_, yaml) in crds {
                    linkerd_control::print(&yaml).map_err(Error::Stdout)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Crds(format!("{}: {e}", dir.display())))?;
            for (name, yaml) in crds {
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, yaml)
                    .map_err(|e| Error::Crds(format!("{}: {e}", path.display())))?;
                linkerd_control::print(&format!("{}\n", path.display())).map_err(Error::Stdout)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The cluster settings the flags describe.
pub fn cluster_config(a: &ServeArgs) -> Result<ClusterConfig, Error> {
    let nets =
        |flag: &str, s: &str| parse_nets(s).map_err(|e| Error::Usage(format!("{flag}: {e}")));
    Ok(ClusterConfig {
        default_policy: a.default_policy,
        cluster_networks: match &a.cluster_networks {
            Some(s) => nets("--cluster-networks", s)?,
            None => default_cluster_networks(),
        },
        probe_networks: nets("--probe-networks", &a.probe_networks)?,
        cluster_domain: a.cluster_domain.trim_matches('.').to_string(),
        control_plane_ns: a.control_plane_ns.clone(),
        trust_domain: a.trust_domain.clone(),
        ..ClusterConfig::default()
    })
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    let _ = tracing_subscriber::fmt()
        .with_max_level(a.log_level)
        .with_writer(std::io::stderr)
        .try_init();
    let source = match &a.registry {
        Some(path) => Source::Registry {
            path: path.clone(),
            interval: Duration::from_millis(a.registry_poll_ms.max(10)),
        },
        None => Source::Kubernetes(kube_config(&a)?),
    };
    let config = Config {
        addr: a.addr,
        admin_addr: a.admin_addr,
        source,
        cluster: cluster_config(&a)?,
        grace: Duration::from_secs(5),
    };
    crate::serve(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn kube_config(a: &ServeArgs) -> Result<KubeApiConfig, Error> {
    let mut c = KubeApiConfig::default();
    if let Some(url) = &a.kube_api_url {
        c.api_url = Some(
            url.parse()
                .map_err(|_| Error::Usage(format!("--kube-api-url {url:?} is not a URL")))?,
        );
    }
    c.ca_file = a.kube_ca.clone();
    c.token_file = a.kube_token_file.clone();
    Ok(c)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from(["policy", "serve", "--registry", "r.yaml"]).unwrap();
        let Command::Serve(s) = a.command else {
            panic!()
        };
        assert_eq!(s.addr, "0.0.0.0:8090".parse().unwrap());
        assert_eq!(s.admin_addr, "127.0.0.1:9997".parse().unwrap());
        assert_eq!(s.default_policy, DefaultPolicy::AllUnauthenticated);
        assert!(Args::try_parse_from(["policy", "serve"]).is_err());
        assert!(
            Args::try_parse_from([
                "policy",
                "serve",
                "--registry",
                "r",
                "--default-policy",
                "nope"
            ])
            .is_err()
        );
        let a = Args::try_parse_from([
            "policy",
            "serve",
            "--kubernetes",
            "--default-policy",
            "deny",
            "--cluster-networks",
            "10.0.0.0/8,fd00::/8",
        ])
        .unwrap();
        let Command::Serve(s) = a.command else {
            panic!()
        };
        let c = cluster_config(&s).unwrap();
        assert_eq!(c.default_policy, DefaultPolicy::Deny);
        assert_eq!(c.cluster_networks.len(), 2);
    }
}
