//! Gives the memory glibc's malloc holds free back to the operating system once load drops.
//!
//! glibc returns memory to the system only from the top of a heap, so after a flood of
//! connections (a slowloris attack, a burst of clients) the freed memory stays resident:
//! 10,000 connections that each held ~25 KiB left 130–270 MB behind after they closed.
//! `malloc_trim(0)` releases every whole free page of every arena. A task looks every few
//! seconds and trims when connections have closed since its last look, or when the resident
//! size grew by more than a MiB since the last trim. A trim with nothing to release takes tens
//! of microseconds; releasing ~250 MB took 25–100 ms, once, at the end of a flood.
//!
//! Measured against jemalloc and mimalloc (idle RSS, per-connection RSS, RSS after a flood,
//! instructions per request): only this gets back to the idle size, without traffic, at one
//! or more cores, and it costs no instructions per request and no build time.

use std::time::{Duration, Instant};
use tracing::debug;

/// How often the task looks.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Growth of the resident size since the last trim (KiB) that is worth a trim by itself.
const GROWTH_KIB: u64 = 1024;

/// Runs for the proxy's life; `open` counts its open connections.
pub(crate) async fn run(open: impl Fn() -> usize) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_open = open();
    let mut rss_after_trim = rss_kib();
    loop {
        tick.tick().await;
        let now_open = open();
        let rss = rss_kib();
        if now_open < last_open || rss > rss_after_trim.saturating_add(GROWTH_KIB) {
            let started = Instant::now();
            let released = malloc_trim();
            rss_after_trim = rss_kib();
            debug!(
                open = now_open,
                rss_kib = rss,
                rss_after_kib = rss_after_trim,
                released,
                elapsed = ?started.elapsed(),
                "malloc_trim"
            );
        }
        last_open = now_open;
    }
}

/// VmRSS in KiB from /proc/self/status, 0 if unreadable.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[allow(unsafe_code)]
fn malloc_trim() -> bool {
    // SAFETY: `malloc_trim(size_t pad)` takes no pointer and has no precondition: it works only
    // on malloc's own state, taking each arena's lock in turn as `malloc` and `free` do, and
    // glibc documents it MT-Safe, so it may run on any thread while others allocate. It is not
    // async-signal-safe, and it is never called from a signal handler (only from this task).
    // Any `pad` is valid; 0 keeps nothing extra at the top of the heap.
    unsafe { libc::malloc_trim(0) == 1 }
}
