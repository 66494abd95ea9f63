//! `mesh`: the user CLI and the single control-plane binary.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod demo;
mod install;
mod out;
mod stat;
mod up;
mod viz;

#[derive(Debug, Parser)]
#[command(
    name = "mesh",
    version,
    about = "An ultralight Linkerd-style service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mesh locally on loopback: demo workloads, each behind its own sidecar proxy,
    /// plus a load generator and a live table of what the sidecars see.
    Up(up::Args),
    /// Requests/s, success rate, latency percentiles and mTLS share per workload and route,
    /// read from the sidecars of a local mesh (or any proxies' admin addresses).
    Stat(viz::StatArgs),
    /// Live requests by path, from the sidecars' tap streams (the busiest first).
    Top(viz::TopArgs),
    /// Who talks to whom, with the identities on both sides of each hop.
    Edges(viz::EdgesArgs),
    /// The service graph as Graphviz DOT (and SVG with --svg, when `dot` is installed).
    Graph(viz::GraphArgs),
    /// Verify a running mesh: control plane ready, certificates valid and not near expiry,
    /// every sidecar ready. Prints a hint for each failure.
    Check(viz::CheckArgs),
    /// Run the sidecar proxy (configured by LINKERD2_PROXY_* / MESH_PROXY_* variables, as the
    /// `linkerd-proxy` binary is; see linkerd-proxy/README.md). `mesh proxy init ...` installs
    /// the pod's iptables rules, as `linkerd-proxy init` does.
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// The identity service (certificate authority) and its tools: init, serve, token, bench.
    Identity(linkerd_identity::args::Args),
    /// The destination service (endpoint discovery and profiles) and its benchmark.
    Destination(linkerd_destination::args::Args),
    /// The policy service (inbound authorization, outbound routing) and its CRDs.
    Policy(linkerd_policy::args::Args),
    /// The proxy injector (mutating admission webhook).
    Injector(linkerd_injector::args::Args),
    /// Add the proxy to the workloads in Kubernetes YAML (a file, or - for stdin), as the
    /// injector would, and print the result.
    Inject(linkerd_injector::args::InjectArgs),
    /// Print the control plane's Kubernetes manifests (deploy/), with a fresh trust anchor and
    /// issuer unless given, for `kubectl apply -f -`.
    Install(install::Args),
    /// A demo workload (used by `mesh up`).
    #[command(hide = true)]
    DemoApp(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy { args } => linkerd_proxy::main_with_args(args),
        Command::DemoApp(args) => run(demo::run(args)),
        Command::Up(args) => run(up::run(args)),
        Command::Stat(args) => run(viz::stat(args)),
        Command::Top(args) => run(viz::top(args)),
        Command::Edges(args) => run(viz::edges(args)),
        Command::Graph(args) => run(viz::graph(args)),
        Command::Check(args) => run(viz::check(args)),
        Command::Identity(args) => run(async { Ok(linkerd_identity::args::run(args).await?) }),
        Command::Destination(args) => {
            run(async { Ok(linkerd_destination::args::run(args).await?) })
        }
        Command::Policy(args) => run(async { Ok(linkerd_policy::args::run(args).await?) }),
        Command::Injector(args) => run(async { Ok(linkerd_injector::args::run(args).await?) }),
        Command::Inject(args) => report(linkerd_injector::args::inject(args).map_err(Into::into)),
        Command::Install(args) => report(install::run(args)),
    }
}

/// For commands that need no runtime.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(failed)
}

/// The exit of a command that failed. A reader that stopped reading our output
/// (`mesh stat | head -1`) is not a failure of ours: exit quietly and successfully.
fn failed(e: anyhow::Error) -> ExitCode {
    if out::is_broken_pipe(&e) {
        return ExitCode::SUCCESS;
    }
    eprintln!("mesh: {e:#}");
    ExitCode::FAILURE
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(fut).unwrap_or_else(failed)
}
