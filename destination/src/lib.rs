//! The destination service: endpoint discovery and service profiles served through Linkerd's
//! `io.linkerd.proxy.destination.Destination` API (see `destination/README.md`).
//!
//! ```text
//!  registry.yaml ──poll 500ms──► registry::parse ─┐
//!                                                 ├─► model::Service ─► index::Index ─► grpc
//!  API server ──watch──► k8s_watch ─► k8s::KubeIndex┘   (per service)    one shared topic     Get ──► Add/Remove/NoEndpoints
//!   Services, EndpointSlices, Pods     (apply/delete/flush)              per (service, port): GetProfile ──► DestinationProfile
//!                                                                        watch<Arc<Snapshot>> + diff
//! ```
//!
//! * [`model`]: services, backends and resolved endpoints. No proto, no Kubernetes.
//! * [`index`]: every service, plus one topic per watched `(service, port)` shared by all its
//!   watchers: versioned snapshots, each with the diff from the previous one.
//! * [`registry`] and [`k8s`]: the two sources; [`k8s_watch`] is the thin API-server layer.
//!   The registry watcher, the watch loop, the serve sequence, the command-line flags and the
//!   metrics vocabulary are the control plane's (`linkerd-control`).
//! * [`grpc`]: the streams. Each `Get` stream holds only the last snapshot it sent, and
//!   computes what to send next when the client is ready for it. [`get`] serves `Get` on
//!   hyper with no per-stream encode buffer; tonic serves the rest.
//! * [`metrics`], [`server`], [`args`]: the admin server, wiring and the command line.
//! * [`bench`]: 10,000 endpoints, 1,000 watchers, the time for one change to reach them all.

pub mod args;
pub mod bench;
pub mod get;
pub mod grpc;
pub mod index;
pub mod k8s;
pub mod k8s_watch;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod server;

pub use proto::api::destination as api;
pub use server::{Config, Source, bind, serve};

/// How endpoint identities are named:
/// `<sa>.<ns>.serviceaccount.identity.<control_plane_ns>.<trust_domain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    pub control_plane_ns: String,
    pub trust_domain: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            control_plane_ns: "linkerd".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

/// Errors from setting up or running the service and its commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Kube(#[from] linkerd_control::kube::KubeError),
    #[error(transparent)]
    Bind(#[from] linkerd_control::BindError),
    #[error("{0}")]
    Usage(String),
    #[error("bench: {0}")]
    Bench(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}
