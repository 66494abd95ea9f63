//! The policy service: inbound authorization and outbound routing served through Linkerd's
//! `InboundServerPolicies` and `OutboundPolicies` APIs.
//!
//! Not built yet: tracked by issue #5.

pub use proto::api::{inbound, outbound};
