//! Closed-loop saturation runs with `wrk` (HTTP/1.1) and `h2load` (HTTP/2), and parsing of
//! their output.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::{procfs::Guarded, stats::Summary};

/// The result of one closed-loop run.
#[derive(Clone, Debug)]
pub struct Saturation {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Summary,
}

/// Prints wrk's summary in a form we can parse, including p99.9 which `--latency` omits.
/// Latencies are in microseconds.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_WRK requests=%d duration_us=%d p50=%d p99=%d p999=%d max=%d errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

/// Looks for `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Where a closed-loop tool connects, and how it names the target when that is an HTTP proxy.
#[derive(Debug, PartialEq)]
struct Via {
    /// The URL given to the tool: where it connects.
    connect: String,
    /// With a proxy: the absolute URL (request target) and the authority (`Host`,
    /// `:authority`) to send.
    proxied: Option<(String, String)>,
}

fn via(url: &str, proxy: Option<SocketAddr>) -> anyhow::Result<Via> {
    let Some(proxy) = proxy else {
        return Ok(Via {
            connect: url.to_string(),
            proxied: None,
        });
    };
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    let authority = uri
        .authority()
        .with_context(|| format!("URL {url:?} has no host"))?
        .to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(Via {
        connect: format!("http://{proxy}{path}"),
        proxied: Some((url.to_string(), authority)),
    })
}

/// Whole seconds for tools that take no fractions; at least 1.
pub fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

pub async fn run_tool(
    name: &'static str,
    cmd: &mut Command,
    limit: Duration,
    pid_file: Option<&Path>,
) -> anyhow::Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = Guarded::spawn(name, cmd, pid_file)?.into_child();
    // On timeout (or if this future is dropped) the child is dropped, which kills it.
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{name} did not finish in time"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "exited with {}:\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// With an HTTP proxy, wrk still connects to the URL it is given (the proxy's) but sends
/// `GET <absolute URL> HTTP/1.1` and `Host: <authority>`.
fn wrk_script(via: &Via) -> anyhow::Result<String> {
    let mut script = String::new();
    if let Some((url, authority)) = &via.proxied {
        // JSON string literals are valid Lua string literals for these (ASCII) values.
        script.push_str(&format!(
            "wrk.path = {}\nwrk.headers[\"Host\"] = {}\n",
            serde_json::to_string(url)?,
            serde_json::to_string(authority)?
        ));
    }
    script.push_str(WRK_SCRIPT);
    Ok(script)
}

/// `wrk -t1 -c<connections> -d<secs>s --latency`; with `proxy`, through that HTTP proxy
/// (absolute-form requests for `url`); with `netns`, inside that network namespace.
pub async fn wrk(
    netns: Option<&str>,
    url: &str,
    proxy: Option<SocketAddr>,
    connections: usize,
    duration: Duration,
    scratch: &Path,
    pid_file: Option<&Path>,
) -> anyhow::Result<Saturation> {
    let via = via(url, proxy)?;
    let script = scratch.join("wrk-report.lua");
    std::fs::write(&script, wrk_script(&via)?)
        .with_context(|| format!("writing {}", script.display()))?;
    let secs = whole_secs(duration);
    let mut cmd = match netns {
        Some(ns) => crate::netns::exec_in(ns, Path::new("wrk")),
        None => Command::new("wrk"),
    };
    let out = run_tool(
        "wrk",
        cmd.arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .arg("-s")
            .arg(&script)
            .arg(&via.connect),
        Duration::from_secs(secs + 30),
        pid_file,
    )
    .await
    .context("running wrk")?;
    parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
}

fn parse_wrk(out: &str) -> anyhow::Result<Saturation> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_WRK "))
        .context("no BENCH_WRK line (is wrk built with Lua support?)")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}="))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    let requests = field("requests")?;
    let duration_us = field("duration_us")?.max(1);
    Ok(Saturation {
        requests,
        errors: field("errors")?,
        rps: requests as f64 * 1e6 / duration_us as f64,
        latency: Summary {
            count: usize::try_from(requests)?,
            p50: field("p50")?,
            p99: field("p99")?,
            p999: field("p999")?,
            max: field("max")?,
        },
    })
}

