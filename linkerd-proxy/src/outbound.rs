//! The outbound half: the application's connections to other services.
//!
//! - [`policy`]: how requests to a destination are routed, split, retried and timed out
//!   (Linkerd's `OutboundPolicies`).

pub mod policy;
