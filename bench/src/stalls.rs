//! How long the machine itself keeps a CPU from running anything: one probe per CPU, pinned
//! there (`taskset -c N`) at real-time priority (`chrt -f 1`), so that no ordinary process can
//! delay it. It sleeps `period` at a time and counts every wake-up later than `threshold`.
//! On a virtual machine that is time the vCPU was not running at all (the host ran something
//! else) or spent in interrupts, which the guest's own CPU accounting does not show: a request
//! whose path needed that CPU waited as long. A row's `disturbed` (other processes' CPU) and
//! the load generator's dispatch lag miss most of it.

use std::{
    path::Path,
    process::Command as StdCommand,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{process::Command, task::JoinHandle};

use crate::{report::round, tools};

/// Wake-ups later than this count as a stall.
pub const THRESHOLD: Duration = Duration::from_micros(200);
/// How often each probe wakes.
pub const PERIOD: Duration = Duration::from_millis(1);

/// What one probe saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stalls {
    pub wakeups: u64,
    /// Wake-ups later than the threshold.
    pub count: u64,
    /// Their lateness, added up.
    pub stalled: Duration,
    pub max: Duration,
}

impl Stalls {
    /// Counts one wake-up `late` after it was due.
    pub fn record(&mut self, late: Duration, threshold: Duration) {
        self.wakeups += 1;
        if late > threshold {
            self.count += 1;
            self.stalled += late;
            self.max = self.max.max(late);
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "wakeups": self.wakeups,
            "stalls": self.count,
            "stalled_ms": round(self.stalled.as_secs_f64() * 1e3, 2),
            "max_us": self.max.as_micros() as u64,
        })
    }

    fn from_json(v: &Value) -> Option<Stalls> {
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        Some(Stalls {
            wakeups: n("wakeups")?,
            count: n("stalls")?,
            stalled: Duration::from_secs_f64(v.get("stalled_ms")?.as_f64()? / 1e3),
            max: Duration::from_micros(n("max_us")?),
        })
    }
}

/// The probe's loop (`bench stalls`), on whatever CPU and priority it was started with.
#[expect(
    clippy::disallowed_methods,
    reason = "the probe's own process, on no runtime: a thread's sleep is what it measures"
)]
pub fn probe(duration: Duration, period: Duration, threshold: Duration) -> Stalls {
    let mut s = Stalls::default();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let before = Instant::now();
        std::thread::sleep(period);
        s.record(before.elapsed().saturating_sub(period), threshold);
    }
    s
}

/// Probes running on every CPU for one row.
#[derive(Debug)]
pub struct Running {
    probes: Vec<JoinHandle<anyhow::Result<String>>>,
}

impl Running {
    /// Starts one probe per CPU for `duration`; `None` (with the reason on stderr, once per
    /// call) when `chrt` or `taskset` is missing.
    pub fn start(bench: &Path, duration: Duration, pid_file: Option<&Path>) -> Option<Running> {
        let (Some(chrt), Some(taskset)) =
            (tools::find_on_path("chrt"), tools::find_on_path("taskset"))
        else {
            eprintln!("bench: warning: no chrt or taskset on PATH; no stall probe");
            return None;
        };
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let probes = (0..cpus)
            .map(|cpu| {
                let mut cmd = StdCommand::new(&chrt);
                cmd.args(["-f", "1"])
                    .arg(&taskset)
                    .args(["-c", &cpu.to_string()])
                    .arg(bench)
                    .args(["stalls", "--duration", &duration.as_secs_f64().to_string()]);
                let mut cmd = Command::from(cmd);
                let pid_file = pid_file.map(Path::to_path_buf);
                let limit = duration + Duration::from_secs(10);
                tokio::spawn(async move {
                    tools::run_tool("bench stalls", &mut cmd, limit, pid_file.as_deref()).await
                })
            })
            .collect();
        Some(Running { probes })
    }

    /// Every CPU's figures and their sum.
    pub async fn finish(self) -> anyhow::Result<(Stalls, Vec<Stalls>)> {
        let mut per_cpu = Vec::new();
        for p in self.probes {
            let out = p.await.context("the stall probe's task")??;
            let v: Value = serde_json::from_str(out.trim())
                .with_context(|| format!("bench stalls' output: {out}"))?;
            per_cpu.push(Stalls::from_json(&v).context("bench stalls' output")?);
        }
        let mut total = Stalls::default();
        for s in &per_cpu {
            total.wakeups += s.wakeups;
            total.count += s.count;
            total.stalled += s.stalled;
            total.max = total.max.max(s.max);
        }
        Ok((total, per_cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_late_wakeups_count() {
        let mut s = Stalls::default();
        s.record(Duration::from_micros(50), THRESHOLD);
        s.record(Duration::from_micros(200), THRESHOLD);
        s.record(Duration::from_micros(300), THRESHOLD);
        s.record(Duration::from_millis(4), THRESHOLD);
        assert_eq!(s.wakeups, 4);
        assert_eq!(s.count, 2);
        assert_eq!(s.stalled, Duration::from_micros(4300));
        assert_eq!(s.max, Duration::from_millis(4));
        assert_eq!(Stalls::from_json(&s.to_json()), Some(s));
    }

    #[test]
    fn a_short_probe_wakes_about_once_a_period() {
        let s = probe(Duration::from_millis(30), PERIOD, THRESHOLD);
        // Sleeping 1 ms at a time for 30 ms: at most 30 wake-ups, and some.
        assert!((1..=30).contains(&s.wakeups), "{s:?}");
    }
}
