//! The command-line flags the services share, flattened into each service's clap arguments.
//! Each service names its own environment variables and defaults through [`Names`] (written
//! with [`names!`](crate::names)), so `--addr` is `MESH_DESTINATION_ADDR` in one and
//! `MESH_POLICY_ADDR` in another, as before.
//!
//! ```text
//! ServeArgs<N>   --addr --admin-addr --log-level              every service
//!   KubeArgs<N>    --kubernetes --kube-api-url --kube-ca --kube-token-file
//! SourceArgs<N>  ServeArgs + --registry --registry-poll-ms    destination, policy
//!                --cluster-domain
//!   IdentityArgs<N> --trust-domain --control-plane-ns         destination, policy, identity
//! ```
//!
//! A service's own args struct flattens one of them and dereferences to it, so its code (and
//! its tests) read `args.addr` whatever struct holds the flag.

use std::{fmt::Debug, marker::PhantomData, net::SocketAddr, path::PathBuf, time::Duration};

// A service's command line (`mesh <service> …`): one of its subcommands, `C`. (No doc
// comment: it would become the help text of every service's command.)
#[derive(Debug, clap::Parser)]
pub struct Cli<C: clap::Subcommand> {
    #[command(subcommand)]
    pub command: C,
}

/// A service's environment variables and defaults for the shared flags.
pub trait Names: Debug + Send + Sync + 'static {
    const ADDR_ENV: &'static str;
    const ADDR: &'static str;
    const ADMIN_ADDR_ENV: &'static str;
    const ADMIN_ADDR: &'static str;
    const LOG_ENV: &'static str;
    const KUBERNETES_ENV: &'static str;
    const KUBE_API_URL_ENV: &'static str;
    const KUBE_CA_ENV: &'static str;
    const KUBE_TOKEN_FILE_ENV: &'static str;
    const REGISTRY_ENV: &'static str;
    const REGISTRY_POLL_MS_ENV: &'static str;
    const CLUSTER_DOMAIN_ENV: &'static str;
    const TRUST_DOMAIN_ENV: &'static str;
    const CONTROL_PLANE_NS_ENV: &'static str;
}

/// Declares a [`Names`] type: `names!(Destination, "MESH_DESTINATION", "0.0.0.0:8086",
/// "127.0.0.1:9996")` makes `MESH_DESTINATION_ADDR` and the rest.
#[macro_export]
macro_rules! names {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $addr:literal, $admin:literal) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name;

        impl $crate::args::Names for $name {
            const ADDR_ENV: &'static str = concat!($prefix, "_ADDR");
            const ADDR: &'static str = $addr;
            const ADMIN_ADDR_ENV: &'static str = concat!($prefix, "_ADMIN_ADDR");
            const ADMIN_ADDR: &'static str = $admin;
            const LOG_ENV: &'static str = concat!($prefix, "_LOG");
            const KUBERNETES_ENV: &'static str = concat!($prefix, "_KUBERNETES");
            const KUBE_API_URL_ENV: &'static str = concat!($prefix, "_KUBE_API_URL");
            const KUBE_CA_ENV: &'static str = concat!($prefix, "_KUBE_CA");
            const KUBE_TOKEN_FILE_ENV: &'static str = concat!($prefix, "_KUBE_TOKEN_FILE");
            const REGISTRY_ENV: &'static str = concat!($prefix, "_REGISTRY");
            const REGISTRY_POLL_MS_ENV: &'static str = concat!($prefix, "_REGISTRY_POLL_MS");
            const CLUSTER_DOMAIN_ENV: &'static str = concat!($prefix, "_CLUSTER_DOMAIN");
            const TRUST_DOMAIN_ENV: &'static str = concat!($prefix, "_TRUST_DOMAIN");
            const CONTROL_PLANE_NS_ENV: &'static str = concat!($prefix, "_CONTROL_PLANE_NS");
        }
    };
}

/// Makes a service's own serve arguments (`$args`) dereference to the shared ones they
/// flatten (`$field: $target`), so that its code reads `args.addr` as well as its own flags.
#[macro_export]
macro_rules! deref_args {
    ($args:ty => $field:ident: $target:ty) => {
        impl std::ops::Deref for $args {
            type Target = $target;

            fn deref(&self) -> &$target {
                &self.$field
            }
        }
    };
}

/// Where the service listens, how much it logs, and the API server (every service).
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct ServeArgs<N: Names> {
    #[arg(long, env = N::ADDR_ENV, default_value = N::ADDR)]
    pub addr: SocketAddr,
    /// `/metrics`, `/ready` and `/live`.
    #[arg(long, env = N::ADMIN_ADDR_ENV, default_value = N::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// error, warn, info, debug or trace.
    #[arg(long, env = N::LOG_ENV, default_value = "info")]
    pub log_level: tracing::Level,
    #[command(flatten)]
    pub kube: KubeArgs<N>,
}

/// The API server.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct KubeArgs<N: Names> {
    /// Use the Kubernetes API (in-cluster config unless --kube-api-url is given).
    #[arg(long, env = N::KUBERNETES_ENV)]
    pub kubernetes: bool,
    /// API server URL instead of KUBERNETES_SERVICE_HOST/PORT (e.g. http://127.0.0.1:8001).
    #[arg(long, env = N::KUBE_API_URL_ENV, requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    /// CA bundle for the API server (default: the pod's service-account ca.crt).
    #[arg(long, env = N::KUBE_CA_ENV, requires = "kubernetes")]
    pub kube_ca: Option<PathBuf>,
    /// Bearer token file for the API server (default: the pod's service-account token).
    #[arg(long, env = N::KUBE_TOKEN_FILE_ENV, requires = "kubernetes")]
    pub kube_token_file: Option<PathBuf>,
    #[arg(skip)]
    pub names: PhantomData<N>,
}

