//! `process_*` series.

use super::family;
use std::fmt::Write as _;

/// `process_*` from /proc, as the Prometheus client libraries export them.
pub(super) fn encode(out: &mut String, start_time: f64) {
    const TICKS_PER_SEC: f64 = 100.0;
    family(
        out,
        "process_start_time_seconds",
        "Time that the process started (in seconds since the UNIX epoch)",
        "gauge",
    );
    let _ = writeln!(out, "process_start_time_seconds {start_time}");
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (ticks(11) + ticks(12)) / TICKS_PER_SEC;
        family(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        family(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", kb("VmRSS:") * 1024);
        family(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {}", kb("VmSize:") * 1024);
        family(
            out,
            "process_threads",
            "Number of OS threads in the process.",
            "gauge",
        );
        let _ = writeln!(out, "process_threads {}", kb("Threads:"));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
        );
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(max) = max {
            family(
                out,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                "gauge",
            );
            let _ = writeln!(out, "process_max_fds {max}");
        }
    }
}
