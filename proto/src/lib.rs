//! The wire contract between our data plane and control plane.
//!
//! We speak Linkerd's proxy API as published in the `linkerd2-proxy-api` crate (pinned exactly in
//! the workspace; its minor releases are breaking), re-exported here as [`api`] so every crate
//! uses one version. Hand-written pieces sit beside it because both sides need them:
//!
//! * [`id`]: the workload identity name,
//!   `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`;
//! * [`net`]: conversions between the API's address messages and `std::net`, and the
//!   `host:port` authority form used by discovery lookups;
//! * [`policy`]: Linkerd's default inbound policies and default cluster networks, which the
//!   policy controller and the proxy both read from their configuration.

pub use linkerd2_proxy_api as api;

pub mod id;
pub mod net;
pub mod policy;
