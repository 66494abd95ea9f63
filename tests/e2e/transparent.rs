//! Transparent mode with real iptables, in network namespaces.
//!
//! Two namespaces joined by a veth pair stand in for a pod and a peer on the pod network:
//!
//! ```text
//!  mesh-peer-<pid>                         mesh-pod-<pid>
//!  10.199.0.2 ──────────── veth ────────── 10.199.0.1
//!  :9090 HTTP "peer"                       nat PREROUTING ─► PROXY_INIT_REDIRECT ─► :4143
//!  :6379 TCP echo                          nat OUTPUT ─────► PROXY_INIT_OUTPUT ───► :4140
//!                                          proxy (uid 2102), app :8080 HTTP "app"
//! ```
//!
//! The pod gets the nat rules Linkerd's proxy-init installs, and the real proxy binary runs in it
//! as uid 2102 with its default listeners. The test then shows that:
//!
//! * inbound: a request from the peer to `10.199.0.1:8080` is redirected to the inbound listener,
//!   whose `SO_ORIGINAL_DST` recovers port 8080, and reaches the app from `127.0.0.1`;
//! * outbound: a request from the pod (as root) to `10.199.0.2:9090` is redirected to the outbound
//!   listener and forwarded to the original destination, and the proxy's own connection (uid
//!   2102) is not redirected back into the proxy;
//! * opaque: a raw TCP connection to `10.199.0.2:6379` (a default opaque port) is relayed too.
//!
//! Each is checked both end to end (the reply, and the client address the server saw) and in the
//! proxy's own metrics.
//!
//! Needs root, `ip`, `iptables` (nft or legacy), `setpriv` and `python3`, and a kernel that lets
//! it create namespaces and nat rules. Without them the test prints `SKIP` and passes, unless
//! `MESH_REQUIRE_NETNS=1` is set (as CI does), when it fails. Rules that a working iptables
//! rejects always fail.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const PROXY_UID: &str = "2102";
/// Runs what follows as the proxy's user, as the proxy container's `runAsUser` would.
const AS_PROXY_UID: [&str; 6] = [
    "setpriv",
    "--reuid",
    PROXY_UID,
    "--regid",
    PROXY_UID,
    "--clear-groups",
];
const POD_IP: &str = "10.199.0.1";
const PEER_IP: &str = "10.199.0.2";
const APP_PORT: u16 = 8080;
const PEER_HTTP_PORT: u16 = 9090;
/// In the proxy's default opaque-port list, so it is forwarded without detection.
const PEER_ECHO_PORT: u16 = 6379;
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;

