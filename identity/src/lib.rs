//! The identity service: a certificate authority serving Linkerd's
//! `io.linkerd.proxy.identity.Identity/Certify`.
//!
//! Not built yet: tracked by issue #3. The crate exists so the workspace has its final shape
//! and the wire types it will serve are already pinned through [`proto::api::identity`].

pub use proto::api::identity as api;
