//! `bench`: direct vs proxied vs meshed (two proxies, mTLS between them) HTTP on loopback,
//! closed loop (wrk, h2load) and open loop (a fixed request rate, latency measured from each
//! request's due time), plus the identity service's Certify throughput. See `bench/README.md`.
//!
//! Subcommands: `all` runs everything; `server` is the upstream; `load` is the open-loop
//! generator on its own; `otlp-sink` receives the proxies' spans when tracing's cost is
//! measured.

mod all;
mod certify;
mod client;
mod counters;
mod destination;
mod load;
mod mesh;
mod netns;
mod otlp_sink;
mod pair;
mod path;
mod policy;
mod procfs;
mod prod;
mod proxy;
mod report;
mod scenario;
mod server;
mod stalls;
mod stats;
mod tools;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use http::Method;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Direct vs proxied vs meshed HTTP benchmarks on loopback, and Certify throughput"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every scenario, direct, through the proxy and through the mesh, and the Certify
    /// benchmark; one JSON object per line.
    All(all::AllOpts),
    /// The upstream server: 200 with a fixed body; HTTP/1.1 and HTTP/2 prior knowledge.
    Server {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        body_size: usize,
    },
    /// One HTTP/1.1 request (e.g. to a proxy's admin server inside a pod's network namespace,
    /// which `bench all` cannot reach): prints the body; fails unless the status is 2xx.
    Fetch {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        /// POST instead of GET.
        #[arg(long)]
        post: bool,
    },
    /// How late a thread that sleeps 1 ms at a time wakes up on this CPU; prints one JSON
    /// object. Meant to run pinned at real-time priority (`chrt -f 1 taskset -c N`), as
    /// `bench all` runs it beside every production-path row.
    Stalls {
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// An OTLP/gRPC trace receiver that only counts what it decodes (what sampling costs the
    /// proxies, without a collector's cost on the same CPUs); prints its counts and CPU time
    /// as one JSON object on SIGTERM or SIGINT.
    OtlpSink {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Open-loop load at a fixed rate; prints one JSON object.
    Load {
        #[arg(long)]
        url: String,
        /// Requests per second.
        #[arg(long)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// HTTP/2 prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        /// Connect to this HTTP proxy (ip:port, e.g. a sidecar's outbound listener) instead of
        /// the URL's host: HTTP/1.1 requests go in absolute form, HTTP/2 requests carry the
        /// URL's authority in `:authority`. The URL's host is not resolved.
        #[arg(long)]
        proxy: Option<SocketAddr>,
        /// Write each answered request's due time (ms from the start) and latency (µs) to
        /// this file, one tab-separated line each: when in the run the slow ones came.
        #[arg(long)]
        latencies: Option<std::path::PathBuf>,
        /// Seconds after its due time at which a request counts as timed out.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

fn seconds(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} must be a positive number of seconds"))
}

fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::All(mut opts) => {
            opts.duration = seconds(opts.duration_secs, "duration")?;
            current_thread_runtime()?.block_on(all::run(opts))
        }
        Cmd::Server {
            addr,
            threads,
            body_size,
        } => server::run(&server::ServerOpts {
            addr,
            threads,
            body_size,
        }),
        Cmd::Fetch { addr, path, post } => {
            let method = if post { Method::POST } else { Method::GET };
            let fetch = client::request_once(addr, method, &path);
            let (status, body) = current_thread_runtime()?.block_on(fetch)?;
            if !status.is_success() {
                anyhow::bail!("{path}: {status}");
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Cmd::OtlpSink { addr } => current_thread_runtime()?.block_on(otlp_sink::run(addr)),
        Cmd::Stalls { duration } => {
            let d = seconds(duration, "duration")?;
            let s = stalls::probe(d, stalls::PERIOD, stalls::THRESHOLD);
            println!("{}", s.to_json());
            Ok(())
        }
        Cmd::Load {
            url,
            rate,
            duration,
            connections,
            http2,
            proxy,
            latencies,
            timeout,
        } => {
            let opts = load::LoadOpts {
                url,
                rate,
                duration: seconds(duration, "duration")?,
                connections,
                http2,
                proxy,
                timeout: seconds(timeout, "timeout")?,
                latencies,
            };
            let r = current_thread_runtime()?.block_on(load::run(&opts))?;
            let lat = r.latency.unwrap_or_default();
            let mut out = json!({
                "url": opts.url,
                "http2": opts.http2,
                "proxy": opts.proxy.map(|p| p.to_string()),
                "target_rps": opts.rate,
                "rps": (r.rps * 10.0).round() / 10.0,
                "p50_us": lat.p50,
                "p99_us": lat.p99,
                "p999_us": lat.p999,
                "max_us": lat.max,
                "scheduled": r.scheduled,
                "ok": r.ok,
                "errors": r.errors,
                "timeouts": r.timeouts,
                "first_error": r.first_error,
                "dispatch_lag_p99_us": r.dispatch_lag.map(|l| l.p99),
            });
            if let Some(o) = out.as_object_mut() {
                o.extend(
                    load::Stops::fields(Some(r.stops))
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v)),
                );
            }
            println!("{out}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
