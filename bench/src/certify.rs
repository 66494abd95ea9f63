//! The `certify` scenario: Certify throughput and latency of the identity service, from
//! `mesh identity bench` (the real gRPC server and a client in one process, on a current-thread
//! runtime) pinned to one core with `taskset -c 0`.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{procfs, tools};

/// The core `mesh identity bench` is pinned to.
const CORE: &str = "0";

/// What `mesh identity bench` prints (only the fields used here).
#[derive(Debug, PartialEq)]
struct Report {
    runtime: String,
    concurrency: u64,
    csrs: u64,
    seconds: f64,
    certs: u64,
    errors: u64,
    certs_per_sec: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

fn parse(out: &str) -> anyhow::Result<Report> {
    let v: Value = serde_json::from_str(out.trim()).context("not JSON")?;
    let u = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("no {k}"))
    };
    let f = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("no {k}"))
    };
    Ok(Report {
        runtime: v
            .get("runtime")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        concurrency: u("concurrency")?,
        csrs: u("csrs")?,
        seconds: f("seconds")?,
        certs: u("certs")?,
        errors: u("errors")?,
        certs_per_sec: f("certs_per_sec")?,
        p50: u("latency_us_p50")?,
        p90: u("latency_us_p90")?,
        p99: u("latency_us_p99")?,
        max: u("latency_us_max")?,
    })
}

/// Runs `[taskset -c 0] mesh identity bench --seconds <s> --concurrency <c>` and returns the
/// row's fields.
pub async fn run(
    mesh_bin: &Path,
    duration: Duration,
    concurrency: usize,
    pid_file: Option<&Path>,
) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let secs = tools::whole_secs(duration);
    let taskset = tools::find_on_path("taskset");
    let mut cmd = match &taskset {
        Some(t) => {
            let mut c = Command::new(t);
            c.arg("-c").arg(CORE).arg(mesh_bin);
            c
        }
        None => {
            eprintln!("bench: warning: no taskset on PATH; certify runs unpinned");
            Command::new(mesh_bin)
        }
    };
    cmd.args(["identity", "bench", "--seconds"])
        .arg(secs.to_string())
        .arg("--concurrency")
        .arg(concurrency.to_string());
    let cpu0 = procfs::self_and_children_cpu_seconds()?;
    let machine0 = procfs::machine_busy_seconds()?;
    let out = tools::run_tool(
        "mesh identity bench",
        &mut cmd,
        Duration::from_secs(secs + 60),
        pid_file,
    )
    .await
    .context("running mesh identity bench")?;
    // The bench has been waited for, so its CPU is in our children's time.
    let cpu = procfs::self_and_children_cpu_seconds()? - cpu0;
    let machine = procfs::machine_busy_seconds()? - machine0;
    let r = parse(&out).with_context(|| format!("parsing mesh identity bench's output:\n{out}"))?;
    let other = (machine - cpu).max(0.0);
    Ok(vec![
        (
            "certs_per_s",
            json!(crate::report::round(r.certs_per_sec, 1)),
        ),
        ("p50_us", json!(r.p50)),
        ("p90_us", json!(r.p90)),
        ("p99_us", json!(r.p99)),
        ("max_us", json!(r.max)),
        ("certs", json!(r.certs)),
        ("errors", json!(r.errors)),
        ("concurrency", json!(r.concurrency)),
        ("cores", json!(taskset.as_ref().map(|_| 1))),
        (
            "pinned",
            json!(taskset.as_ref().map(|_| format!("taskset -c {CORE}"))),
        ),
        ("runtime", json!(r.runtime)),
        ("csrs", json!(r.csrs)),
        ("seconds", json!(crate::report::round(r.seconds, 2))),
        ("cpu_s", json!(crate::report::round(cpu, 2))),
        ("other_cpu_s", json!(crate::report::round(other, 2))),
        ("disturbed", json!(other > 0.1 * r.seconds.max(0.001))),
        ("load", json!("mesh identity bench")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mesh_identity_bench() {
        let out = r#"{
  "runtime": "current_thread",
  "concurrency": 4,
  "csrs": 256,
  "seconds": 5.0001,
  "certs": 40000,
  "errors": 0,
  "certs_per_sec": 7999.8,
  "latency_us_p50": 480,
  "latency_us_p90": 600,
  "latency_us_p99": 900,
  "latency_us_max": 3000
}
"#;
        let r = parse(out).expect("parses");
        assert_eq!(r.runtime, "current_thread");
        assert_eq!((r.concurrency, r.certs, r.errors), (4, 40000, 0));
        assert_eq!((r.p50, r.p90, r.p99, r.max), (480, 600, 900, 3000));
        assert!((r.certs_per_sec - 7999.8).abs() < 1e-9);
        assert!(parse("not json").is_err());
    }
}
