//! Transparent mode with real iptables, in network namespaces, installed by the real
//! `linkerd-proxy init`.
//!
//! Each test gets two fresh namespaces joined by a veth pair, standing in for a pod and a peer
//! on the pod network:
//!
//! ```text
//!  mesh-peer-<pid>-<n>                       mesh-pod-<pid>-<n>
//!  10.199.0.2, 10.199.0.3 ─────── veth ───── 10.199.0.1
//!  fd00:199::2 (IPv6 tests)                  fd00:199::1
//!  :9090 HTTP "peer"                         nat PREROUTING ─► PROXY_INIT_REDIRECT ─► :4143
//!  :6379 TCP echo                            nat OUTPUT ─────► PROXY_INIT_OUTPUT ───► :4140
//!                                            proxy (uid 2102), app :8080 HTTP "app"
//! ```
//!
//! The rules come from the proxy binary itself (`test-proxy init ...`, run as root in the pod
//! namespace as the `linkerd-init` container would), and the proxy then runs there as uid 2102.
//! The tests show that:
//!
//! * with exactly the injector's arguments, inbound (peer → `10.199.0.1:8080`), outbound (pod →
//!   `10.199.0.2:9090`) and opaque (pod → `10.199.0.2:6379`) connections cross the proxy once, and
//!   the proxy's own connections (uid 2102) are not redirected back into it;
//! * `init` is idempotent (a second run leaves the same `iptables-save`, IPv4 and IPv6), a dry run
//!   changes nothing, and `--cleanup` leaves no trace;
//! * an ignored inbound port, an ignored source subnet and an ignored outbound port reach their
//!   servers without the proxy (the app sees the peer's address, the proxy counts nothing);
//! * over IPv6, inbound and outbound connections are redirected and their original destinations
//!   recovered (`IP6T_SO_ORIGINAL_DST`), and a dual-stack inbound listener (`[::]:4143`) serves
//!   IPv4 connections too.
//!
//! Each is checked both end to end (the reply, and the client address the server saw) and in the
//! proxy's own metrics.
//!
//! Needs root, `ip`, `iptables` (nft or legacy; `ip6tables` for the IPv6 tests), `setpriv` and
//! `python3`, and a kernel that lets it create namespaces and nat rules. Without them a test
//! prints `SKIP` and passes, unless `MESH_REQUIRE_NETNS=1` is set (as CI does), when it fails.
//! Rules that a working iptables rejects always fail.

use crate::PROXY_BIN;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
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
/// A second address of the peer, for the ignored-subnet test.
const PEER_IP_2: &str = "10.199.0.3";
const POD_IP6: &str = "fd00:199::1";
const PEER_IP6: &str = "fd00:199::2";
const APP_PORT: u16 = 8080;
const PEER_HTTP_PORT: u16 = 9090;
/// In the proxy's default opaque-port list, so it is forwarded without detection.
const PEER_ECHO_PORT: u16 = 6379;
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;

/// The iptables flavours, in the order `init` itself tries them.
const FIREWALLS: [&str; 3] = ["iptables-nft", "iptables-legacy", "iptables"];

/// Bound on any single helper command (ip, iptables, a python client).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a server (the proxy included) starting to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes every test's namespaces unique within this process (tests run in parallel).
static NEXT_MESH: AtomicUsize = AtomicUsize::new(0);

/// `http|http6|echo PORT MARKER`: an HTTP server answering `MARKER client=<peer ip>` (on IPv4,
/// or dual-stack for `http6`), or a TCP echo server.
const SERVER_PY: &str = r#"
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
mode, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode in ("http", "http6"):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{marker} client={self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    class DualStack(ThreadingHTTPServer):
        address_family = socket.AF_INET6
        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()
    if mode == "http":
        ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
    else:
        DualStack(("::", port), Handler).serve_forever()
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

/// `HOST PORT PATH [SOURCE_IP]`: one GET; prints the status line's code, then the body.
const GET_PY: &str = r#"
import http.client, sys
src = (sys.argv[4], 0) if len(sys.argv) > 4 else None
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5, source_address=src)
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

