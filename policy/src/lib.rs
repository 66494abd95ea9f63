//! The policy service: inbound authorization and outbound routing served through Linkerd's
//! `io.linkerd.proxy.inbound.InboundServerPolicies` and
//! `io.linkerd.proxy.outbound.OutboundPolicies` APIs (see `policy/README.md`).
//!
//! ```text
//!  registry.yaml ──poll──► registry::parse ──┐
//!                                            ├─► model::State ─► index::Index ─► grpc
//!  API server ──watch──► k8s (Pods, Services, ┘   (whole)        one shared topic per  WatchPort ─► Server
//!   Namespaces, Servers, AuthorizationPolicies,                  (workload, port) and  Watch ─► OutboundPolicy
//!   MeshTLS/NetworkAuthentications, rate limits,                 (service, port)
//!   HTTPRoutes, GRPCRoutes)
//! ```
//!
//! * [`resources`]: the CRD types (kube `CustomResource`), also the registry's `spec:` blocks.
//! * [`model`]: the state the sources write; [`inbound`] and [`outbound`] compute the proto
//!   messages from it (pure functions), with [`routes`] for the shared pieces.
//! * [`index`]: the state plus the watched topics; [`grpc`]: the two tonic services.
//! * [`registry`], [`k8s`]: the sources; [`metrics`], [`server`], [`args`]: admin, wiring, CLI.
//!   The registry watcher, the watch loop, the serve sequence, the command-line flags, the
//!   duration grammar and the metrics vocabulary are the control plane's (`linkerd-control`).

pub mod args;
pub mod grpc;
pub mod inbound;
pub mod index;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod registry;
pub mod resources;
pub mod routes;
pub mod server;

pub use proto::api::{inbound as inbound_api, outbound as outbound_api};
pub use server::{Config, Source, bind, serve};

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
    #[error("crds: {0}")]
    Crds(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}
