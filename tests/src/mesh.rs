//! Support for the mTLS tests: a certificate authority made at test time, the identity service
//! in-process, meshed proxies certified by it, raw TLS clients and a fake meshed peer, and a
//! steady traffic generator.
//!
//! ```text
//!  test ──► A.outbound ══ mTLS (A's cert, SNI = B's identity) ══► B.inbound ──► app
//!            │                                                    │
//!            └── Certify ──► IdentityService (127.0.0.1:<port>) ◄─┘
//! ```
//!
//! Everything binds `127.0.0.1:0` (the identity service keeps its port across a restart), and
//! every certificate chains to a trust anchor generated for the test.
//!
//! `ca`: the certificate authority; `identity`: the identity service and meshed proxies;
//! `tls`: raw TLS clients and the fake peer; `traffic`: the client-id echo, opaque TCP and
//! steady traffic. Everything is re-exported here.

use std::{
    error::Error as StdError,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

/// The gauge with the current certificate's NotAfter (unix seconds).
pub const CERT_EXPIRY: &str = "control_identity_cert_expiration_timestamp_seconds";
/// The gauge with the time the current certificate will be renewed (unix seconds).
pub const CERT_REFRESH: &str = "control_identity_cert_refresh_timestamp_seconds";

/// The service-account identity of `sa` in the test namespace.
pub fn identity(sa: &str) -> String {
    format!("{sa}.mtls.serviceaccount.identity.linkerd.cluster.local")
}

/// `name=addr#identity`: one meshed endpoint for `MESH_PROXY_STATIC_ENDPOINTS`.
pub fn meshed_endpoint(name: &str, addr: SocketAddr, identity: &str) -> String {
    format!("{name}={addr}#{identity}")
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error and its sources, one line.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

mod ca;
mod identity;
mod tls;
mod traffic;

pub use self::{ca::*, identity::*, tls::*, traffic::*};

/// A fresh directory under the system temporary directory, removed when dropped.
pub use linkerd_control::test_support::TempDir;