/// `h2load -t1 -c<connections> -m<streams> -D <secs>` over HTTP/2 prior knowledge. h2load
/// prints no percentiles, so they come from its per-request log. With `proxy`, h2load connects
/// to the proxy and sends `-H ':authority: <url's authority>'`, which is what the proxy routes
/// HTTP/2 requests on.
pub async fn h2load(
    url: &str,
    proxy: Option<SocketAddr>,
    connections: usize,
    streams: usize,
    duration: Duration,
    scratch: &Path,
    pid_file: Option<&Path>,
) -> anyhow::Result<Saturation> {
    let via = via(url, proxy)?;
    let log = scratch.join("h2load-requests.tsv");
    let secs = whole_secs(duration);
    let mut cmd = Command::new("h2load");
    cmd.arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-m{streams}"))
        .arg("-D")
        .arg(secs.to_string())
        .arg(format!("--log-file={}", log.display()));
    if let Some((_, authority)) = &via.proxied {
        cmd.arg("-H").arg(format!(":authority: {authority}"));
    }
    cmd.arg(&via.connect);
    let out = run_tool("h2load", &mut cmd, Duration::from_secs(secs + 30), pid_file)
        .await
        .context("running h2load")?;
    let log_text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let _ = std::fs::remove_file(&log);
    parse_h2load(&out, &log_text).with_context(|| format!("parsing h2load's output:\n{out}"))
}

fn parse_h2load(out: &str, log: &str) -> anyhow::Result<Saturation> {
    // finished in 10.00s, 46015.70 req/s, 3.51MB/s
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.strip_suffix(" req/s"))
        .context("no `finished in` line")?
        .parse::<f64>()
        .context("req/s is not a number")?;
    // requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 2 errored, 0 timeout
    let counts = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("no `requests:` line")?;
    let count = |what: &str| -> anyhow::Result<u64> {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(what)?.trim().parse::<u64>().ok())
            .with_context(|| format!("no `{what}` count"))
    };
    let succeeded = count(" succeeded")?;
    // `failed` already includes the `errored` and `timeout` requests.
    let failed = count(" failed")?;

    // start_us \t status \t duration_us
    let mut samples = Vec::new();
    let mut non_2xx = 0u64;
    for line in log.lines() {
        let mut cols = line.split('\t');
        let (Some(_), Some(status), Some(us)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        match status.trim().parse::<u16>() {
            Ok(200..=299) => {}
            // A response with an error status (a failed request is already in `failed`).
            Ok(100..) => {
                non_2xx += 1;
                continue;
            }
            _ => continue,
        }
        if let Ok(us) = us.trim().parse::<u64>() {
            samples.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    let latency = Summary::from_samples(&mut samples).context("h2load logged no responses")?;
    Ok(Saturation {
        requests: succeeded,
        errors: failed + non_2xx,
        rps,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_report_line() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n\
                   BENCH_WRK requests=2000 duration_us=1000000 p50=90 p99=300 p999=900 max=1500 errors=3\n";
        let s = parse_wrk(out).expect("parses");
        assert_eq!(s.requests, 2000);
        assert_eq!(s.errors, 3);
        assert!((s.rps - 2000.0).abs() < 1e-9);
        assert_eq!(
            (s.latency.p50, s.latency.p99, s.latency.p999, s.latency.max),
            (90, 300, 900, 1500)
        );
    }

    #[test]
    fn via_proxy() {
        let direct = via("http://127.0.0.1:1/", None).expect("direct");
        assert_eq!(direct.connect, "http://127.0.0.1:1/");
        assert_eq!(direct.proxied, None);
        let v = via("http://svc.bench:80/x", "127.0.0.1:4140".parse().ok()).expect("proxied");
        assert_eq!(v.connect, "http://127.0.0.1:4140/x");
        assert_eq!(
            v.proxied,
            Some(("http://svc.bench:80/x".into(), "svc.bench:80".into()))
        );
        let script = wrk_script(&v).expect("script");
        assert!(
            script.starts_with(
                "wrk.path = \"http://svc.bench:80/x\"\nwrk.headers[\"Host\"] = \"svc.bench:80\"\n"
            ),
            "{script}"
        );
        assert!(script.contains("BENCH_WRK"));
    }

    #[test]
    fn parses_h2load_summary_and_log() {
        let out = "finished in 10.00s, 46015.70 req/s, 3.51MB/s\n\
                   requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 2 errored, 0 timeout\n";
        let log = "1\t200\t100\n2\t200\t300\n3\t503\t50\n";
        let s = parse_h2load(out, log).expect("parses");
        assert!((s.rps - 46015.70).abs() < 1e-9);
        assert_eq!(s.requests, 98);
        assert_eq!(s.errors, 3);
        assert_eq!((s.latency.p50, s.latency.max), (100, 300));
    }
}
