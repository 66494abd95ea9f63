//! The destination service: endpoint discovery and service profiles served through Linkerd's
//! `io.linkerd.proxy.destination.Destination` API.
//!
//! Not built yet: tracked by issue #4. The proxy's side of the seam is
//! `linkerd_proxy::resolve::Resolve`.

pub use proto::api::destination as api;