/// Exactly what the injector passes to the `linkerd-init` container (with the flavour found
/// here in place of `iptables-nft` when that one does not work).
fn injector_args(fw: &str) -> Vec<String> {
    let args = [
        "--incoming-proxy-port",
        "4143",
        "--outgoing-proxy-port",
        "4140",
        "--proxy-uid",
        PROXY_UID,
        "--inbound-ports-to-ignore",
        "4190,4191,4567,4568",
        "--outbound-ports-to-ignore",
        "4567,4568",
        "--subnets-to-ignore",
        "192.0.2.0/24",
        "--firewall-bin-path",
        fw,
        "--firewall-save-bin-path",
        &format!("{fw}-save"),
        "--ipv6=false",
    ];
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn iptables_redirect_through_the_proxy() {
    let Some(mut mesh) = Mesh::setup("redirect", false).await else {
        return;
    };
    mesh.init(&injector_args(mesh.fw)).await;
    mesh.start_servers(&[
        ("app", Ns::Pod, "http", APP_PORT, "app-in-pod"),
        ("peer-http", Ns::Peer, "http", PEER_HTTP_PORT, "peer"),
        ("peer-echo", Ns::Peer, "echo", PEER_ECHO_PORT, "echo"),
    ])
    .await;
    mesh.start_proxy(&[]).await;

    let before = mesh.metrics().await;
    assert_eq!(
        sum(&before, "request_total", &[r#"direction="inbound""#]),
        0.0,
        "no traffic yet:\n{before}"
    );

    // Inbound: peer -> pod-ip:8080, PREROUTING REDIRECT -> 0.0.0.0:4143 -> 127.0.0.1:8080.
    let out = mesh.get(Ns::Peer, POD_IP, APP_PORT, "/in").await;
    assert_eq!(
        out, "200\napp-in-pod client=127.0.0.1\n",
        "the app must answer, and see the proxy's loopback connection, not the peer's address"
    );

    // Outbound: root in the pod -> peer-ip:9090, OUTPUT REDIRECT -> 127.0.0.1:4140 -> peer.
    let out = mesh.get(Ns::Pod, PEER_IP, PEER_HTTP_PORT, "/out").await;
    assert_eq!(
        out,
        format!("200\npeer client={POD_IP}\n"),
        "the peer must answer a connection from the pod's address"
    );

    // Opaque outbound: root in the pod -> peer-ip:6379 (opaque by default), relayed as TCP.
    let msg = "PING transparent opaque";
    let out = mesh
        .echo(Ns::Pod, PEER_IP, PEER_ECHO_PORT, msg)
        .await
        .expect("opaque outbound connection from the pod");
    assert_eq!(
        out, msg,
        "the peer's echo server must echo through the proxy"
    );

    let inbound = inbound_to(&format!("127.0.0.1:{APP_PORT}"));
    let outbound = outbound_to(&format!("{PEER_IP}:{PEER_HTTP_PORT}"));
    let opaque = [
        r#"direction="outbound""#.to_string(),
        r#"peer="dst""#.to_string(),
        format!(r#"target_addr="{PEER_IP}:{PEER_ECHO_PORT}""#),
    ];
    let metrics = mesh
        .settled_metrics(&[
            ("request_total", &inbound),
            ("request_total", &outbound),
            ("tcp_open_total", &opaque),
        ])
        .await;
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
        assert_untouched(&metrics, port, "the proxy's own port");
    }
    mesh.assert_proxy_running();
    eprintln!(
        "transparent: ok ({}):\n{}",
        mesh.fw,
        interesting(&metrics).trim_end()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn init_is_idempotent_and_cleans_up() {
    let Some(mesh) = Mesh::setup("idempotent", true).await else {
        return;
    };
    // No firewall flags: init finds the flavour itself. IPv6 is on by default.
    let args: Vec<String> = [
        "--inbound-ports-to-ignore",
        "4190,4191,7000-7010",
        "--outbound-ports-to-ignore",
        "25",
        "--subnets-to-ignore",
        "192.0.2.0/24,2001:db8::/32",
        "--proxy-gid",
        PROXY_UID,
    ]
    .map(String::from)
    .to_vec();
    mesh.init(&args).await;
    let first = mesh.nat_tables().await;
    let (v4, v6) = (&first.0, &first.1);
    eprintln!("transparent: {} after init:\n{v4}{v6}", mesh.pod);
    for (table, family) in [(v4, "IPv4"), (v6, "IPv6")] {
        for expected in [
            ":PROXY_INIT_REDIRECT",
            ":PROXY_INIT_OUTPUT",
            "-A PREROUTING -m comment --comment \"proxy-init/install-proxy-init-prerouting\" -j PROXY_INIT_REDIRECT",
            "-A OUTPUT -m comment --comment \"proxy-init/install-proxy-init-output\" -j PROXY_INIT_OUTPUT",
            "--dports 4190,4191,7000:7010",
            "-j REDIRECT --to-ports 4143",
            "--uid-owner 2102",
            "--gid-owner 2102",
            "-o lo",
            "--dports 25 ",
            "-j REDIRECT --to-ports 4140",
        ] {
            assert!(
                table.contains(expected),
                "{family} nat table lacks {expected:?}:\n{table}"
            );
        }
    }
    assert!(
        v4.contains("-s 192.0.2.0/24") && !v4.contains("2001:db8"),
        "{v4}"
    );
    assert!(
        v6.contains("-s 2001:db8::/32") && !v6.contains("192.0.2"),
        "{v6}"
    );

    mesh.init(&args).await;
    assert_eq!(
        mesh.nat_tables().await,
        first,
        "a second run must leave the same tables"
    );

    let dry = mesh
        .init(&[&["--dry-run".to_string()][..], &args].concat())
        .await;
    assert!(
        dry.contains("-t nat -F PROXY_INIT_REDIRECT")
            && !dry.contains(" -N ")
            && !dry.contains("-A PREROUTING")
            && !dry.contains("-A OUTPUT "),
        "a dry run over installed rules flushes and adds no jumps:\n{dry}"
    );
    assert_eq!(mesh.nat_tables().await, first, "a dry run changes nothing");

    for run in ["first", "second"] {
        mesh.init(&["--cleanup".to_string()]).await;
        let (v4, v6) = mesh.nat_tables().await;
        for table in [v4, v6] {
            assert!(
                !table.contains("PROXY_INIT") && !table.contains("proxy-init"),
                "after the {run} cleanup no trace may remain:\n{table}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ignored_ports_and_subnets_bypass_the_proxy() {
    let Some(mut mesh) = Mesh::setup("ignored", false).await else {
        return;
    };
    const APP_DIRECT_PORT: u16 = 8081;
    const PEER_DIRECT_PORT: u16 = 9091;
    let fw = mesh.fw;
    let args: Vec<String> = [
        "--inbound-ports-to-ignore",
        &format!("4190,4191,{APP_DIRECT_PORT}"),
        "--outbound-ports-to-ignore",
        &PEER_DIRECT_PORT.to_string(),
        "--subnets-to-ignore",
        &format!("{PEER_IP_2}/32"),
        "--firewall-bin-path",
        fw,
        "--ipv6=false",
    ]
    .map(String::from)
    .to_vec();
    mesh.init(&args).await;
    mesh.start_servers(&[
        ("app", Ns::Pod, "http", APP_PORT, "app"),
        ("app-direct", Ns::Pod, "http", APP_DIRECT_PORT, "app-direct"),
        ("peer-http", Ns::Peer, "http", PEER_HTTP_PORT, "peer"),
        (
            "peer-direct",
            Ns::Peer,
            "http",
            PEER_DIRECT_PORT,
            "peer-direct",
        ),
    ])
    .await;
    mesh.start_proxy(&[]).await;

    // Control: the app's ordinary port is redirected.
    let out = mesh.get(Ns::Peer, POD_IP, APP_PORT, "/in").await;
    assert_eq!(out, "200\napp client=127.0.0.1\n", "not ignored: proxied");
    // The ignored inbound port: the app sees the peer itself.
    let out = mesh.get(Ns::Peer, POD_IP, APP_DIRECT_PORT, "/in").await;
    assert_eq!(
        out,
        format!("200\napp-direct client={PEER_IP}\n"),
        "an ignored inbound port must reach the app directly"
    );
    // The ignored subnet: the same port as the control, from the peer's other address.
    let out = mesh
        .get_from(Ns::Peer, POD_IP, APP_PORT, "/in", PEER_IP_2)
        .await;
    assert_eq!(
        out,
        format!("200\napp client={PEER_IP_2}\n"),
        "a connection from an ignored subnet must reach the app directly"
    );
    // Outbound: the control, then the ignored port (the peer sees the pod either way; the
    // proxy's metrics tell them apart).
    let out = mesh.get(Ns::Pod, PEER_IP, PEER_HTTP_PORT, "/out").await;
    assert_eq!(out, format!("200\npeer client={POD_IP}\n"));
    let out = mesh.get(Ns::Pod, PEER_IP, PEER_DIRECT_PORT, "/out").await;
    assert_eq!(out, format!("200\npeer-direct client={POD_IP}\n"));

    let inbound = inbound_to(&format!("127.0.0.1:{APP_PORT}"));
    let outbound = outbound_to(&format!("{PEER_IP}:{PEER_HTTP_PORT}"));
    let metrics = mesh
        .settled_metrics(&[("request_total", &inbound), ("request_total", &outbound)])
        .await;
    assert_eq!(
        sum(&metrics, "request_total", &inbound),
        1.0,
        "only the control request may cross the inbound proxy, not the one from {PEER_IP_2}:\n{}",
        interesting(&metrics)
    );
    assert_eq!(
        sum(&metrics, "request_total", &outbound),
        1.0,
        "{}",
        interesting(&metrics)
    );
    assert_untouched(&metrics, APP_DIRECT_PORT, "the ignored inbound port");
    assert_untouched(&metrics, PEER_DIRECT_PORT, "the ignored outbound port");
    mesh.assert_proxy_running();
}

#[tokio::test(flavor = "current_thread")]
async fn ipv6_redirect_through_the_proxy() {
    let Some(mut mesh) = Mesh::setup("ipv6", true).await else {
        return;
    };
    let fw = mesh.fw;
    let args: Vec<String> = [
        "--inbound-ports-to-ignore",
        "4190,4191",
        "--firewall-bin-path",
        fw,
        "--ipv6=true",
    ]
    .map(String::from)
    .to_vec();
    mesh.init(&args).await;
    mesh.start_servers(&[
        ("app", Ns::Pod, "http6", APP_PORT, "app"),
        ("peer-http", Ns::Peer, "http6", PEER_HTTP_PORT, "peer"),
    ])
    .await;
    // A dual-stack inbound listener, and the outbound listener on IPv6 loopback, where
    // ip6tables' REDIRECT sends the pod's outgoing IPv6 connections.
    mesh.start_proxy(&[
        (
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR",
            format!("[::]:{INBOUND_PORT}"),
        ),
        (
            "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR",
            format!("[::1]:{OUTBOUND_PORT}"),
        ),
    ])
    .await;

    // Inbound over IPv6: delivered to the app from [::1].
    let out = mesh.get(Ns::Peer, POD_IP6, APP_PORT, "/in6").await;
    assert_eq!(
        out, "200\napp client=::1\n",
        "an IPv6 connection must be redirected to the proxy, which delivers it over ::1"
    );
    // Inbound over IPv4 on the same dual-stack listener: a v4-mapped socket whose original
    // destination is asked with the IPv4 option.
    let out = mesh.get(Ns::Peer, POD_IP, APP_PORT, "/in4").await;
    assert_eq!(
        out, "200\napp client=::ffff:127.0.0.1\n",
        "an IPv4 connection on the dual-stack listener must be delivered over 127.0.0.1"
    );
    // Outbound over IPv6.
    let out = mesh.get(Ns::Pod, PEER_IP6, PEER_HTTP_PORT, "/out6").await;
    assert_eq!(
        out,
        format!("200\npeer client={POD_IP6}\n"),
        "the peer must answer a connection from the pod's IPv6 address"
    );

    let in6 = inbound_to(&format!("[::1]:{APP_PORT}"));
    let in4 = inbound_to(&format!("127.0.0.1:{APP_PORT}"));
    let out6 = outbound_to(&format!("[{PEER_IP6}]:{PEER_HTTP_PORT}"));
    let metrics = mesh
        .settled_metrics(&[
            ("request_total", &in6),
            ("request_total", &in4),
            ("request_total", &out6),
        ])
        .await;
    for (labels, what) in [
        (&in6, "inbound IPv6"),
        (&in4, "inbound IPv4"),
        (&out6, "outbound IPv6"),
    ] {
        assert_eq!(
            sum(&metrics, "request_total", labels),
            1.0,
            "the {what} request must cross the proxy once:\n{}",
            interesting(&metrics)
        );
    }
    for port in [INBOUND_PORT, OUTBOUND_PORT] {
        assert_untouched(&metrics, port, "the proxy's own port");
    }
    mesh.assert_proxy_running();
}

fn inbound_to(target: &str) -> [String; 2] {
    [
        r#"direction="inbound""#.to_string(),
        format!(r#"target_addr="{target}""#),
    ]
}

fn outbound_to(target: &str) -> [String; 2] {
    [
        r#"direction="outbound""#.to_string(),
        format!(r#"target_addr="{target}""#),
    ]
}

/// No request or connection of the proxy's targets `port`.
fn assert_untouched(metrics: &str, port: u16, what: &str) {
    let port = format!(":{port}\"");
    for family in ["request_total", "tcp_open_total"] {
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with(family) && l.contains(&port)),
            "no {family} may target {what}{port}; metrics:\n{}",
            interesting(metrics)
        );
    }
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
    Ok(())
}

// === the namespaces ===

#[derive(Clone, Copy, Debug)]
enum Ns {
    Pod,
    Peer,
}

/// Everything a test created; dropping it kills the processes and deletes the namespaces,
/// panicking or not.
struct Mesh {
    pod: String,
    peer: String,
    /// The iptables flavour that works here (`iptables-nft`, ...).
    fw: &'static str,
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    proxy: Option<usize>,
}

impl Mesh {
    /// Two fresh namespaces and a working iptables flavour, or `None` after reporting why the
    /// test is skipped (panicking instead under `MESH_REQUIRE_NETNS=1`).
    async fn setup(test: &str, ipv6: bool) -> Option<Self> {
        let created = async {
            preconditions().await?;
            let mut mesh = Mesh::create(test, ipv6).await?;
            mesh.fw = mesh.firewall(ipv6).await?;
            Ok::<_, String>(mesh)
        };
        match created.await {
            Ok(m) => Some(m),
            Err(reason) => {
                skip_or_fail(&format!("{test}: {reason}"));
                None
            }
        }
    }

    async fn create(test: &str, ipv6: bool) -> Result<Self, String> {
        remove_stale_namespaces().await;
        let pid = std::process::id();
        let n = NEXT_MESH.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-transparent-{pid}-{n}-{test}"));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // uid 2102 may need to execute a copy of the proxy from here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mesh = Mesh {
            pod: format!("mesh-pod-{pid}-{n}"),
            peer: format!("mesh-peer-{pid}-{n}"),
            fw: "",
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
        let mut setup = vec![
            format!("-n {pod} link add eth0 type veth peer name eth0 netns {peer}"),
            format!("-n {pod} addr add {POD_IP}/24 dev eth0"),
            format!("-n {peer} addr add {PEER_IP}/24 dev eth0"),
            format!("-n {peer} addr add {PEER_IP_2}/24 dev eth0"),
        ];
        if ipv6 {
            // No duplicate address detection: the addresses are usable at once.
            setup.push(format!("-n {pod} addr add {POD_IP6}/64 dev eth0 nodad"));
            setup.push(format!("-n {peer} addr add {PEER_IP6}/64 dev eth0 nodad"));
        }
        setup.extend([
            format!("-n {pod} link set lo up"),
            format!("-n {peer} link set lo up"),
            format!("-n {pod} link set eth0 up"),
            format!("-n {peer} link set eth0 up"),
        ]);
        for args in &setup {
            let mut cmd = vec!["ip"];
            cmd.extend(args.split_whitespace());
            run(&cmd)
                .await
                .map_err(|e| format!("network setup failed: {e}"))?;
        }
        Ok(mesh)
    }

    fn ns(&self, ns: Ns) -> &str {
        match ns {
            Ns::Pod => &self.pod,
            Ns::Peer => &self.peer,
        }
    }

    /// The first iptables flavour (in `init`'s order) that can list the pod's nat table, for
    /// IPv6 too when asked.
    async fn firewall(&self, ipv6: bool) -> Result<&'static str, String> {
        let mut errors = Vec::new();
        for fw in FIREWALLS {
            let mut saves = vec![format!("{fw}-save")];
            if ipv6 {
                saves.push(format!("ip6{}-save", &fw[2..]));
            }
            let mut ok = true;
            for save in &saves {
                if let Err(e) = self.in_ns(Ns::Pod, &[save, "-t", "nat"]).await {
                    errors.push(e);
                    ok = false;
                }
            }
            if ok {
                return Ok(fw);
            }
        }
        Err(format!(
            "no usable iptables nat table in {}: {}",
            self.pod,
            errors.join("; ")
        ))
    }

    /// Runs `test-proxy init ARGS` as root in the pod, as the `linkerd-init` container does; its
    /// output. A failure fails the test: the nat table was shown to work.
    async fn init(&self, args: &[String]) -> String {
        let mut cmd = vec![PROXY_BIN, "init"];
        cmd.extend(args.iter().map(String::as_str));
        match self.in_ns(Ns::Pod, &cmd).await {
            Ok(out) => out,
            Err(e) => panic!("linkerd-proxy init failed in {}: {e}", self.pod),
        }
    }

    /// `iptables-save -t nat` and `ip6tables-save -t nat` in the pod (empty when there is no
    /// IPv6 flavour), without comments and with zeroed counters.
    async fn nat_tables(&self) -> (String, String) {
        let v6 = format!("ip6{}-save", &self.fw[2..]);
        let mut tables = Vec::new();
        for save in [format!("{}-save", self.fw), v6] {
            let out = self
                .in_ns(Ns::Pod, &[&save, "-t", "nat"])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let normal: String = out
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.rsplit_once(" [") {
                    Some((head, _)) if l.starts_with(':') => format!("{head} [0:0]\n"),
                    _ => format!("{l}\n"),
                })
                .collect();
            tables.push(normal);
        }
        let v6 = tables.pop().unwrap_or_default();
        let v4 = tables.pop().unwrap_or_default();
        (v4, v6)
    }

    /// Starts `(name, namespace, mode, port, marker)` servers (see `SERVER_PY`) and waits until
    /// each accepts.
    async fn start_servers(&mut self, servers: &[(&'static str, Ns, &str, u16, &str)]) {
        for &(name, ns, mode, port, marker) in servers {
            let mut cmd = Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                self.ns(ns),
                "python3",
                "-c",
                SERVER_PY,
                mode,
            ])
            .arg(port.to_string())
            .arg(marker);
            self.spawn(name, cmd);
        }
        for &(name, ns, _, port, _) in servers {
            // Probed over each namespace's loopback: never redirected, never seen by the proxy.
            self.wait_accepting(name, ns, port).await;
        }
    }

    /// Runs the proxy binary in the pod as uid 2102, with linkerd2-proxy's default listeners
    /// unless `env` says otherwise.
    async fn start_proxy(&mut self, env: &[(&str, String)]) {
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
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.proxy = Some(self.children.len());
        self.spawn("proxy", cmd);
        self.wait_accepting("proxy", Ns::Pod, ADMIN_PORT).await;
        self.assert_proxy_running();
    }

    /// The test binary, or a world-executable copy of it when uid 2102 cannot run it in place.
    async fn proxy_binary(&self) -> PathBuf {
        let bin = PathBuf::from(PROXY_BIN);
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

    async fn wait_accepting(&self, name: &str, ns: Ns, port: u16) {
        let (port_s, secs) = (port.to_string(), READY_TIMEOUT.as_secs().to_string());
        let args = ["python3", "-c", WAIT_PY, "127.0.0.1", &port_s, &secs];
        if let Err(e) = self.in_ns(ns, &args).await {
            panic!("{name} did not accept on 127.0.0.1:{port} in {ns:?}: {e}");
        }
    }

    fn assert_proxy_running(&mut self) {
        let i = self.proxy.expect("the proxy was started");
        if let Ok(Some(status)) = self.children[i].1.try_wait() {
            panic!("the proxy exited: {status}");
        }
    }

    /// One HTTP/1.1 GET from inside `ns`; the status code and body.
    async fn get(&self, ns: Ns, host: &str, port: u16, path: &str) -> String {
        let port = port.to_string();
        self.in_ns(ns, &["python3", "-c", GET_PY, host, &port, path])
            .await
            .unwrap_or_else(|e| panic!("GET {host}:{port}{path} from {ns:?}: {e}"))
    }

    /// [`Self::get`] from a given source address.
    async fn get_from(&self, ns: Ns, host: &str, port: u16, path: &str, src: &str) -> String {
        let port = port.to_string();
        self.in_ns(ns, &["python3", "-c", GET_PY, host, &port, path, src])
            .await
            .unwrap_or_else(|e| panic!("GET {host}:{port}{path} from {src} in {ns:?}: {e}"))
    }

    /// Sends `msg` over one raw TCP connection from inside `ns`; what came back.
    async fn echo(&self, ns: Ns, host: &str, port: u16, msg: &str) -> Result<String, String> {
        let port = port.to_string();
        self.in_ns(ns, &["python3", "-c", ECHO_PY, host, &port, msg])
            .await
    }

    async fn in_ns(&self, ns: Ns, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec!["ip", "netns", "exec", self.ns(ns)];
        cmd.extend_from_slice(args);
        run(&cmd).await
    }

    /// The proxy's Prometheus text, fetched over the pod's loopback (exempt from redirection).
    async fn metrics(&self) -> String {
        let out = self.get(Ns::Pod, "127.0.0.1", ADMIN_PORT, "/metrics").await;
        match out.split_once('\n') {
            Some(("200", body)) => body.to_string(),
            _ => panic!("/metrics did not answer 200: {out}"),
        }
    }

    /// The metrics once every `(family, labels)` has counted at least one, or after 5 s:
    /// counters settle when connections close.
    async fn settled_metrics(&self, expected: &[(&str, &[String])]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            let done = expected
                .iter()
                .all(|(family, labels)| sum(&m, family, labels) >= 1.0);
            if done || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
        let rest = name
            .strip_prefix("mesh-pod-")
            .or_else(|| name.strip_prefix("mesh-peer-"));
        // `<pid>-<n>` (or `<pid>` from older runs).
        let pid = rest.map(|r| r.split('-').next().unwrap_or(r));
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
fn sum(metrics: &str, name: &str, labels: &[impl AsRef<str>]) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_ref())))
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
