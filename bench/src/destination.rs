//! The `destination` scenario: one service with 10,000 endpoints watched by 1,000 `Get` streams
//! (`mesh destination bench`: the real server in one process, the watchers in a child
//! process); how long one endpoint change takes to reach every watcher, and the server's RSS.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::Value;
use tokio::process::Command;

use crate::tools;

/// Runs `mesh destination bench` and returns its report's fields, flattened
/// (`latency_ms.p99` becomes `latency_ms_p99`).
pub async fn run(mesh_bin: &Path, pid_file: Option<&Path>) -> anyhow::Result<Vec<(String, Value)>> {
    let mut cmd = Command::new(mesh_bin);
    cmd.args(["destination", "bench"]);
    let out = tools::run_tool(
        "mesh destination bench",
        &mut cmd,
        Duration::from_secs(600),
        pid_file,
    )
    .await
    .context("running mesh destination bench")?;
    parse(&out).with_context(|| format!("parsing mesh destination bench's output:\n{out}"))
}

fn parse(out: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let v: Value = serde_json::from_str(out.trim()).context("not JSON")?;
    let obj = v.as_object().context("not a JSON object")?;
    let mut fields = Vec::new();
    for (k, v) in obj {
        match v {
            Value::Object(inner) => {
                for (k2, v2) in inner {
                    fields.push((format!("{k}_{k2}"), v2.clone()));
                }
            }
            other => fields.push((k.clone(), other.clone())),
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_the_report() {
        let f = parse(
            r#"{"endpoints": 10000, "latency_ms": {"p50": 30.5, "p99": 52.8, "max": 80.6},
                "rss_mb_peak": 67.8}"#,
        )
        .unwrap();
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("endpoints"), Some(serde_json::json!(10000)));
        assert_eq!(get("latency_ms_p99"), Some(serde_json::json!(52.8)));
        assert_eq!(get("rss_mb_peak"), Some(serde_json::json!(67.8)));
        assert!(parse("not json").is_err());
    }
}
