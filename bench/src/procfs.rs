//! Child processes that are always killed, and what `/proc` says about them.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// A spawned child that is killed (SIGKILL) when dropped, on every path out of the
/// orchestrator: success, error, panic, or a signal turned into an error.
#[derive(Debug)]
pub struct Guarded {
    pub name: &'static str,
    pub pid: u32,
    child: Child,
}

impl Guarded {
    /// Spawns `cmd`, recording its pid in `pid_file` (if any) so that `bench/run` can clean up
    /// even if this process is killed outright.
    pub fn spawn(
        name: &'static str,
        cmd: &mut Command,
        pid_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let child = cmd
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("the {name} has no pid"))?;
        if let Some(f) = pid_file {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .with_context(|| format!("opening {}", f.display()))?;
            writeln!(f, "{pid}")?;
        }
        Ok(Self { name, pid, child })
    }

    /// The child itself, still killed when dropped.
    pub fn into_child(self) -> Child {
        self.child
    }

    /// Fails if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the {} (pid {}) exited: {status}", self.name, self.pid),
        }
    }

    /// Waits up to `limit` for the child to exit by itself; kills it otherwise. Returns how it
    /// ended, e.g. `exit status: 0` or `killed after 5s`.
    pub async fn wait_or_kill(&mut self, limit: Duration) -> String {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("killed after {}s", limit.as_secs_f64())
            }
        }
    }
}

/// User plus system CPU time of `pid` so far, in seconds (all threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SEC)
}

/// CPU time of this process plus its waited-for children (wrk, h2load), in seconds.
pub fn self_and_children_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/self/stat")?;
    // utime, stime, cutime, cstime: fields 14 to 17.
    let ticks = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()?;
    if ticks.len() != 4 {
        bail!("short /proc/self/stat");
    }
    Ok(ticks.iter().sum::<u64>() as f64 / TICKS_PER_SEC)
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait), in seconds.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f = cpu
        .split_whitespace()
        .map(|f| f.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    Ok(busy as f64 / TICKS_PER_SEC)
}

/// The number on a line of `/proc/<pid>/status`: `VmRSS` and `VmHWM` (in kB), `Threads`.
pub fn status_number(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?
        .parse::<u64>()
        .with_context(|| format!("bad {key} in /proc/{pid}/status"))
}

/// What the scheduler did for a process, summed over its threads (`/proc/<pid>/task/*`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sched {
    /// Time on a CPU and time runnable but waiting for one (`schedstat`), in nanoseconds.
    pub on_cpu_ns: u64,
    pub wait_ns: u64,
    /// Times a thread was put on a CPU (`schedstat`'s third field): about one per wake-up.
    pub slices: u64,
    /// Context switches: the thread blocked (voluntary) or was preempted (involuntary).
    pub voluntary: u64,
    pub involuntary: u64,
}

impl Sched {
    /// `self - earlier`, field by field (threads that exited in between are not counted).
    pub fn since(&self, earlier: &Sched) -> Sched {
        Sched {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            slices: self.slices.saturating_sub(earlier.slices),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

/// The scheduler's counters for `pid`, over all its threads.
pub fn sched(pid: u32) -> anyhow::Result<Sched> {
    let mut total = Sched::default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
    for task in tasks {
        let dir = task?.path();
        // A thread may exit between the listing and the reads: skip it.
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let f: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [on, wait, slices] = f[..] {
            total.on_cpu_ns += on;
            total.wait_ns += wait;
            total.slices += slices;
        }
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.voluntary += field("voluntary_ctxt_switches");
        total.involuntary += field("nonvoluntary_ctxt_switches");
    }
    Ok(total)
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS, so that the next reading is the
/// peak of what happened in between. Returns false where the kernel does not allow it.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A private scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
        assert!(status_number(pid, "VmRSS").expect("VmRSS") > 0);
        assert!(status_number(pid, "VmHWM").expect("VmHWM") > 0);
        assert!(status_number(pid, "NoSuchKey").is_err());
        assert!(self_and_children_cpu_seconds().expect("self stat") >= 0.0);
        assert!(machine_busy_seconds().expect("/proc/stat") > 0.0);
        let s = sched(pid).expect("sched");
        assert!(s.on_cpu_ns > 0 && s.slices > 0, "{s:?}");
        assert_eq!(s.since(&s), Sched::default());
    }
}
