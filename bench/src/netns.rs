//! Network namespaces for the production path (`prod.rs`): a node namespace holding a bridge,
//! and pods, each a namespace joined to the bridge by a veth pair, the way a CNI bridge plugin
//! wires pods on a node. Every address lives inside these namespaces; nothing touches the
//! host's own links. Needs root and `ip` (iproute2).
//!
//! ```text
//!  <prefix>node: br0 10.201.0.254/24
//!    ├── veth ── <prefix><pod>: eth0 10.201.0.<n>/24, lo
//!    └── ...
//! ```
//!
//! Dropping a [`Node`] deletes its namespaces without waiting (`ip netns delete`, spawned),
//! so that an error or a signal never leaves them behind; [`Node::remove`] does the same and
//! waits. Namespaces of an earlier run whose process is gone are deleted by [`remove_stale`].

use std::{net::Ipv4Addr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// Every namespace `bench` creates is named `bench-<pid>-<what>`.
const PREFIX: &str = "bench-";
/// The pods' subnet; the node's bridge is `.254`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 254);
const SUBNET_PREFIX_LEN: u8 = 24;
/// Bound on any one helper command (`ip`, `iptables` through `init`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The effective uid, from `/proc/self/status`.
pub fn effective_uid() -> anyhow::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?
        .parse()
        .context("bad Uid line in /proc/self/status")
}

/// Runs `program args` to completion within [`COMMAND_TIMEOUT`]; its stdout, or why it failed.
pub async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let shown = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, out)
        .await
        .with_context(|| format!("`{}` timed out", shown()))?
        .with_context(|| format!("running `{}`", shown()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node: its namespace, its bridge and the pods created on it.
#[derive(Debug)]
pub struct Node {
    /// `bench-<pid>-`.
    prefix: String,
    /// Namespaces created so far (the node's first); all deleted on drop.
    created: Vec<String>,
    next_ip: u8,
}

/// A pod: a namespace with `eth0` on the node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Node {
    /// The node's namespace (`bench-<pid>-node`) with `br0` at [`NODE_IP`].
    pub async fn create() -> anyhow::Result<Self> {
        remove_stale().await;
        let mut node = Node {
            prefix: format!("{PREFIX}{}-", std::process::id()),
            created: Vec::new(),
            next_ip: 1,
        };
        let ns = node.name("node");
        run("ip", &["netns", "add", &ns])
            .await
            .context("creating a network namespace")?;
        node.created.push(ns.clone());
        let addr = format!("{NODE_IP}/{SUBNET_PREFIX_LEN}");
        for args in [
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "link", "add", "br0", "type", "bridge"],
            vec!["-n", &ns, "addr", "add", &addr, "dev", "br0"],
            vec!["-n", &ns, "link", "set", "br0", "up"],
        ] {
            run("ip", &args).await?;
        }
        Ok(node)
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// The node's own namespace (where the bridge, and the identity service, are).
    pub fn netns(&self) -> String {
        self.name("node")
    }

    /// A new pod `bench-<pid>-<name>` on the bridge, with the next free address.
    pub async fn pod(&mut self, name: &str) -> anyhow::Result<Pod> {
        if self.next_ip >= 254 {
            bail!("no pod addresses left");
        }
        let ip = Ipv4Addr::new(10, 201, 0, self.next_ip);
        self.next_ip += 1;
        let ns = self.name(name);
        run("ip", &["netns", "add", &ns]).await?;
        self.created.push(ns.clone());
        let node = self.netns();
        // The node's end of the veth pair: at most 15 characters.
        let host_end = format!("v{}", ip.octets()[3]);
        let addr = format!("{ip}/{SUBNET_PREFIX_LEN}");
        for args in [
            vec![
                "-n", &node, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
            vec!["-n", &node, "link", "set", &host_end, "master", "br0"],
            vec!["-n", &node, "link", "set", &host_end, "up"],
            vec!["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
        ] {
            run("ip", &args).await?;
        }
        Ok(Pod { netns: ns, ip })
    }

    /// Deletes every namespace and waits for `ip` to finish.
    pub async fn remove(mut self) {
        for ns in std::mem::take(&mut self.created).iter().rev() {
            let _ = run("ip", &["netns", "delete", ns]).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Spawned, not waited for: this may run on the runtime's thread.
        for ns in self.created.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
    }
}

/// Deletes namespaces named `bench-<pid>-*` whose process no longer exists (a run that was
/// SIGKILLed before it could clean up).
pub async fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]).await else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
            .filter(|pid| pid.parse::<u32>().is_ok());
        if let Some(pid) = pid
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = run("ip", &["netns", "delete", name]).await;
        }
    }
}

/// `ip netns exec <netns> <program>`: a command that runs in the namespace (`ip` execs the
/// program, so the child's pid is the program's).
pub fn exec_in(netns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    cmd
}
