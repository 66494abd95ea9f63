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
use clap::{ArgGroup, Subcommand};
use linkerd_control::{ReadError, kube::KubeApiConfig};
use std::{collections::BTreeMap, io::Read, path::PathBuf, process::ExitCode, time::Duration};

/// `mesh injector …`.
pub type Args = linkerd_control::args::Cli<Command>;

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

linkerd_control::deref_args!(ServeArgs => serve: linkerd_control::args::ServeArgs<Names>);

/// `mesh inject FILE|DIR|-`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// A YAML file of one or more documents, a directory of them (its `.yaml`, `.yml` and
    /// `.json` files in name order, as `kubectl apply -f DIR` reads it, but for kustomize's own
    /// `kustomization.yaml`), or `-` for standard input.
    pub file: String,
    /// With a directory: its subdirectories too (as `kubectl apply -R`).
    #[arg(short = 'R', long)]
    pub recursive: bool,
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
        let pem = std::fs::read_to_string(&self.trust_anchors)
            .map_err(ReadError::at(&self.trust_anchors))?;
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
                .map_err(ReadError::at(path))?;
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

/// `mesh inject`: reads the file, directory or stdin, prints the injected YAML on stdout and
/// one line per workload on stderr, and one per document that could not be read or injected
/// (it is passed through as written: never fatal to the others). Blocking: run it outside the
/// runtime.
/// A line on stderr; one that cannot be written is dropped (it never stops the output).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub fn inject(a: InjectArgs) -> Result<ExitCode, Error> {
    let cfg = a.proxy.inject_config()?;
    let inputs = read_inputs(&a.file, a.recursive)?;
    let ns: BTreeMap<String, String> = a.namespace_annotations.into_iter().collect();
    let mut out = String::new();
    let several = inputs.len() > 1;
    for (name, text) in inputs {
        let (yaml, reports) = workload::inject_yaml(&text, &ns, &cfg)
            .map_err(|e| Error::Usage(format!("{name}: {e}")))?;
        // Files are separate streams: a `---` between them.
        if !out.is_empty() && !yaml.trim().is_empty() && !yaml.starts_with("---") {
            out.push_str("---\n");
        }
        out.push_str(&yaml);
        let prefix = if several {
            format!("{name}: ")
        } else {
            String::new()
        };
        for r in reports {
            match r.outcome {
                ReportOutcome::Injected { warnings } => {
                    note!("{prefix}{} injected", r.what);
                    for w in warnings {
                        note!("  warning: {w}");
                    }
                }
                ReportOutcome::Skipped(reason) => note!("{prefix}{} skipped: {reason}", r.what),
                ReportOutcome::Unreadable(e) => note!(
                    "{prefix}document {} (line {}) cannot be read, passed through as written: {e}",
                    r.document,
                    r.line
                ),
                ReportOutcome::Failed(e) => note!(
                    "{prefix}{} (document {}, line {}) cannot be injected, passed through as \
                     written: {e}",
                    r.what,
                    r.document,
                    r.line
                ),
            }
        }
    }
    match linkerd_control::print(&out) {
        // The reader went away (`mesh inject x | head`): not a failure of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Usage(format!("cannot write the YAML: {e}")))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The inputs: stdin, a file, or a directory's manifests, each with its name.
fn read_inputs(file: &str, recursive: bool) -> Result<Vec<(String, String)>, Error> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(ReadError::at(path))
            .map_err(Error::from)
    };
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| ReadError {
                path: "standard input".into(),
                source,
            })?;
        return Ok(vec![("standard input".into(), s)]);
    }
    let path = std::path::Path::new(file);
    if !path.is_dir() {
        return Ok(vec![(file.to_string(), read(path)?)]);
    }
    let mut files = Vec::new();
    collect(path, recursive, &mut files)?;
    files.sort();
    // Kustomize's file is not a manifest: its output is (`kubectl kustomize DIR | mesh inject -`).
    files.retain(|p| {
        let kustomize = p.file_name().is_some_and(|n| {
            matches!(
                n.to_str(),
                Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
            )
        });
        if kustomize {
            note!(
                "{}: skipped (kustomize's file; for the manifests it makes: kubectl kustomize {} | mesh inject -)",
                p.display(),
                p.parent().map(|d| d.display().to_string()).unwrap_or_default()
            );
        }
        !kustomize
    });
    files
        .into_iter()
        .map(|p| Ok((p.display().to_string(), read(&p)?)))
        .collect()
}

fn collect(dir: &std::path::Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(ReadError::at(dir))?;
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            if recursive {
                collect(&p, recursive, out)?;
            }
        } else if p
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        {
            out.push(p);
        }
    }
    Ok(())
}
