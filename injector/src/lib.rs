//! The proxy injector: decides whether a pod joins the mesh and, if so, writes the RFC 6902
//! JSON Patch that adds the `linkerd-init` iptables step and the `linkerd-proxy` native sidecar,
//! as Linkerd's proxy injector does (section 5 of the proxy API reference).
//!
//! ```text
//!  API server ── POST / AdmissionReview (HTTPS :8443) ──► server (hyper + rustls)
//!                                                          │ admission::review
//!                       namespace annotations ◄── namespaces (GET, or a static map)
//!                                                          │ patch::pod  (pure)
//!  API server ◄── AdmissionReview{response: allowed, JSONPatch} ─┘  metrics (:9995)
//!
//!  mesh inject FILE|DIR ──► yaml (as kubectl reads it) ──► workload::inject_yaml ──► patch::template per workload ──► YAML out
//! ```
//!
//! * [`config`]: what an injected proxy looks like (image, ports, control-plane addresses).
//! * [`annotations`]: the `linkerd.io/*` and `config.linkerd.io/*` names and value parsing.
//! * [`patch`]: the pure decision and patch. No I/O.
//! * [`admission`]: AdmissionReview bytes in, AdmissionReview bytes out.
//! * [`workload`]: the offline `mesh inject` over multi-document YAML.
//! * [`server`], [`metrics`], [`args`]: the webhook server, its admin port and the CLI.

pub mod admission;
pub mod annotations;
pub mod args;
pub mod config;
pub mod events;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod server;
pub mod workload;
pub mod yaml;

pub use config::InjectConfig;
pub use patch::{Outcome, SkipReason};

/// Errors from setting up or running the webhook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] linkerd_control::ReadError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Bind(#[from] linkerd_control::BindError),
    #[error("Kubernetes client: {0}")]
    Kube(String),
    #[error("{0}")]
    Usage(String),
}
