//! `mesh`: the user CLI and the single control-plane binary.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod dash;
mod demo;
mod install;
mod instance;
mod metrics;
mod out;
mod schema;
mod stats;
mod table;
mod up;
mod viz;

/// The version of Linkerd's proxy API this build speaks (the workspace pins it; a test checks
/// the two agree).
const PROXY_API: &str = "0.20.0";

static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(long_version);

/// `mesh --version`: this binary, the proxy inside it, and the API they speak.
fn long_version() -> String {
    format!(
        "{v}\nproxy (mesh proxy): linkerd-proxy {v}\nLinkerd proxy API: linkerd2-proxy-api {PROXY_API}\nplatform: {}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        v = env!("CARGO_PKG_VERSION"),
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "mesh",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "An ultralight Linkerd-style service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a mesh on this machine (the demo, or a mesh file's workloads).
    ///
    /// Each workload runs behind its own sidecar proxy on its own loopback address, with a
    /// load generator and a live table of what the sidecars see. Each run is a mesh of its
    /// own (a name, free loopback addresses); several can run side by side.
    Up(up::Args),
    /// The meshes running on this machine.
    List(viz::list::ListArgs),
    /// Stop a running mesh (as Ctrl-C in its terminal would).
    Down(viz::list::DownArgs),
    /// Traffic per workload and route over a window (10 s by default).
    ///
    /// Requests/s, success, denials, failures, retries, latency percentiles and mTLS share per
    /// workload and route, and TCP per workload, from a local mesh's sidecars (or any proxies'
    /// admin addresses).
    Stat(viz::stat::StatArgs),
    /// Live requests by path, from the sidecars' tap streams (the busiest first).
    Top(viz::top::TopArgs),
    /// Who talks to whom, with the identities on both sides of each hop.
    Edges(viz::edges::EdgesArgs),
    /// The service graph as Graphviz DOT (and SVG with --svg, when `dot` is installed).
    Graph(viz::graph::GraphArgs),
    /// Serve the dashboard of a running mesh (service graph, golden metrics, live requests,
    /// traces); `mesh up` serves one too.
    Dashboard(dash::Args),
    /// Verify a running mesh, with a hint for each failure.
    ///
    /// The control plane ready, certificates valid and not near expiry, every sidecar ready,
    /// every workload in discovery.
    Check(viz::check::CheckArgs),
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
    /// Add the proxy to the workloads in Kubernetes YAML, as the injector would.
    ///
    /// Reads a file, a directory, or - for stdin, as kubectl reads YAML, and prints the
    /// result; documents it cannot read are reported and passed through.
    Inject(linkerd_injector::args::InjectArgs),
    /// Print the control plane's Kubernetes manifests (deploy/), with a fresh trust anchor and
    /// issuer unless given, for `kubectl apply -f -`.
    Install(install::Args),
    /// A demo workload (used by `mesh up`).
    #[command(hide = true)]
    DemoApp(demo::Args),
    /// Runs one app of `mesh up` so that nothing it starts outlives it (used by `mesh up`).
    #[command(hide = true)]
    Supervise(up::supervise::Args),
    /// Runs several control-plane services in one process (used by `mesh up`), each given as
    /// its own command line and separated by `---`: `mesh control-plane identity serve ...
    /// --- destination serve ... --- policy serve ...`. One process maps the binary's code
    /// once, not once per service.
    #[command(hide = true)]
    ControlPlane {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What separates the services' command lines in `mesh control-plane`.
pub const SERVICE_SEPARATOR: &str = "---";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy { args } => linkerd_proxy::main_with_args(args),
        Command::DemoApp(args) => run(demo::run(args)),
        Command::Supervise(args) => up::supervise::run(args),
        Command::Up(args) => run(up::run(args)),
        Command::List(args) => report(viz::list::list(args)),
        Command::Down(args) => run(viz::list::down(args)),
        Command::Stat(args) => run(viz::stat::stat(args)),
        Command::Top(args) => run(viz::top::top(args)),
        Command::Edges(args) => run(viz::edges::edges(args)),
        Command::Graph(args) => run(viz::graph::graph(args)),
        Command::Check(args) => run(viz::check::check(args)),
        Command::Dashboard(args) => run(dash::dashboard(args)),
        Command::Identity(args) => run(async { Ok(linkerd_identity::args::run(args).await?) }),
        Command::Destination(args) => {
            run(async { Ok(linkerd_destination::args::run(args).await?) })
        }
        Command::Policy(args) => run(async { Ok(linkerd_policy::args::run(args).await?) }),
        Command::Injector(args) => run(async { Ok(linkerd_injector::args::run(args).await?) }),
        Command::Inject(args) => report(linkerd_injector::args::inject(args).map_err(Into::into)),
        Command::Install(args) => report(install::run(args)),
        Command::ControlPlane { args } => match control_plane(args) {
            Ok(services) => run(up::control::serve_together(services)),
            Err(e) => failed(e),
        },
    }
}

/// `mesh control-plane`'s command lines, parsed as `mesh` would parse each alone: only the
/// identity, destination and policy commands.
fn control_plane(args: Vec<String>) -> anyhow::Result<Vec<(String, up::control::Service)>> {
    let mut services: Vec<(String, up::control::Service)> = Vec::new();
    for line in args.split(|a| a == SERVICE_SEPARATOR) {
        let name = line.first().cloned().unwrap_or_default();
        let cli = Cli::try_parse_from(std::iter::once("mesh".to_string()).chain(line.to_vec()))
            .map_err(|e| anyhow::anyhow!("control-plane: `{}`: {e}", line.join(" ")))?;
        let service: up::control::Service = match cli.command {
            Command::Identity(a) => Box::pin(async { Ok(linkerd_identity::args::run(a).await?) }),
            Command::Destination(a) => {
                Box::pin(async { Ok(linkerd_destination::args::run(a).await?) })
            }
            Command::Policy(a) => Box::pin(async { Ok(linkerd_policy::args::run(a).await?) }),
            _ => anyhow::bail!(
                "control-plane runs identity, destination and policy commands, not `{name}`"
            ),
        };
        services.push((name, service));
    }
    Ok(services)
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
    out::errln!("mesh: {}", out::chain(&e));
    ExitCode::FAILURE
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out::errln!("mesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(fut).unwrap_or_else(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_proxy_api_the_workspace_pins() {
        let manifest = include_str!("../../Cargo.toml");
        let pin = format!("linkerd2-proxy-api = {{ version = \"={PROXY_API}\"");
        assert!(
            manifest.contains(&pin),
            "Cargo.toml does not pin {PROXY_API}"
        );
        let v = long_version();
        assert!(
            v.contains(&format!("linkerd2-proxy-api {PROXY_API}")),
            "{v}"
        );
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
    }

    fn lines(args: &str) -> Vec<String> {
        args.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn control_plane_takes_only_control_plane_services() {
        let names = |r: anyhow::Result<Vec<(String, up::control::Service)>>| {
            r.map(|s| s.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
        };
        let ok = control_plane(lines(
            "identity serve --trust-anchors a --issuer-cert b --issuer-key c --token-key d \
             --- destination serve --registry r --- policy serve --registry r",
        ));
        assert_eq!(names(ok).unwrap(), ["identity", "destination", "policy"]);
        for (bad, why) in [
            ("", "nothing to run"),
            ("up --seconds 1", "not a control-plane service"),
            (
                "identity serve --no-such-flag x",
                "a flag the service does not take",
            ),
            ("policy serve --registry r --- proxy", "the proxy"),
            ("policy serve --registry r ---", "an empty command line"),
        ] {
            let e = names(control_plane(lines(bad))).expect_err(why);
            assert!(e.to_string().contains("control-plane"), "{why}: {e}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_control_plane_ends_with_its_first_failing_service() {
        let pending: up::control::Service = Box::pin(std::future::pending());
        let failing: up::control::Service =
            Box::pin(async { Err(anyhow::anyhow!("cannot bind 127.0.0.9:8090")) });
        let e = up::control::serve_together(vec![
            ("identity".into(), pending),
            ("policy".into(), failing),
        ])
        .await
        .expect_err("a failed service ends the process");
        assert!(
            format!("{e:#}").contains("the policy service failed: cannot bind"),
            "{e:#}"
        );
        let unsuccessful: up::control::Service = Box::pin(async { Ok(ExitCode::FAILURE) });
        assert!(
            up::control::serve_together(vec![("destination".into(), unsuccessful)])
                .await
                .is_err()
        );
        let done: up::control::Service = Box::pin(async { Ok(ExitCode::SUCCESS) });
        assert!(
            up::control::serve_together(vec![("identity".into(), done)])
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
