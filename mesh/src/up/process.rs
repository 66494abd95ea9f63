//! Starting and stopping the processes of a mesh so that none outlives `mesh up`, however it
//! ends.
//!
//! Every process `mesh up` starts (the control plane, each sidecar, each app's supervisor) gets
//! a parent-death signal (`PR_SET_PDEATHSIG`): the kernel signals it the moment `mesh up` dies,
//! even of `kill -9`. The control plane and sidecars are single processes and get `SIGKILL`.
//! An app is a shell command that may start processes of its own, which a parent-death signal
//! (cleared on `fork`) would not reach, so it runs under `mesh supervise` (see `supervise.rs`),
//! which gets `SIGTERM` and takes the app's whole process tree down with it.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits. `mesh up` runs on a
//! current-thread runtime whose one thread is the main thread, which lives as long as the
//! process, and spawns from it; `mesh supervise` spawns from its main thread too.

use rustix::process::{Pid, Signal};
use std::{io, path::Path, process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// A command for one process of the mesh: stdin closed; in a process group of its own (Ctrl-C
/// on the terminal reaches only `mesh up`, which stops everything in order); killed if its
/// handle is dropped; and sent `on_parent_death` when `mesh up` dies.
pub fn command(program: &Path, on_parent_death: Signal) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    die_with_parent(cmd.as_std_mut(), on_parent_death);
    cmd
}

/// Arranges for the child of `cmd` to get `signal` when this process dies.
pub fn die_with_parent(cmd: &mut std::process::Command, signal: Signal) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    let in_child = move || -> io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(signal))?;
        // The parent may have died between `fork` and the line above, in which case no signal
        // will ever come: then this child is already an orphan and must not start.
        if std::os::unix::process::parent_id() != parent {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: `pre_exec` requires the closure to be safe to run in the child between `fork`
    // and `exec`, where only async-signal-safe operations are allowed (another thread of the
    // parent may have held a lock, such as the allocator's, at the time of the fork). The
    // closure makes two system calls, `prctl(PR_SET_PDEATHSIG)` (rustix issues the syscall
    // directly) and `getppid` (async-signal-safe per POSIX), compares two integers, and on
    // failure builds an `io::Error` from a raw errno, which does not allocate. It touches no
    // lock, no allocator and no state shared with the parent; its one capture is a `u32`.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(in_child);
    }
}

fn pid_of(id: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(id).ok()?)
}

/// Sends `signal` to the process `child` (ours, not yet reaped, so its pid cannot have been
/// reused).
pub fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(pid_of) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Stops a child: `SIGTERM`, up to `grace` to exit, then `SIGKILL`. It is reaped either way.
pub async fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        t
    }
}

/// A log file for a child's output, private to the user; appended to (an app that restarts
/// keeps its earlier output).
pub fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{name}.log"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(f))
}
