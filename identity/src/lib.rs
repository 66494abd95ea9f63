//! The identity service: a certificate authority serving Linkerd's
//! `io.linkerd.proxy.identity.Identity/Certify` (see `identity/README.md`).
//!
//! ```text
//!  proxy ── Certify{identity, token, csr (DER)} ──► grpc (tonic, :8080, plaintext)
//!                                                    │
//!                 certify::Certifier ◄───────────────┘
//!                   1. issuer loaded?                      ca::Ca ◄── server::IssuerWatcher
//!                   2. fields present, identity valid        │          (polls issuer.crt/key,
//!                   3. csr::validate (P-256, sig, SAN)       │           swaps when valid)
//!                   4. token::Authenticator                  │
//!                        LocalTokens (HMAC) | kube::TokenReview (API server)
//!                   5. token identity == requested           │
//!                   6. ca::Issuer::sign ◄────────────────────┘
//!                                                    │
//!  proxy ◄── {leaf DER, [issuer DER], valid_until} ──┘      metrics (:9990 /metrics /ready /live)
//! ```
//!
//! # Status codes
//!
//! | Refusal | Code |
//! | --- | --- |
//! | no issuer loaded, or the issuer chain has expired | `FAILED_PRECONDITION` |
//! | empty identity, token or CSR; identity not a DNS name | `INVALID_ARGUMENT` |
//! | CSR malformed (or PEM), bad signature, not ECDSA P-256 | `INVALID_ARGUMENT` |
//! | CSR names wrong: not exactly one DNS SAN = identity, CN ≠ identity, any IP/email/URI SAN | `INVALID_ARGUMENT` |
//! | token invalid, expired, forged; TokenReview `authenticated=false` or not a service account | `UNAUTHENTICATED` |
//! | token cannot be checked (API server unreachable, error status, timeout) | `UNAVAILABLE` |
//! | the token's identity is not the requested one | `INVALID_ARGUMENT` |
//! | signing failed | `INTERNAL` |
//!
//! Linkerd's Go service differs: `UNAVAILABLE` with no issuer, and `FAILED_PRECONDITION` for
//! CSR name problems, `authenticated=false` and an identity mismatch. Ours follows the gRPC
//! codes' meanings: the caller's mistakes are `INVALID_ARGUMENT`, bad credentials
//! `UNAUTHENTICATED`.
//!
//! The gRPC port is plaintext: in a cluster the service's own proxy terminates mTLS in
//! front of it, and locally it listens on loopback. Serving TLS directly may come later.

pub mod args;
pub mod bench;
pub mod ca;
pub mod certify;
pub mod csr;
pub mod grpc;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod token;
pub mod trust;

pub use proto::api::identity as api;
pub use server::{AuthConfig, Config, bind, serve};
pub use trust::{TrustFiles, TrustOptions, generate_trust};

/// Errors from setting up or running the service and its commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] linkerd_control::ReadError),
    #[error("trust anchors {path}: {source}")]
    Anchors { path: String, source: ca::LoadError },
    #[error(transparent)]
    TokenKey(#[from] token::KeyError),
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    #[error(transparent)]
    Bind(#[from] linkerd_control::BindError),
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error(transparent)]
    Generate(#[from] trust::GenerateError),
    #[error("cannot write: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("bench: {0}")]
    Bench(String),
}
