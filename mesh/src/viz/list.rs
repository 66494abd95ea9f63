//! `mesh list`: the meshes running on this machine (this user's); `mesh down [NAME]`: stop
//! one, as Ctrl-C in its terminal would.

use crate::instance::{self, Instance};
use crate::out::outln;
use crate::table::fit;
use anyhow::bail;
use serde::Serialize;
use std::{process::ExitCode, time::Duration};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The mesh to stop (see `mesh list`). Default: the only one running.
    name: Option<String>,
    /// How long to wait for it to drain and stop.
    #[arg(long, default_value = "30")]
    timeout_secs: u64,
}

#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    pid: Option<u32>,
    /// Unix time it started.
    started: Option<u64>,
    file: Option<String>,
    workloads: usize,
    ready: usize,
    /// The control plane's address (the workloads' follow it).
    control_plane: Option<String>,
    /// `starting` until everything is up, then `running`.
    status: &'static str,
}

fn listed(i: &Instance) -> Listed {
    match &i.state {
        Some(s) => Listed {
            name: i.name.clone(),
            pid: Some(s.pid),
            started: Some(s.started),
            file: Some(s.file.clone()),
            workloads: s.workloads.len(),
            ready: s.workloads.iter().filter(|w| w.ready).count(),
            control_plane: Some(s.identity_admin.ip().to_string()),
            status: "running",
        },
        None => Listed {
            name: i.name.clone(),
            pid: None,
            started: None,
            file: None,
            workloads: 0,
            ready: 0,
            control_plane: None,
            status: "starting",
        },
    }
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let runtime = instance::runtime_dir()?;
    let all: Vec<Listed> = instance::running(&runtime)?.iter().map(listed).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        outln!("no mesh is running (start one with `mesh up`)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    outln!(
        "{:<16} {:>8} {:>7} {:<15} {:>7}  FILE",
        "NAME",
        "PID",
        "READY",
        "CONTROL PLANE",
        "UPTIME"
    )?;
    for l in &all {
        let uptime = l.started.map_or("-".into(), |s| {
            let secs = now.saturating_sub(s);
            if secs >= 3600 {
                format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
            } else {
                format!("{}m{:02}s", secs / 60, secs % 60)
            }
        });
        let line = format!(
            "{:<16} {:>8} {:>7} {:<15} {:>7}  {}",
            fit(&l.name, 16),
            l.pid.map_or("-".into(), |p| p.to_string()),
            if l.status == "running" {
                format!("{}/{}", l.ready, l.workloads)
            } else {
                l.status.to_string()
            },
            l.control_plane.as_deref().unwrap_or("-"),
            uptime,
            l.file.as_deref().unwrap_or("-"),
        );
        outln!("{}", fit(&line, crate::table::WIDTH))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `SIGTERM` to the mesh's `mesh up` (after checking that the process holds that mesh's
/// lock, so a recycled pid is never signalled) and waits until it has stopped.
pub async fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let runtime = instance::runtime_dir()?;
    let found = instance::find(&runtime, args.name.as_deref())?;
    let Some(state) = &found.state else {
        bail!(
            "mesh {} is still starting; stop it once it is up, or with Ctrl-C in its terminal",
            found.name
        );
    };
    if !instance::holds(state.pid, &found.paths.lock) {
        bail!(
            "pid {} does not hold {}: it is not mesh {}'s `mesh up` (was it started by another \
             user?)",
            state.pid,
            found.paths.lock.display(),
            found.name
        );
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(state.pid)?)
        .ok_or_else(|| anyhow::anyhow!("pid {} in the state file", state.pid))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while instance::Lock::is_held(&found.paths.lock) {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "mesh {} (pid {}) has not stopped after {} s",
                found.name,
                state.pid,
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outln!("mesh {} stopped", found.name)?;
    Ok(ExitCode::SUCCESS)
}
