//! End-to-end tests: the proxy and real clients and servers over loopback sockets.
//!
//! Support code (test servers, clients, the proxy in-process or as a process, the metrics
//! parser) lives in the `linkerd_tests` library (`tests/src/`). Every test binds ephemeral
//! ports and wraps its body in `linkerd_tests::run`, which fails it after a generous timeout.

// Test code: `allow-unwrap-in-tests` covers `#[test]` functions but not the helpers beside them,
// where a panic is just as much a test failure.
#![allow(clippy::unwrap_used)]

mod attacks;
mod discovery;
mod errors;
mod gateway;
mod grpc;
mod http1;
mod http2;
mod metrics;
mod mtls;
mod opaque;
mod outbound;
mod policy;
mod shutdown;
mod traces;
mod transparent;
mod websocket;

/// The proxy binary built from this package, for tests that need a real process.
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_test-proxy");
