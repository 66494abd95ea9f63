//! `mesh injector …` and `mesh inject …`: the command line (clap, with `MESH_INJECTOR_*`
//! environment fallbacks).

use crate::{
    Error,
    config::InjectConfig,
    events::Events,
    namespaces::{KubeApiConfig, NamespaceMap, Namespaces},
    server::Config,
    workload::{self, ReportOutcome},
};
use clap::{ArgGroup, Parser, Subcommand};
use std::{
    collections::BTreeMap, io::Read, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

#[derive(Debug, Parser)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mutating admission webhook (HTTPS on --addr, metrics and probes on --admin-addr).
    Serve(Box<ServeArgs>),
}

/// How injected proxies are configured (shared by the webhook and `mesh inject`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// PEM bundle of the mesh's trust anchors (written into every proxy's environment).
    #[arg(
        long = "identity-trust-anchors-file",
        env = "MESH_INJECTOR_TRUST_ANCHORS"
    )]
    pub trust_anchors: PathBuf,
    #[arg(
        long,
        env = "MESH_INJECTOR_CONTROL_PLANE_NS",
        default_value = "linkerd"
    )]
    pub control_plane_ns: String,
    /// The cluster's DNS domain, also the identity trust domain.
    #[arg(
        long,
        env = "MESH_INJECTOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// Proxy image, without tag.
    #[arg(long, env = "MESH_INJECTOR_PROXY_IMAGE", default_value = crate::config::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Proxy image tag.
    #[arg(long, env = "MESH_INJECTOR_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub proxy_version: String,
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("namespaces").required(true).args(["kubernetes", "namespaces_file"])))]
pub struct ServeArgs {
    #[arg(long, env = "MESH_INJECTOR_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,
    #[arg(
        long,
        env = "MESH_INJECTOR_ADMIN_ADDR",
        default_value = "127.0.0.1:9995"
    )]
    pub admin_addr: SocketAddr,
    /// PEM serving certificate (chain) for the webhook.
    #[arg(long, env = "MESH_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "MESH_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Read namespace annotations from the API server (in-cluster config).
    #[arg(long, env = "MESH_INJECTOR_KUBERNETES")]
    pub kubernetes: bool,
    /// Instead of the API server: a YAML map of namespace → annotations.
    #[arg(long, env = "MESH_INJECTOR_NAMESPACES_FILE")]
    pub namespaces_file: Option<PathBuf>,
    /// API server URL instead of KUBERNETES_SERVICE_HOST/PORT (e.g. http://127.0.0.1:8001).
    #[arg(long, env = "MESH_INJECTOR_KUBE_API_URL", requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "MESH_INJECTOR_LOG", default_value = "info")]
    pub log_level: tracing::Level,
}

/// `mesh inject FILE|-`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// A YAML file of one or more documents, or `-` for standard input.
    pub file: String,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Annotations of the namespace the workloads go to (`key=value`, repeatable), e.g.
    /// `config.linkerd.io/skip-outbound-ports=3306`; the pods' own annotations win.
    #[arg(long = "namespace-annotation", value_parser = parse_kv)]
    pub namespace_annotations: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

impl ProxyArgs {
    /// Reads the trust anchors and builds the injection config. Blocking (reads a file).
    pub fn inject_config(&self) -> Result<InjectConfig, Error> {
        let pem = std::fs::read_to_string(&self.trust_anchors).map_err(|source| Error::Read {
            path: self.trust_anchors.display().to_string(),
            source,
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::Usage(format!(
                "{}: no PEM certificate in it",
                self.trust_anchors.display()
            )));
        }
        let mut cfg =
            InjectConfig::for_namespace(&self.control_plane_ns, &self.cluster_domain, pem);
        cfg.proxy_image = self.proxy_image.clone();
        cfg.proxy_version = self.proxy_version.clone();
        Ok(cfg)
    }
}

/// Runs a `mesh injector` subcommand.
pub async fn run(args: Args) -> Result<ExitCode, Error> {
    match args.command {
        Command::Serve(a) => serve(*a).await,
    }
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    let _ = tracing_subscriber::fmt()
        .with_max_level(a.log_level)
        .with_writer(std::io::stderr)
        .try_init();
    let proxy = a.proxy.clone();
    let inject = tokio::task::spawn_blocking(move || proxy.inject_config())
        .await
        .map_err(|e| Error::Usage(e.to_string()))??;
    let (namespaces, events) = match &a.namespaces_file {
        Some(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|source| Error::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            let map: NamespaceMap = if text.trim().is_empty() {
                NamespaceMap::new()
            } else {
                serde_saphyr::from_str(&text)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
            };
            (Namespaces::Static(map), Events::none())
        }
        None => {
            let api_url =
                match &a.kube_api_url {
                    None => None,
                    Some(url) => Some(url.parse().map_err(|_| {
                        Error::Usage(format!("--kube-api-url {url:?} is not a URL"))
                    })?),
                };
            let api = KubeApiConfig {
                api_url,
                ..KubeApiConfig::default()
            };
            let client = api.client().await?;
            (Namespaces::Kube(client.clone()), Events::kube(client))
        }
    };
    let config = Config {
        addr: a.addr,
        admin_addr: a.admin_addr,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        inject,
        namespaces,
        events,
        grace: Duration::from_secs(5),
    };
    crate::server::serve(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `mesh inject`: reads the file (or stdin), prints the injected YAML on stdout and one line
/// per workload on stderr. Blocking: run it outside the runtime.
pub fn inject(a: InjectArgs) -> Result<ExitCode, Error> {
    let cfg = a.proxy.inject_config()?;
    let input = if a.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| Error::Read {
                path: "standard input".into(),
                source,
            })?;
        s
    } else {
        std::fs::read_to_string(&a.file).map_err(|source| Error::Read {
            path: a.file.clone(),
            source,
        })?
    };
    let ns: BTreeMap<String, String> = a.namespace_annotations.into_iter().collect();
    let (yaml, reports) = workload::inject_yaml(&input, &ns, &cfg)
        .map_err(|e| Error::Usage(format!("{}: {e}", a.file)))?;
    print!("{yaml}");
    for r in reports {
        match r.outcome {
            ReportOutcome::Injected { warnings } => {
                eprintln!("{} injected", r.what);
                for w in warnings {
                    eprintln!("  warning: {w}");
                }
            }
            ReportOutcome::Skipped(reason) => eprintln!("{} skipped: {reason}", r.what),
        }
    }
    Ok(ExitCode::SUCCESS)
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
