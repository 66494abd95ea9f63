//! `linkerd-proxy`: the sidecar data plane.
//!
//! Inbound and outbound listeners detect each connection's protocol (HTTP/1.1, HTTP/2 or opaque
//! TCP) and forward it: HTTP per request over pooled upstream connections, opaque TCP as a byte
//! relay. The admin server exports Linkerd-compatible metrics. See `ARCHITECTURE.md` for the
//! request path and `README.md` in this crate for every configuration variable.
//!
//! Module tiers. A module may use only modules of lower tiers (`tests/tiers.rs` reads this
//! table and checks every `crate::` and `super::` path against it):
//!
//! ```text
//! 0  plumbing:          io, drain, log, backoff, idle, build_info, transport, tap, trim
//! 1  one concern:       metrics, detect, resolve, tls
//! 2  building blocks:   control, balance
//! 3  connections, sinks: tcp, identity, destination, trace, access_log
//! 4  HTTP:              http
//! 5  listeners:         listen
//! 6  the two halves:    inbound, outbound
//! 7  composition:       config, admin
//! 8  entry points:      app, init
//! ```
//!
//! Tier 0 knows nothing of the proxy. `control` is the control-plane channel (TLS to the
//! identity, destination and policy services), `balance` the endpoint balancer; `tcp` dials
//! endpoints (TCP, then mTLS) and relays opaque streams; `identity` and `destination` are
//! control-plane clients. `http` is the HTTP machinery shared by both directions: servers,
//! HTTP/1 and HTTP/2 clients, route matching, the request exchange. `listen` accepts
//! connections under limits. `inbound` and `outbound` decide (policy, routing, retries) and
//! never use each other. `config` reads the environment; `app` puts the parts together.
//! `init` stands apart: `linkerd-proxy init` installs the pod's iptables rules and exits,
//! before any of the above runs (see `README.md`).

#![warn(unreachable_pub)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub mod app;
pub(crate) mod backoff;
pub(crate) mod balance;
pub(crate) mod build_info;
pub mod config;
pub(crate) mod control;
pub(crate) mod destination;
pub mod detect;
pub(crate) mod drain;
pub mod http;
pub(crate) mod identity;
pub(crate) mod idle;
pub mod inbound;
pub mod init;
pub(crate) mod io;
pub(crate) mod listen;
pub mod log;
pub mod metrics;
pub mod outbound;
pub(crate) mod resolve;
pub(crate) mod tap;
pub(crate) mod tcp;
pub mod tls;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) mod trace;
pub(crate) mod transport;
pub(crate) mod trim;

use std::process::ExitCode;

/// An error of any kind, boxed: a body's (hyper's, or one of the proxy's own HTTP/1 and HTTP/2
/// clients'), or a handshake's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Locks `m`, going on with the data if a task panicked while holding the lock: one
/// connection's bug does not take a shared map down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exit status for a configuration error (EX_USAGE), as linkerd2-proxy uses.
pub const EX_USAGE: u8 = 64;

/// The process entry point: `linkerd-proxy init ...` installs the iptables rules; with no
/// arguments the proxy runs, configured from the environment.
pub fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(a) => args.push(a),
            Err(a) => {
                eprintln!("linkerd-proxy: argument {a:?} is not UTF-8");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    main_with_args(args)
}

/// [`main`] with the arguments after the program name (`mesh proxy` passes its own).
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        None => proxy(),
        Some("init") => init::main(args.collect()),
        Some("--version" | "-V") => {
            println!("linkerd-proxy {}", build_info::describe());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!(
                "linkerd-proxy: unexpected argument {other:?}: the proxy is configured by \
                 environment variables; the only subcommand is `init` (see `init --help`), \
                 and `--version` prints the build"
            );
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The proxy: configuration, runtime, serve, drain on SIGTERM.
fn proxy() -> ExitCode {
    let config = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("linkerd-proxy: configuration error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let log = log::init(&config.log_level, config.log_format);
    let rt = if config.cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.cores)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("linkerd-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match app::start(config, log).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("linkerd-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            s = shutdown_signal() => tracing::info!(signal = s, "received signal"),
            _ = running.shutdown_requested() => {}
        }
        if running.drain().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            // Without signal handlers only the admin endpoint can stop us.
            std::future::pending::<()>().await;
            "none"
        }
    }
}

/// For tests: a one-thread runtime whose clock moves only when every task waits (timeouts,
/// retry budgets and rate limits are tested in paused time).
#[cfg(test)]
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}
