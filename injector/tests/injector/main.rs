//! The injector's tests, one binary: the patch on pod fixtures, `mesh inject` on workload
//! files, the webhook over real HTTPS, and the contract with the proxy's configuration.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod contract;
mod offline;
mod patch;
mod support;
mod webhook;
