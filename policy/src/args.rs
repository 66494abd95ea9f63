//! `mesh policy …`: the command line (clap, with `MESH_POLICY_*` environment fallbacks).

use crate::{
    Error,
    model::{ClusterConfig, DefaultPolicy, default_cluster_networks, parse_nets},
    server::Config,
};
use clap::Subcommand;
use linkerd_control::args::SourceArgs;
use std::{path::PathBuf, process::ExitCode, time::Duration};

/// `mesh policy …`.
pub type Args = linkerd_control::args::Cli<Command>;

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

linkerd_control::names!(
    /// The policy service's environment variables (`MESH_POLICY_*`) and defaults.
    Names,
    "MESH_POLICY",
    "0.0.0.0:8090",
    "127.0.0.1:9997"
);

/// `serve`: the shared flags (`--addr`, `--admin-addr`, `--registry` or `--kubernetes`,
/// `--registry-poll-ms`, the `--kube-*` flags, the domains, `--log-level`) and the policy's.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs<Names>,
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
}

linkerd_control::deref_args!(ServeArgs => source: SourceArgs<Names>);

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
        control_plane_ns: a.ids.control_plane_ns.clone(),
        trust_domain: a.ids.trust_domain.clone(),
        ..ClusterConfig::default()
    })
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    a.init_log();
    let config = Config {
        addr: a.addr,
        admin_addr: a.admin_addr,
        source: a.source()?,
        cluster: cluster_config(&a)?,
        grace: Duration::from_secs(5),
    };
    crate::serve(config, linkerd_control::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
