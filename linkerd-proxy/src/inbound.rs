//! The inbound half: connections from other proxies and clients to this pod's application.
//!
//! - [`policy`]: who may call which port and route (Linkerd's `InboundServerPolicies`).

pub mod policy;
