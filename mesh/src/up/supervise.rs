//! `mesh supervise -- COMMAND...` (hidden): runs one app of `mesh up` and makes sure nothing it
//! started outlives it.
//!
//! `mesh up` starts it with `SIGTERM` as its parent-death signal. It becomes a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), so whatever the app starts stays its descendant even
//! when the app's shell exits or a process daemonizes, and runs the command in a process group
//! of its own, with `SIGKILL` as the parent-death signal (should the supervisor itself be
//! killed). It exits when:
//! - the app's command exits: the rest of its process tree is killed, and the supervisor exits
//!   with the command's status (128 + N for signal N), so `mesh up` sees how the app ended;
//! - it gets `SIGTERM`, `SIGINT` or `SIGHUP` (`mesh up` stopping, or dying): the tree gets
//!   `SIGTERM`, up to `--grace-ms` to exit (300 ms when `mesh up` is gone), then `SIGKILL`.

use rustix::process::{Pid, Signal, WaitOptions};
use std::{collections::BTreeMap, process::ExitCode, time::Duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the app's processes have after `SIGTERM` before they are killed.
    #[arg(long, default_value = "3000")]
    grace_ms: u64,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// How long the tree gets when the supervisor's parent is gone: everything must be down within
/// a couple of seconds of `mesh up` dying.
const ORPHAN_GRACE: Duration = Duration::from_millis(300);

pub fn run(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::out::errln!("mesh supervise: cannot start the runtime: {e}");
            return ExitCode::from(127);
        }
    };
    rt.block_on(supervise(args))
}

async fn supervise(args: Args) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let parent = std::os::unix::process::parent_id();
    // Handlers first: a SIGTERM from here on is a request to stop, never a silent death.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        crate::out::errln!("mesh supervise: cannot install signal handlers");
        return ExitCode::from(127);
    };
    let me = rustix::process::getpid();
    if let Err(e) = rustix::process::set_child_subreaper(Some(me)) {
        crate::out::errln!("mesh supervise: cannot become a subreaper: {e}");
    }
    let Some((program, rest)) = args.command.split_first() else {
        return ExitCode::from(127);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    super::process::die_with_parent(&mut cmd, Signal::KILL);
    let app = match cmd.spawn() {
        // Reaped below with `waitpid`, never through the handle.
        Ok(child) => Pid::from_child(&child),
        Err(e) => {
            crate::out::errln!("mesh supervise: cannot start {program}: {e}");
            return ExitCode::from(127);
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let status = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(status) = reap(app) {
                    break Some(status);
                }
            }
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => break None,
        }
    };
    match status {
        Some(status) => {
            // The command is done; whatever it left running goes with it.
            stop_tree(me, app, Duration::ZERO).await;
            exit_code(status)
        }
        None => {
            let orphaned = std::os::unix::process::parent_id() != parent;
            let grace = if orphaned {
                ORPHAN_GRACE
            } else {
                Duration::from_millis(args.grace_ms)
            };
            stop_tree(me, app, grace).await;
            ExitCode::from(143)
        }
    }
}

/// How the command ended, as this process's exit status; a signal is also said on stderr
/// (the app's error log).
fn exit_code(status: rustix::process::WaitStatus) -> ExitCode {
    if let Some(code) = status.exit_status() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let sig = status.terminating_signal().unwrap_or(0);
    crate::out::errln!("mesh supervise: the app was killed by signal {sig}");
    ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))
}

/// Reaps every exited child (orphans re-parented here included); the app's status when it is
/// among them.
fn reap(app: Pid) -> Option<rustix::process::WaitStatus> {
    let mut app_status = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if pid == app && (status.exited() || status.signaled()) {
            app_status = Some(status);
        }
    }
    app_status
}

/// `SIGTERM` to the app's process group and every descendant of this process, up to `grace`
/// for them to exit, then `SIGKILL` to whatever is left; returns once all are reaped.
async fn stop_tree(me: Pid, app: Pid, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut sig = if grace.is_zero() {
        Signal::KILL
    } else {
        Signal::TERM
    };
    // Each process gets the signal once per phase: a second SIGTERM means "hurry" to some.
    let mut signalled = std::collections::BTreeSet::new();
    let _ = rustix::process::kill_process_group(app, sig);
    loop {
        let left = descendants(me);
        for pid in &left {
            if signalled.insert(pid.as_raw_nonzero().get()) {
                let _ = rustix::process::kill_process(*pid, sig);
            }
        }
        let _ = reap(app);
        if left.is_empty() && rustix::process::test_kill_process_group(app).is_err() {
            return;
        }
        if sig == Signal::TERM && tokio::time::Instant::now() >= deadline {
            sig = Signal::KILL;
            signalled.clear();
            let _ = rustix::process::kill_process_group(app, sig);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every live descendant of `root`, from `/proc`.
fn descendants(root: Pid) -> Vec<Pid> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((state, ppid)) = parse_stat(&stat)
            && state != 'Z'
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root.as_raw_nonzero().get()];
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            out.extend(Pid::from_raw(*c));
            todo.push(*c);
        }
    }
    out
}

/// The state and parent pid from `/proc/<pid>/stat` (`pid (comm) state ppid ...`; the command
/// name may contain spaces and parentheses, so fields are read after the last `)`).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat("123 (sh) S 45 123 123 0 -1"), Some(('S', 45)));
        assert_eq!(parse_stat("123 (a) b (c) R 7 1 1"), Some(('R', 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_started_process_is_a_descendant_until_it_is_reaped() {
        let me = rustix::process::getpid();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_child(&child);
        assert!(descendants(me).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!descendants(me).contains(&pid));
    }
}