/// The serve arguments of a service fed by a registry file or the API server (exactly one of
/// `--registry` and `--kubernetes`), and how the cluster and its identities are named.
#[derive(Debug, clap::Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["registry", "kubernetes"])))]
pub struct SourceArgs<N: Names> {
    #[command(flatten)]
    pub serve: ServeArgs<N>,
    /// A registry YAML file, watched (its format is in the service's README).
    #[arg(long, env = N::REGISTRY_ENV)]
    pub registry: Option<PathBuf>,
    /// How often the registry file is checked, in milliseconds (at least 10).
    #[arg(long, env = N::REGISTRY_POLL_MS_ENV, default_value_t = 500)]
    pub registry_poll_ms: u64,
    /// Service names are `<svc>.<ns>.svc.<cluster-domain>`.
    #[arg(long, env = N::CLUSTER_DOMAIN_ENV, default_value = "cluster.local")]
    pub cluster_domain: String,
    #[command(flatten)]
    pub ids: IdentityArgs<N>,
}

/// How the mesh's identities are named (destination, policy, identity).
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct IdentityArgs<N: Names> {
    /// Identities are `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.
    #[arg(long, env = N::TRUST_DOMAIN_ENV, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = N::CONTROL_PLANE_NS_ENV, default_value = "linkerd")]
    pub control_plane_ns: String,
    #[arg(skip)]
    pub names: PhantomData<N>,
}

impl<N: Names> std::ops::Deref for SourceArgs<N> {
    type Target = ServeArgs<N>;
    fn deref(&self) -> &ServeArgs<N> {
        &self.serve
    }
}

impl<N: Names> ServeArgs<N> {
    /// Logs to stderr at `--log-level` (once per process; later calls change nothing).
    pub fn init_log(&self) {
        let _ = tracing_subscriber::fmt()
            .with_max_level(self.log_level)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

impl<N: Names> KubeArgs<N> {
    /// `--kube-api-url` parsed, if given.
    pub fn api_url(&self) -> Result<Option<http::Uri>, String> {
        self.kube_api_url
            .as_ref()
            .map(|url| {
                url.parse()
                    .map_err(|_| format!("--kube-api-url {url:?} is not a URL"))
            })
            .transpose()
    }
}

impl<N: Names> SourceArgs<N> {
    /// How often to poll the registry file (`--registry-poll-ms`, at least 10 ms).
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.registry_poll_ms.max(10))
    }

    /// Where the state comes from: `--registry`, polled every [`Self::poll_interval`], or the
    /// API server the `--kube-*` flags describe.
    #[cfg(feature = "kube")]
    pub fn source(&self) -> Result<crate::source::Source, crate::kube::KubeError> {
        use crate::{kube::KubeApiConfig, source::Source};
        Ok(match &self.registry {
            Some(path) => Source::Registry {
                path: path.clone(),
                interval: self.poll_interval(),
            },
            None => Source::Kubernetes(KubeApiConfig::from_args(&self.kube)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    crate::names!(Test, "MESH_TEST", "0.0.0.0:1", "127.0.0.1:2");

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        source: SourceArgs<Test>,
    }

    #[test]
    fn defaults_and_names() {
        let c = Cli::try_parse_from(["t", "--registry", "r.yaml"])
            .unwrap()
            .source;
        assert_eq!(c.addr, "0.0.0.0:1".parse().unwrap());
        assert_eq!(c.admin_addr, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.log_level, tracing::Level::INFO);
        assert_eq!(c.poll_interval(), Duration::from_millis(500));
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.ids.control_plane_ns, "linkerd");
        assert_eq!(c.kube.api_url(), Ok(None));
        let cmd = <Cli as clap::CommandFactory>::command();
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("addr").as_deref(), Some("MESH_TEST_ADDR"));
        assert_eq!(
            env("registry_poll_ms").as_deref(),
            Some("MESH_TEST_REGISTRY_POLL_MS")
        );
        assert_eq!(
            env("kube_token_file").as_deref(),
            Some("MESH_TEST_KUBE_TOKEN_FILE")
        );
        assert_eq!(
            env("control_plane_ns").as_deref(),
            Some("MESH_TEST_CONTROL_PLANE_NS")
        );
    }

    #[test]
    fn exactly_one_source() {
        assert!(Cli::try_parse_from(["t"]).is_err());
        assert!(Cli::try_parse_from(["t", "--registry", "r", "--kubernetes"]).is_err());
        let c = Cli::try_parse_from(["t", "--kubernetes", "--kube-api-url", "http://k:1"]).unwrap();
        assert_eq!(
            c.source.kube.api_url().unwrap().unwrap().port_u16(),
            Some(1)
        );
        let c = Cli::try_parse_from(["t", "--kubernetes", "--kube-api-url", "not a url"]).unwrap();
        assert!(c.source.kube.api_url().is_err());
        let c = Cli::try_parse_from(["t", "--kubernetes", "--registry-poll-ms", "1"]).unwrap();
        assert_eq!(c.source.poll_interval(), Duration::from_millis(10));
    }
}