/// Bound on any single helper command (ip, iptables, a python client).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a server (the proxy included) starting to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `http|echo PORT MARKER`: an HTTP server answering `MARKER client=<peer ip>`, or a TCP echo
/// server.
const SERVER_PY: &str = r#"
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
mode, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "http":
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{marker} client={self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
else:
    srv = socket.create_server(("0.0.0.0", port))
    def echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
"#;

/// `HOST PORT PATH`: one GET; prints the status line's code, then the body.
const GET_PY: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
conn.request("GET", sys.argv[3])
resp = conn.getresponse()
sys.stdout.write(f"{resp.status}\n{resp.read().decode()}")
"#;

/// `HOST PORT MESSAGE`: sends MESSAGE over raw TCP and prints what comes back.
const ECHO_PY: &str = r#"
import socket, sys
msg = sys.argv[3].encode()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        data = s.recv(65536)
        if not data:
            break
        got += data
sys.stdout.write(got.decode())
"#;

/// `HOST PORT SECONDS`: waits until HOST:PORT accepts a TCP connection; exits 1 after SECONDS.
const WAIT_PY: &str = r#"
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
        sys.exit(0)
    except OSError as e:
        if time.monotonic() > deadline:
            sys.stderr.write(f"{sys.argv[1]}:{sys.argv[2]} not accepting: {e}\n")
            sys.exit(1)
        time.sleep(0.05)
"#;

#[tokio::test(flavor = "current_thread")]
async fn iptables_redirect_through_the_proxy() {
    if let Err(reason) = preconditions().await {
        return skip_or_fail(&reason);
    }
    let mut mesh = match Mesh::create().await {
        Ok(m) => m,
        Err(reason) => return skip_or_fail(&reason),
    };
    let iptables = match mesh.install_proxy_init_rules().await {
        Ok(variant) => variant,
        Err(reason) => return skip_or_fail(&reason),
    };
    eprintln!("transparent: nat rules installed with {iptables}");

    mesh.start_servers().await;
    mesh.start_proxy().await;

    let before = mesh.metrics().await;
    assert_eq!(
        sum(&before, "request_total", &[r#"direction="inbound""#]),
        0.0,
        "no traffic yet:\n{before}"
    );

    // Inbound: peer -> pod-ip:8080, PREROUTING REDIRECT -> 0.0.0.0:4143 -> 127.0.0.1:8080.
    let out = mesh
        .get(&mesh.peer, POD_IP, APP_PORT, "/in")
        .await
        .expect("inbound request from the peer");
    assert_eq!(
        out, "200\napp-in-pod client=127.0.0.1\n",
        "the app must answer, and see the proxy's loopback connection, not the peer's address"
    );

    // Outbound: root in the pod -> peer-ip:9090, OUTPUT REDIRECT -> 127.0.0.1:4140 -> peer.
    let out = mesh
        .get(&mesh.pod, PEER_IP, PEER_HTTP_PORT, "/out")
        .await
        .expect("outbound request from the pod");
    assert_eq!(
        out,
        format!("200\npeer client={POD_IP}\n"),
        "the peer must answer a connection from the pod's address"
    );

    // Opaque outbound: root in the pod -> peer-ip:6379 (opaque by default), relayed as TCP.
    let msg = "PING transparent opaque";
    let out = mesh
        .echo(&mesh.pod, PEER_IP, PEER_ECHO_PORT, msg)
        .await
        .expect("opaque outbound connection from the pod");
    assert_eq!(
        out, msg,
        "the peer's echo server must echo through the proxy"
    );

    // The counters settle when the connections close; give them a bounded moment.
    let inbound = [
        r#"direction="inbound""#,
        &format!(r#"target_addr="127.0.0.1:{APP_PORT}""#),
    ];
    let outbound = [
        r#"direction="outbound""#,
        &format!(r#"target_addr="{PEER_IP}:{PEER_HTTP_PORT}""#),
    ];
    let opaque = [
        r#"direction="outbound""#,
        r#"peer="dst""#,
        &format!(r#"target_addr="{PEER_IP}:{PEER_ECHO_PORT}""#),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = mesh.metrics().await;
        let done = sum(&m, "request_total", &inbound) >= 1.0
            && sum(&m, "request_total", &outbound) >= 1.0
            && sum(&m, "tcp_open_total", &opaque) >= 1.0;
        if done || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let report = |what: &str| format!("{what}; metrics:\n{}", interesting(&metrics));
    // Exactly one each: a redirect loop would multiply the outbound requests.
    assert_eq!(
        sum(&metrics, "request_total", &inbound),
        1.0,
        "{}",
        report("the inbound request must cross the proxy (REDIRECT + SO_ORIGINAL_DST)")
    );
    assert_eq!(
        sum(&metrics, "request_total", &outbound),
        1.0,
        "{}",
        report("the outbound request must cross the proxy exactly once")
    );
    assert_eq!(
        sum(&metrics, "tcp_open_total", &opaque),
        1.0,
        "{}",
        report("the opaque connection must be forwarded to its original destination")
    );
    // The proxy's own upstream connections are exempt (uid 2102): it never sees a connection
    // whose original destination is one of its own listeners.
    for port in [INBOUND_PORT, OUTBOUND_PORT] {
        for family in ["request_total", "tcp_open_total"] {
            let own = format!(":{port}\"");
            assert!(
                !metrics
                    .lines()
                    .any(|l| l.starts_with(family) && l.contains(&own)),
                "{}",
                report(&format!(
                    "no {family} may target the proxy's own port {port}"
                ))
            );
        }
    }
    mesh.assert_proxy_running();
    eprintln!(
        "transparent: ok ({iptables}):\n{}",
        interesting(&metrics).trim_end()
    );
}

// === gate ===

fn skip_or_fail(reason: &str) {
    if std::env::var("MESH_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("MESH_REQUIRE_NETNS=1 but the transparent-mode test cannot run: {reason}");
    }
    eprintln!("SKIP transparent: {reason} (set MESH_REQUIRE_NETNS=1 to make this a failure)");
}

async fn preconditions() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!("needs root (effective uid is {euid})"));
    }
    for tool in [
        &["ip", "-V"][..],
        &["setpriv", "--version"],
        &["python3", "--version"],
    ] {
        run(tool)
            .await
            .map_err(|e| format!("{} missing: {e}", tool[0]))?;
    }
    if run(&["iptables", "--version"]).await.is_err()
        && run(&["iptables-legacy", "--version"]).await.is_err()
    {
        return Err("neither iptables nor iptables-legacy is installed".into());
    }
    Ok(())
}

// === the namespaces ===

/// Everything the test created; dropping it kills the processes and deletes the namespaces,
/// panicking or not.
struct Mesh {
    pod: String,
    peer: String,
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    proxy: Option<usize>,
}

impl Mesh {
    async fn create() -> Result<Self, String> {
        remove_stale_namespaces().await;
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("mesh-transparent-{pid}"));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // uid 2102 may need to execute a copy of the proxy from here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mesh = Mesh {
            pod: format!("mesh-pod-{pid}"),
            peer: format!("mesh-peer-{pid}"),
            dir,
            children: Vec::new(),
            proxy: None,
        };
        // From here on, Drop cleans up whatever was created.
        for ns in [&mesh.pod, &mesh.peer] {
            run(&["ip", "netns", "add", ns])
                .await
                .map_err(|e| format!("cannot create network namespace {ns}: {e}"))?;
        }
        let (pod, peer) = (mesh.pod.as_str(), mesh.peer.as_str());
        // Both ends are created inside the namespaces, so nothing touches the host's links.
        let setup = [
            format!("-n {pod} link add eth0 type veth peer name eth0 netns {peer}"),
            format!("-n {pod} addr add {POD_IP}/30 dev eth0"),
            format!("-n {peer} addr add {PEER_IP}/30 dev eth0"),
            format!("-n {pod} link set lo up"),
            format!("-n {peer} link set lo up"),
            format!("-n {pod} link set eth0 up"),
            format!("-n {peer} link set eth0 up"),
        ];
        for args in &setup {
            let mut cmd = vec!["ip"];
            cmd.extend(args.split_whitespace());
            run(&cmd)
                .await
                .map_err(|e| format!("network setup failed: {e}"))?;
        }
        Ok(mesh)
    }

    /// Installs proxy-init's nat rules in the pod, with `iptables` or else `iptables-legacy`.
    /// Fails only when neither can manage the nat table at all.
    async fn install_proxy_init_rules(&self) -> Result<&'static str, String> {
        let rules = [
            "-N PROXY_INIT_REDIRECT".to_string(),
            "-A PROXY_INIT_REDIRECT -p tcp --match multiport --dports 4190,4191 \
             -m comment --comment proxy-init/ignore-port-4190,4191 -j RETURN"
                .to_string(),
            format!(
                "-A PROXY_INIT_REDIRECT -p tcp \
                 -m comment --comment proxy-init/redirect-all-incoming-to-proxy-port \
                 -j REDIRECT --to-port {INBOUND_PORT}"
            ),
            "-A PREROUTING -m comment --comment proxy-init/install-proxy-init-prerouting \
             -j PROXY_INIT_REDIRECT"
                .to_string(),
            "-N PROXY_INIT_OUTPUT".to_string(),
            format!(
                "-A PROXY_INIT_OUTPUT -m owner --uid-owner {PROXY_UID} \
                 -m comment --comment proxy-init/ignore-proxy-user-id -j RETURN"
            ),
            "-A PROXY_INIT_OUTPUT -o lo -m comment --comment proxy-init/ignore-loopback -j RETURN"
                .to_string(),
            format!(
                "-A PROXY_INIT_OUTPUT -p tcp \
                 -m comment --comment proxy-init/redirect-all-outgoing-to-proxy-port \
                 -j REDIRECT --to-port {OUTBOUND_PORT}"
            ),
            "-A OUTPUT -m comment --comment proxy-init/install-proxy-init-output \
             -j PROXY_INIT_OUTPUT"
                .to_string(),
        ];
        let mut errors = Vec::new();
        let mut usable = false;
        'variant: for variant in ["iptables", "iptables-legacy"] {
            let nat = ["ip", "netns", "exec", &self.pod, variant, "-t", "nat"];
            if let Err(e) = run(&[&nat[..], &["-S"]].concat()).await {
                errors.push(format!("{variant}: {e}"));
                continue;
            }
            usable = true;
            for rule in &rules {
                let mut cmd = nat.to_vec();
                cmd.extend(rule.split_whitespace());
                if let Err(e) = run(&cmd).await {
                    errors.push(format!("{variant}: {e}"));
                    // Leave nothing half-installed for the next variant to run alongside.
                    for undo in ["-F", "-X"] {
                        let _ = run(&[&nat[..], &[undo]].concat()).await;
                    }
                    continue 'variant;
                }
            }
            let listing = run(&[&nat[..], &["-S"]].concat())
                .await
                .map_err(|e| format!("{variant} -S: {e}"))?;
            eprintln!(
                "transparent: {} nat table:\n{}",
                self.pod,
                listing.trim_end()
            );
            return Ok(variant);
        }
        let errors = errors.join("\n");
        // A nat table that cannot even be listed is the environment's limitation (no netfilter
        // in this kernel or container); rules rejected by a working iptables are a failure.
        assert!(
            !usable,
            "cannot install the proxy-init rules in {}:\n{errors}",
            self.pod
        );
        Err(format!(
            "no usable iptables nat table in {}: {errors}",
            self.pod
        ))
    }

    async fn start_servers(&mut self) {
        let (pod, peer) = (self.pod.clone(), self.peer.clone());
        let servers = [
            ("app", &pod, "http", APP_PORT, "app-in-pod"),
            ("peer-http", &peer, "http", PEER_HTTP_PORT, "peer"),
            ("peer-echo", &peer, "echo", PEER_ECHO_PORT, "echo"),
        ];
        for (name, ns, mode, port, marker) in servers {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "python3", "-c", SERVER_PY, mode])
                .arg(port.to_string())
                .arg(marker);
            self.spawn(name, cmd);
        }
        for (name, ns, _, port, _) in servers {
            // Probed over each namespace's loopback: never redirected, never seen by the proxy.
            self.wait_accepting(name, ns, port).await;
        }
    }

    /// Runs the proxy binary in the pod as uid 2102, with linkerd2-proxy's default listeners.
    async fn start_proxy(&mut self) {
        let bin = self.proxy_binary().await;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod])
            .args(AS_PROXY_UID)
            .arg(&bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("LINKERD2_PROXY_") || k.starts_with("MESH_PROXY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
            format!("0.0.0.0:{INBOUND_PORT}"),
        )
        .env(
            "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
            format!("127.0.0.1:{OUTBOUND_PORT}"),
        )
        .env(
            "LINKERD2_PROXY_ADMIN_LISTEN_ADDR",
            format!("127.0.0.1:{ADMIN_PORT}"),
        )
        .env("LINKERD2_PROXY_CORES", "1")
        .env("LINKERD2_PROXY_LOG", "warn,linkerd_proxy=debug");
        self.proxy = Some(self.children.len());
        self.spawn("proxy", cmd);
        self.wait_accepting("proxy", &self.pod, ADMIN_PORT).await;
        self.assert_proxy_running();
    }

    /// The test binary, or a world-executable copy of it when uid 2102 cannot run it in place.
    async fn proxy_binary(&self) -> PathBuf {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_test-proxy"));
        if self.proxy_uid_can_execute(&bin).await {
            return bin;
        }
        let copy = self.dir.join("test-proxy");
        fs::copy(&bin, &copy).expect("copy the proxy binary");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod the copy");
        assert!(
            self.proxy_uid_can_execute(&copy).await,
            "uid {PROXY_UID} can execute neither {} nor its copy {}",
            bin.display(),
            copy.display()
        );
        eprintln!(
            "transparent: uid {PROXY_UID} cannot execute {}; using a copy",
            bin.display()
        );
        copy
    }

    async fn proxy_uid_can_execute(&self, bin: &Path) -> bool {
        let bin = bin.to_str().expect("a UTF-8 binary path");
        let mut cmd = AS_PROXY_UID.to_vec();
        cmd.extend(["test", "-r", bin, "-a", "-x", bin]);
        run(&cmd).await.is_ok()
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) {
        let log = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create a log file");
        let err = out.try_clone().expect("clone the log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.children.push((name, child));
    }

    async fn wait_accepting(&self, name: &str, ns: &str, port: u16) {
        let (port_s, secs) = (port.to_string(), READY_TIMEOUT.as_secs().to_string());
        let args = ["python3", "-c", WAIT_PY, "127.0.0.1", &port_s, &secs];
        if let Err(e) = self.in_ns(ns, &args).await {
            panic!("{name} did not accept on 127.0.0.1:{port} in {ns}: {e}");
        }
    }

    fn assert_proxy_running(&mut self) {
        let i = self.proxy.expect("the proxy was started");
        if let Ok(Some(status)) = self.children[i].1.try_wait() {
            panic!("the proxy exited: {status}");
        }
    }

    /// One HTTP/1.1 GET from inside `ns`; the status code and body.
    async fn get(&self, ns: &str, host: &str, port: u16, path: &str) -> Result<String, String> {
        let port = port.to_string();
        self.in_ns(ns, &["python3", "-c", GET_PY, host, &port, path])
            .await
    }

    /// Sends `msg` over one raw TCP connection from inside `ns`; what came back.
    async fn echo(&self, ns: &str, host: &str, port: u16, msg: &str) -> Result<String, String> {
        let port = port.to_string();
        self.in_ns(ns, &["python3", "-c", ECHO_PY, host, &port, msg])
            .await
    }

    async fn in_ns(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec!["ip", "netns", "exec", ns];
        cmd.extend_from_slice(args);
        run(&cmd).await
    }

    /// The proxy's Prometheus text, fetched over the pod's loopback (exempt from redirection).
    async fn metrics(&self) -> String {
        let out = self
            .get(&self.pod, "127.0.0.1", ADMIN_PORT, "/metrics")
            .await
            .expect("fetch the proxy's metrics");
        match out.split_once('\n') {
            Some(("200", body)) => body.to_string(),
            _ => panic!("/metrics did not answer 200: {out}"),
        }
    }

    /// The end of every child's log, for failures.
    fn logs(&self) -> String {
        const TAIL: usize = 4096;
        let mut s = String::new();
        for (name, _) in &self.children {
            let log = fs::read(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(TAIL)..]);
            s.push_str(&format!("--- {name} log (last {TAIL} bytes) ---\n{tail}\n"));
        }
        s
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "transparent: logs from {}:\n{}",
                self.dir.display(),
                self.logs()
            );
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Deletes namespaces left by earlier runs that were killed before their Drop could run.
async fn remove_stale_namespaces() {
    let Ok(list) = run(&["ip", "netns", "list"]).await else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let pid = name
            .strip_prefix("mesh-pod-")
            .or_else(|| name.strip_prefix("mesh-peer-"));
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = run(&["ip", "netns", "delete", name]).await;
        }
    }
}

// === helpers ===

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; its stdout, or why it failed.
async fn run(args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = || {
        args.iter()
            .map(|a| if a.contains('\n') { "<script>" } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let output: Output = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(format!("`{}` timed out after {COMMAND_TIMEOUT:?}", shown())),
        Ok(Err(e)) => return Err(format!("`{}`: {e}", shown())),
        Ok(Ok(o)) => o,
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}{}",
            shown(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&output.stdout).trim_end(),
        ))
    }
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The request and TCP counters, for messages.
fn interesting(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("request_total{") || l.starts_with("tcp_open_total{"))
        .map(|l| format!("{l}\n"))
        .collect()
}
