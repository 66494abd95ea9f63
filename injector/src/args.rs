//! `mesh injector …` and `mesh inject …`: the command line (clap, with `MESH_INJECTOR_*`
//! environment fallbacks).

use crate::{
    Error,
    config::InjectConfig,
    events::Events,
    namespaces::{NamespaceMap, Namespaces},
    server::Config,
    workload::{self, ReportOutcome},
};
use clap::{ArgGroup, Parser, Subcommand};
use linkerd_control::kube::KubeApiConfig;
use std::{collections::BTreeMap, io::Read, path::PathBuf, process::ExitCode, time::Duration};

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

linkerd_control::names!(
    /// The injector's environment variables (`MESH_INJECTOR_*`) and defaults.
    Names,
    "MESH_INJECTOR",
    "0.0.0.0:8443",
    "127.0.0.1:9995"
);

/// `serve`: the shared flags (`--addr`, `--admin-addr`, `--log-level`, `--kubernetes` and the
/// `--kube-*` flags) and the webhook's.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("namespaces").required(true).args(["kubernetes", "namespaces_file"])))]
pub struct ServeArgs {
    #[command(flatten)]
    pub serve: linkerd_control::args::ServeArgs<Names>,
    /// PEM serving certificate (chain) for the webhook.
    #[arg(long, env = "MESH_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "MESH_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Instead of the API server: a YAML map of namespace → annotations.
    #[arg(long, env = "MESH_INJECTOR_NAMESPACES_FILE")]
    pub namespaces_file: Option<PathBuf>,
}

impl std::ops::Deref for ServeArgs {
    type Target = linkerd_control::args::ServeArgs<Names>;
    fn deref(&self) -> &Self::Target {
        &self.serve
    }
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
    a.init_log();
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
            let api = KubeApiConfig::from_args(&a.kube).map_err(|e| Error::Usage(e.to_string()))?;
            let client = api.client().await.map_err(|e| Error::Kube(e.to_string()))?;
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
    crate::server::serve(config, linkerd_control::shutdown_signal()).await?;
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
