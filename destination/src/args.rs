//! `mesh destination …`: the command line (clap, with `MESH_DESTINATION_*` environment
//! fallbacks).

use crate::{
    Error, IdentityConfig,
    bench::{self, BenchOptions},
    server::Config,
};
use clap::Subcommand;
use linkerd_control::args::SourceArgs;
use std::{process::ExitCode, time::Duration};

/// `mesh destination …`.
pub type Args = linkerd_control::args::Cli<Command>;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the destination service (Get/GetProfile on --addr, metrics on --admin-addr).
    Serve(Box<ServeArgs>),
    /// Measure how long one endpoint change takes to reach every watcher, and the RSS;
    /// prints JSON. Watchers run in a child process (this binary, `bench-client`).
    Bench(BenchArgs),
    /// The watcher side of `bench` (started by it).
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
}

linkerd_control::names!(
    /// The destination service's environment variables (`MESH_DESTINATION_*`) and defaults.
    Names,
    "MESH_DESTINATION",
    "0.0.0.0:8086",
    "127.0.0.1:9996"
);

/// `serve`: the shared flags (`--addr`, `--admin-addr`, `--registry` or `--kubernetes`,
/// `--registry-poll-ms`, the `--kube-*` flags, the domains, `--log-level`).
pub type ServeArgs = SourceArgs<Names>;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Endpoint changes to time (alternately one endpoint removed and added back).
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
}

/// Runs a `mesh destination` subcommand.
pub async fn run(args: Args) -> Result<ExitCode, Error> {
    match args.command {
        Command::Serve(a) => serve(*a).await,
        Command::Bench(a) => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::Bench(format!("cannot find this executable: {e}")))?;
            // Re-run this binary's `… destination bench-client` (the arguments before
            // `bench` name this subcommand, whatever binary we are).
            let argv: Vec<String> = std::env::args().skip(1).collect();
            let pos = argv
                .iter()
                .position(|a| a == "bench")
                .ok_or_else(|| Error::Bench("cannot find `bench` in the arguments".into()))?;
            let mut client = vec![exe.into_os_string()];
            client.extend(argv[..pos].iter().map(Into::into));
            client.push("bench-client".into());
            let report = bench::run(BenchOptions {
                endpoints: a.endpoints,
                watchers: a.watchers,
                changes: a.changes,
                client,
            })
            .await?;
            let json =
                serde_json::to_string_pretty(&report).map_err(|e| Error::Bench(e.to_string()))?;
            linkerd_control::print(&format!("{json}\n")).map_err(Error::Stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchClient(a) => {
            bench::client(a).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    a.init_log();
    let config = Config {
        addr: a.addr,
        admin_addr: a.admin_addr,
        source: a.source()?,
        cluster_domain: a.cluster_domain,
        ids: IdentityConfig {
            control_plane_ns: a.ids.control_plane_ns,
            trust_domain: a.ids.trust_domain,
        },
        grace: Duration::from_secs(5),
    };
    crate::serve(config, linkerd_control::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from(["destination", "serve", "--registry", "r.yaml"]).unwrap();
        let Command::Serve(s) = a.command else {
            panic!()
        };
        assert_eq!(s.addr, "0.0.0.0:8086".parse().unwrap());
        assert_eq!(s.admin_addr, "127.0.0.1:9996".parse().unwrap());
        assert_eq!(s.registry_poll_ms, 500);
        // Exactly one source.
        assert!(Args::try_parse_from(["destination", "serve"]).is_err());
        assert!(
            Args::try_parse_from([
                "destination",
                "serve",
                "--registry",
                "r.yaml",
                "--kubernetes"
            ])
            .is_err()
        );
    }
}
