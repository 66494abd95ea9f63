//! `mesh destination …`: the command line (clap, with `MESH_DESTINATION_*` environment
//! fallbacks).

use crate::{
    Error, IdentityConfig,
    bench::{self, BenchOptions},
    k8s_watch::KubeApiConfig,
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
    /// Run the destination service (Get/GetProfile on --addr, metrics on --admin-addr).
    Serve(Box<ServeArgs>),
    /// Measure how long one endpoint change takes to reach every watcher, and the RSS;
    /// prints JSON. Watchers run in a child process (this binary, `bench-client`).
    Bench(BenchArgs),
    /// The watcher side of `bench` (started by it).
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["registry", "kubernetes"])))]
pub struct ServeArgs {
    #[arg(long, env = "MESH_DESTINATION_ADDR", default_value = "0.0.0.0:8086")]
    pub addr: SocketAddr,
    #[arg(
        long,
        env = "MESH_DESTINATION_ADMIN_ADDR",
        default_value = "127.0.0.1:9996"
    )]
    pub admin_addr: SocketAddr,
    /// A registry YAML file (watched; see destination/README.md for the schema).
    #[arg(long, env = "MESH_DESTINATION_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// How often the registry file is checked, in milliseconds.
    #[arg(long, env = "MESH_DESTINATION_REGISTRY_POLL_MS", default_value_t = 500)]
    pub registry_poll_ms: u64,
    /// Watch Services, EndpointSlices and Pods (in-cluster config).
    #[arg(long, env = "MESH_DESTINATION_KUBERNETES")]
    pub kubernetes: bool,
    /// API server URL instead of KUBERNETES_SERVICE_HOST/PORT (e.g. http://127.0.0.1:8001).
    #[arg(long, env = "MESH_DESTINATION_KUBE_API_URL", requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    /// CA bundle for the API server (default: the pod's service-account ca.crt).
    #[arg(long, env = "MESH_DESTINATION_KUBE_CA", requires = "kubernetes")]
    pub kube_ca: Option<PathBuf>,
    /// Bearer token file for the API server (default: the pod's service-account token).
    #[arg(
        long,
        env = "MESH_DESTINATION_KUBE_TOKEN_FILE",
        requires = "kubernetes"
    )]
    pub kube_token_file: Option<PathBuf>,
    #[arg(
        long,
        env = "MESH_DESTINATION_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    #[arg(
        long,
        env = "MESH_DESTINATION_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    #[arg(
        long,
        env = "MESH_DESTINATION_CONTROL_PLANE_NS",
        default_value = "linkerd"
    )]
    pub control_plane_ns: String,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "MESH_DESTINATION_LOG", default_value = "info")]
    pub log_level: tracing::Level,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Endpoint changes to time (alternately one endpoint removed and added back).
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
}

/// Runs a `mesh destination` subcommand.
pub async fn run(args: Args) -> Result<ExitCode, Error> {
    match args.command {
        Command::Serve(a) => serve(*a).await,
        Command::Bench(a) => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::Bench(format!("cannot find this executable: {e}")))?;
            // Re-run this binary's `… destination bench-client` (the arguments before
            // `bench` name this subcommand, whatever binary we are).
            let argv: Vec<String> = std::env::args().skip(1).collect();
            let pos = argv
                .iter()
                .position(|a| a == "bench")
                .ok_or_else(|| Error::Bench("cannot find `bench` in the arguments".into()))?;
            let mut client = vec![exe.into_os_string()];
            client.extend(argv[..pos].iter().map(Into::into));
            client.push("bench-client".into());
            let report = bench::run(BenchOptions {
                endpoints: a.endpoints,
                watchers: a.watchers,
                changes: a.changes,
                client,
            })
            .await?;
            let json =
                serde_json::to_string_pretty(&report).map_err(|e| Error::Bench(e.to_string()))?;
            linkerd_control::print(&format!("{json}\n")).map_err(Error::Stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchClient(a) => {
            bench::client(a).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
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
        cluster_domain: a.cluster_domain,
        ids: IdentityConfig {
            control_plane_ns: a.control_plane_ns,
            trust_domain: a.trust_domain,
        },
        grace: Duration::from_secs(5),
    };
    crate::serve(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// In-cluster by default; with `--kube-api-url`, only what the flags say.
fn kube_config(a: &ServeArgs) -> Result<KubeApiConfig, Error> {
    let mut c = match &a.kube_api_url {
        None => KubeApiConfig::in_cluster()?,
        Some(url) => {
            let url = url
                .parse()
                .map_err(|_| Error::Usage(format!("--kube-api-url {url:?} is not a URL")))?;
            KubeApiConfig::new(url)
        }
    };
    if let Some(ca) = &a.kube_ca {
        c.ca_file = Some(ca.clone());
    }
    if let Some(t) = &a.kube_token_file {
        c.token_file = Some(t.clone());
    }
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
        let a = Args::try_parse_from(["destination", "serve", "--registry", "r.yaml"]).unwrap();
        let Command::Serve(s) = a.command else {
            panic!()
        };
        assert_eq!(s.addr, "0.0.0.0:8086".parse().unwrap());
        assert_eq!(s.admin_addr, "127.0.0.1:9996".parse().unwrap());
        assert_eq!(s.registry_poll_ms, 500);
        // Exactly one source.
        assert!(Args::try_parse_from(["destination", "serve"]).is_err());
        assert!(
            Args::try_parse_from([
                "destination",
                "serve",
                "--registry",
                "r.yaml",
                "--kubernetes"
            ])
            .is_err()
        );
    }
}
