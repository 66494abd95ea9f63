//! The control-plane runtime: what the services (identity, destination, policy, the injector)
//! share, so that each of them keeps only its model, index, gRPC and kinds.
//!
//! ```text
//!  args ──► ServeArgs / KubeArgs / RegistryArgs / MeshArgs (flattened into each service's clap args)
//!  serve::Listeners::bind ─► run: admin server ─┬─ source: watch_file::FileWatcher (registry file)
//!                                               │          kube::watch_kind (API server, feature `kube`)
//!                                               └─ Grpc::serve_h2 ── shutdown ─► close ─► drain ─► stop
//!  metrics: prometheus-client registries, SourceMetrics; prom: the text-format parser
//! ```
//!
//! * [`args`]: the shared command-line flags, each service naming its own env variables.
//! * [`serve`]: binding, a bound service ([`Bound`]), accepting, the HTTP/2 server loop and
//!   the serve sequence.
//! * [`admin`]: `/metrics`, `/ready`, `/live`.
//! * [`shutdown`]: SIGTERM/SIGINT and the stop signal loops select on.
//! * [`watch_file`]: a polled registry file, parsed off the runtime, last good state kept.
//! * [`kube`] (feature `kube`): the API server's settings and the watch loop.
//! * [`source`] (feature `kube`): where a service's state comes from (file, API server, caller).
//! * [`duration`]: the one duration grammar (`100ms`, `10s`, `5m`, `1h`, `365d`, `1h30m`).
//! * [`metrics`]: the Prometheus vocabulary (prometheus-client) the services share.
//! * [`prom`]: a parser of the Prometheus text format, for every consumer of `/metrics`.
//! * `test_support` (feature `test-support`): helpers for the services' tests.
//!
//! At the root: [`print`], [`ReadError`] and [`only`].

pub mod admin;
pub mod args;
pub mod duration;
#[cfg(feature = "kube")]
pub mod kube;
pub mod metrics;
pub mod prom;
pub mod serve;
pub mod shutdown;
#[cfg(feature = "kube")]
pub mod source;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod watch_file;

pub use admin::serve_admin;
pub use serve::{BindError, Bound, Listeners, accept};
pub use shutdown::{shutdown_signal, stopped};

/// Writes `text` to stdout in one go and flushes it. `println!` panics when the reader has gone
/// (`mesh policy crds - | head -1`: Rust ignores SIGPIPE, so the write fails with `EPIPE`);
/// here that is an `io::ErrorKind::BrokenPipe` error, on which `mesh` exits quietly.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// The one item of `items`: `None` if there are none, or more than one.
pub fn only<T>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut items = items.into_iter();
    let first = items.next()?;
    items.next().is_none().then_some(first)
}

/// A file (or standard input) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: String,
    pub source: std::io::Error,
}

impl ReadError {
    /// The error of reading `path`, for `map_err`.
    pub fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.display().to_string();
        move |source| Self { path, source }
    }
}
