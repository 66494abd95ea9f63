//! Helpers for the `mesh up` tests: a runtime directory per test, JSON, HTTP and processes.

#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

pub fn mesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
}

/// A runtime directory of its own (`MESH_RUNTIME_DIR`): the meshes a test starts are the only
/// ones its `mesh stat|list|down` see. Removed when dropped.
pub struct Runtime {
    pub dir: PathBuf,
}

impl Runtime {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Runtime { dir }
    }

    pub fn mesh(&self) -> Command {
        let mut c = mesh();
        c.env("MESH_RUNTIME_DIR", &self.dir);
        c
    }

    /// Writes a file beside the runtime directory (not in it: `mesh up` owns that).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let files = self.dir.with_extension("files");
        std::fs::create_dir_all(&files).unwrap();
        let path = files.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn state_file(&self, mesh: &str) -> PathBuf {
        self.dir.join(format!("{mesh}.json"))
    }

    pub fn state(&self, mesh: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.state_file(mesh)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Waits for `mesh up` to write its state file (it does once everything is ready).
    pub fn wait_for_state(&self, mesh: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.state(mesh) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "mesh {mesh} never wrote its state"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A workload's loopback address, from the state file (`mesh up` chose it).
    pub fn ip(&self, mesh: &str, workload: &str) -> String {
        let w = self
            .workload_state(mesh, workload)
            .unwrap_or_else(|| panic!("no workload {workload} in mesh {mesh}"));
        let app: std::net::SocketAddr = w["app"].as_str().unwrap().parse().unwrap();
        app.ip().to_string()
    }

    /// One workload of the state file.
    pub fn workload_state(&self, mesh: &str, workload: &str) -> Option<serde_json::Value> {
        self.state(mesh)?["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == workload)
            .cloned()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("files"));
    }
}

pub fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

/// A workload of a `mesh stat --json` or `mesh up --json` report, by name.
pub fn workload<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name}: {report}"))
}

/// One HTTP/1.1 GET over a fresh connection: the status and the body.
pub fn http_get(addr: &str, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text);
    (status, body)
}

/// Every live descendant of `pid`, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, ppid)) = stat(p)
            && state != 'Z'
        {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (c, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(*c);
            todo.push(*c);
        }
    }
    out
}

fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

/// Whether `pid` runs (a zombie, dead but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// `kill -SIGNAL pid`.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Whether `name` is installed. Missing, the test skips with a message, unless the tools are
/// required (`MESH_REQUIRE_TOOLS=1`, or `MESH_REQUIRE_NETNS=1` as CI sets: see .ci/run).
pub fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = ["MESH_REQUIRE_TOOLS", "MESH_REQUIRE_NETNS"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
        assert!(
            !required,
            "{name} is required (MESH_REQUIRE_TOOLS/MESH_REQUIRE_NETNS) but not installed: \
             apt-get install {name}"
        );
        println!("SKIP: {name} is not installed (apt-get install {name})");
    }
    found
}
