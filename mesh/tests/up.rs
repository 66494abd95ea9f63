//! Runs local meshes exactly as a user would (`mesh up`, the built-in demo or a user's file)
//! and checks what the sidecars produced and what `mesh check|stat|edges|top|list|down` say
//! about them. Each test gives its meshes a runtime directory of its own (`MESH_RUNTIME_DIR`),
//! so `mesh stat` and friends find them by name; all processes and sockets are real.

// Test code: `allow-unwrap-in-tests` covers `#[test]` functions but not the helpers beside
// them; these tests drive child processes from plain threads (no runtime), so sleeping is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use support::*;

/// `mesh up <args> --proxy-bin builtin -f <file>`.
fn up(rt: &Runtime, args: &[&str], file: &Path) -> Command {
    let mut c = rt.mesh();
    c.arg("up")
        .args(args)
        .args(["--proxy-bin", "builtin", "-f"])
        .arg(file);
    c
}

/// [`up`] with `--seconds <seconds> --json`, started with its output piped.
fn spawn_up(rt: &Runtime, seconds: &str, file: &Path) -> Child {
    up(rt, &["--seconds", seconds, "--json"], file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh up")
}

/// `mesh down <args>`, which must succeed; then the summary `mesh up` printed as it ended.
fn down(rt: &Runtime, args: &[&str], up: Child) -> serde_json::Value {
    let down = rt.mesh().arg("down").args(args).output().unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    json(&up.wait_with_output().unwrap())
}

/// Runs `cmd`, which must fail; its standard error.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `workload` of mesh `mesh` is `ready` (or not); panics with `what` after `within`.
fn wait_until_ready(
    rt: &Runtime,
    (mesh, workload): (&str, &str),
    ready: bool,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    while !rt
        .workload_state(mesh, workload)
        .is_some_and(|w| w["ready"] == ready)
    {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mesh file for namespace `shop`: `workloads` (entries made by [`demo_app`] and the like),
/// then `rest` (more sections).
fn shop(workloads: &[String], rest: &str) -> String {
    format!("namespace: shop\nworkloads:\n{}{rest}", workloads.concat())
}

/// A workload entry running the demo app `name` on `port`; `ingress`: called from outside
/// the mesh; `calls`: the path of the `api` service it calls (through its sidecar) for every
/// request it serves.
fn demo_app(name: &str, port: u16, ingress: bool, calls: Option<&str>) -> String {
    let ingress = if ingress { "    ingress: true\n" } else { "" };
    let call = calls.map_or(String::new(), |path| {
        format!(r#" --via "$MESH_PROXY" --call "http://$MESH_SVC_API{path}""#)
    });
    format!(
        "  - name: {name}\n    port: {port}\n{ingress}    command: '\"$MESH\" demo-app --name {name} --listen \"$MESH_IP:$PORT\"{call}'\n"
    )
}

/// The `load` section: `rps` requests a second to `web`.
fn load(rps: u32) -> String {
    format!("load:\n  service: web\n  rps: {rps}\n")
}

#[test]
fn mesh_up_demo_serves_traffic_through_every_sidecar() {
    let rt = Runtime::new("demo");
    let child = rt
        .mesh()
        // Addresses of its own, chosen by mesh up: a demo someone is running does not collide.
        .args(["up", "--seconds", "8", "--json", "--rps", "50"])
        .args(["--proxy-bin", "builtin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh up");

    // While it runs: the other commands find it, the only mesh of this runtime directory.
    let state = rt.wait_for_state("demo", Duration::from_secs(60));
    assert!(
        state["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["ready"] == true)
    );
    let check = rt.mesh().args(["check", "--json"]).output().unwrap();
    let report = json(&check);
    assert!(check.status.success(), "{report}");
    assert_eq!(report["control_plane_checked"], true);
    let checks = report["checks"].as_array().unwrap();
    // Three control-plane services, the issuer, the anchor, and three checks per sidecar.
    assert_eq!(checks.len(), 5 + 3 * 5, "{report}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{report}");

    let stat = rt
        .mesh()
        .args(["stat", "--json", "--window", "1", "--mesh", "demo"])
        .output()
        .unwrap();
    let report = json(&stat);
    assert!(stat.status.success(), "{report}");
    assert_eq!(report["mesh"], "demo");
    let front = workload(&report, "frontend");
    let authorities: Vec<&str> = front["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["authority"].as_str().unwrap())
        .collect();
    for want in [
        "backend.demo.svc.cluster.local:8080",
        "quotes.demo.svc.cluster.local:9090",
    ] {
        assert!(authorities.contains(&want), "{want}: {report}");
    }
    // Counts are integers; the caller's and the callees' views of one hop agree.
    assert!(front["inbound"]["requests"].is_u64(), "{report}");
    assert_eq!(front["state"], "ready");

    // `mesh stat | head -0`: the reader is gone before the table is written (after the
    // 1 s window). That ends the command quietly and successfully, not in a panic.
    let mut piped = rt
        .mesh()
        .args(["stat", "--window", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let piped = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{:?}: {stderr}", piped.status);
    assert!(stderr.is_empty(), "{stderr}");

    let edges = rt.mesh().args(["edges", "--json"]).output().unwrap();
    let edges = json(&edges);
    let quotes = edges
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["dst"] == "quotes.demo.svc.cluster.local:9090")
        .unwrap_or_else(|| panic!("no edge to quotes: {edges}"));
    assert_eq!(quotes["src"], "frontend");
    assert_eq!(quotes["mtls"], true);
    assert!(quotes["requests"].is_u64(), "{edges}");
    assert_eq!(
        quotes["client_id"],
        "frontend.demo.serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(
        quotes["server_id"],
        "quotes.demo.serviceaccount.identity.linkerd.cluster.local"
    );

    // Live requests by path, from every sidecar's tap stream.
    let top = rt
        .mesh()
        .args(["top", "--json", "--seconds", "2"])
        .output()
        .unwrap();
    let top_json = json(&top);
    assert!(top.status.success(), "{top_json}");
    let grpc = top_json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == "quotes" && r["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no inbound quotes row: {top_json}"));
    assert_eq!(grpc["method"], "POST");
    assert_eq!(grpc["path"], "/demo.Quotes/Get");
    let count = grpc["count"].as_u64().unwrap();
    assert!(count >= 20, "2 s at 50 rps: {top_json}");
    assert_eq!(grpc["successes"].as_u64(), Some(count), "{top_json}");
    assert_eq!(grpc["tls"].as_u64(), Some(count), "{top_json}");

    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    assert!(out.status.success(), "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["mesh"], "demo", "{summary}");
    assert_eq!(summary["problems"], serde_json::json!([]), "{summary}");
    assert!(
        summary["load"]["sent"].as_u64().unwrap() >= 100,
        "{summary}"
    );
    assert_eq!(summary["load"]["failed"], 0, "{summary}");
    assert!(
        !rt.state_file("demo").exists(),
        "the state file outlived mesh up"
    );
    assert!(
        !rt.dir.join("demo").exists(),
        "the mesh's directory outlived mesh up"
    );
    for name in ["frontend", "ratings", "quotes"] {
        let w = workload(&summary, name);
        assert_eq!(w["inbound"]["success_rate"], 1.0, "{name}: {summary}");
        assert!(
            w["inbound"]["requests"].as_u64().unwrap() > 0,
            "{name}: {summary}"
        );
    }
    for name in ["frontend", "backend-v1", "backend-v2", "ratings", "quotes"] {
        let w = workload(&summary, name);
        assert_eq!(w["state"], "ready", "{name}: {summary}");
        assert!(
            w["sidecar"]["rss_bytes"].as_u64().unwrap() > 0,
            "{name}: {summary}"
        );
        assert!(w["tcp"]["inbound"]["open"].is_u64(), "{name}: {summary}");
    }
    // Sidecar-to-sidecar traffic is all mTLS, over HTTP/1.1 (frontend -> backend), gRPC
    // (frontend -> quotes) and HTTP/2 (backend -> ratings); the front door is called from
    // outside the mesh.
    for name in ["ratings", "quotes"] {
        assert_eq!(
            workload(&summary, name)["inbound"]["mtls_rate"],
            1.0,
            "{summary}"
        );
    }
    let front = workload(&summary, "frontend");
    assert_eq!(front["inbound"]["mtls_rate"], 0.0, "{summary}");
    let front_routes = front["outbound"].as_array().unwrap();
    assert_eq!(front_routes.len(), 2, "{summary}");
    for r in front_routes {
        assert_eq!(r["success_rate"], 1.0, "{summary}");
        assert_eq!(r["mtls_rate"], 1.0, "{summary}");
    }
    assert!(
        summary["control_plane"]["rss_bytes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // Every frontend request calls one backend and the quotes service once each, and every
    // backend request calls ratings: the inbound sidecars downstream see what the frontend saw.
    let requests = |name: &str| {
        workload(&summary, name)["inbound"]["requests"]
            .as_i64()
            .unwrap()
    };
    let front = requests("frontend");
    let backends = requests("backend-v1") + requests("backend-v2");
    assert!(backends > 0, "{summary}");
    assert!((backends - front).abs() <= 2, "{summary}");
    assert!((requests("quotes") - front).abs() <= 2, "{summary}");
    assert!((requests("ratings") - backends).abs() <= 2, "{summary}");
    // The demo's HTTPRoute splits the backend 90/10: the frontend's sidecar applies it.
    let v2 = requests("backend-v2");
    assert!(
        v2 > 0 && v2 * 10 < 3 * backends,
        "backend-v2 got {v2} of {backends}: {summary}"
    );
}

/// Two meshes started together each find free addresses, names and state of their own, carry
/// traffic side by side, and stopping one leaves the other untouched.
#[test]
fn two_meshes_run_side_by_side_and_one_stops_alone() {
    let rt = Runtime::new("two");
    let start = || {
        rt.mesh()
            .args([
                "up",
                "--seconds",
                "60",
                "--json",
                "--rps",
                "30",
                "--proxy-bin",
                "builtin",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mesh up")
    };
    let (first, second) = (start(), start());
    let sa = rt.wait_for_state("demo", Duration::from_secs(90));
    let sb = rt.wait_for_state("demo-2", Duration::from_secs(90));
    assert_ne!(sa["identity_admin"], sb["identity_admin"]);
    // Which one got which name is a race: tell them by pid.
    let (a, b) = if sa["pid"] == first.id() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(sa["pid"], a.id());
    assert_eq!(sb["pid"], b.id());
    let list = json(&rt.mesh().args(["list", "--json"]).output().unwrap());
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo", "demo-2"], "{list}");
    // Without --mesh, the viewing commands refuse to guess.
    let stderr = fails(rt.mesh().args(["stat", "--window", "0.1"]));
    assert!(stderr.contains("choose one with --mesh"));
    for name in ["demo", "demo-2"] {
        let stat = json(
            &rt.mesh()
                .args(["stat", "--json", "--window", "1", "--mesh", name])
                .output()
                .unwrap(),
        );
        let front = workload(&stat, "frontend");
        assert!(
            front["inbound"]["requests"].as_u64().unwrap() > 0,
            "{name}: {stat}"
        );
        assert_eq!(front["inbound"]["success_rate"], 1.0, "{name}: {stat}");
    }
    // Stop the first one; the second keeps serving, all requests succeeding.
    let summary_a = down(&rt, &["demo"], a);
    assert_eq!(summary_a["mesh"], "demo");
    assert_eq!(summary_a["ok"], true, "{summary_a}");
    let after = json(
        &rt.mesh()
            .args(["stat", "--json", "--window", "2", "--mesh", "demo-2"])
            .output()
            .unwrap(),
    );
    for w in after["workloads"].as_array().unwrap() {
        assert_eq!(w["state"], "ready", "{after}");
    }
    let front = workload(&after, "frontend");
    assert!(
        front["inbound"]["requests"].as_u64().unwrap() > 0,
        "{after}"
    );
    assert_eq!(front["inbound"]["success_rate"], 1.0, "{after}");
    let summary_b = down(&rt, &[], b);
    assert_eq!(summary_b["mesh"], "demo-2");
    assert_eq!(summary_b["ok"], true, "{summary_b}");
    assert_eq!(summary_b["load"]["failed"], 0, "{summary_b}");
    let list = json(&rt.mesh().args(["list", "--json"]).output().unwrap());
    assert_eq!(list, serde_json::json!([]));
}

/// However `mesh up` ends, nothing it started outlives it: `kill -9` (the kernel signals
/// every child) and SIGHUP (a closed terminal: it drains as Ctrl-C does).
#[test]
fn nothing_outlives_mesh_up_killed_or_hung_up() {
    let rt = Runtime::new("kill");
    // An app that starts a grandchild of its own, which only its supervisor can reach.
    let file = rt.write(
        "tree.yaml",
        r#"namespace: tree
workloads:
  - name: web
    port: 8000
    ingress: true
    command: 'sleep 300 & exec "$MESH" demo-app --name web --listen "$MESH_IP:$PORT"'
"#,
    );
    for signal in ["KILL", "HUP"] {
        let mut child = up(&rt, &["--json"], &file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rt.wait_for_state("tree", Duration::from_secs(60));
        let pid = child.id();
        let started = descendants(pid);
        // Control plane, sidecar, supervisor, the app (sh, which execs demo-app) and its
        // sleep.
        assert!(started.len() >= 5, "{signal}: {started:?}");
        kill(pid, signal);
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(10);
        while started.iter().any(|p| alive(*p)) {
            assert!(
                Instant::now() < deadline,
                "{signal}: still alive 10 s later: {:?}",
                started.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{signal}: all {} processes gone {:?} after the signal",
            started.len(),
            killed.elapsed()
        );
        let _ = child.wait();
        // The stale state file of the killed one is gone once anyone looks.
        let list = json(&rt.mesh().args(["list", "--json"]).output().unwrap());
        assert_eq!(list, serde_json::json!([]), "{signal}");
        assert!(!rt.state_file("tree").exists(), "{signal}");
    }
}

/// One replica's app killed: it leaves discovery (no failed request once it is out) and comes
/// back when restarted; one replica failing its HTTP health check: the same, without a
/// restart.
#[test]
fn a_dead_or_unhealthy_replica_leaves_discovery_and_comes_back() {
    let rt = Runtime::new("replicas");
    let replica = |name: &str| {
        format!(
            r#"  - name: {name}
    service: api
    port: 8001
    restart: always
    health: /ok
    command: 'touch ok {name}; echo $$ > pid; exec python3 -m http.server "$PORT" --bind "$MESH_IP"'
"#
        )
    };
    let file = rt.write(
        "replicas.yaml",
        &shop(
            &[
                demo_app("web", 8000, true, Some("/")),
                replica("api-a"),
                replica("api-b"),
            ],
            "",
        ),
    );
    let child = spawn_up(&rt, "120", &file);
    let state = rt.wait_for_state("replicas", Duration::from_secs(60));
    let dir = std::path::PathBuf::from(state["dir"].as_str().unwrap());
    let front = format!("{}:4143", rt.ip("replicas", "web"));
    // Which replica answered: each serves a listing of its working directory, which holds a
    // file named after it.
    let answer = || {
        let (status, body) = http_get(&front, "web.shop.svc.cluster.local:8000", "/");
        let who = ["api-a", "api-b"].into_iter().find(|n| body.contains(n));
        (status, who, body)
    };
    // Both replicas get traffic: requests from several threads at once (the balancer prefers
    // the faster replica; requests in flight make it share), until each has answered.
    let both_answer = |what: &str| {
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
                        let (status, who, body) = answer();
                        assert_eq!(status, 200, "{what}: {body}");
                        seen.lock().unwrap().extend(who);
                    }
                });
            }
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 2, "{what}: only {seen:?} answered within 20 s");
    };
    both_answer("at first");

    // Killed: out of discovery at once (its process exited), restarted after 1 s.
    let pid: u32 = std::fs::read_to_string(dir.join("work/api-a/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killed = Instant::now();
    kill(pid, "KILL");
    let mut failures = Vec::new();
    let mut last_failure = None;
    // Requests all along: the failures stop within the bar (measured, not asserted).
    while !rt
        .workload_state("replicas", "api-a")
        .is_some_and(|w| w["ready"] == false)
    {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "api-a never left discovery"
        );
        let (status, _, body) = answer();
        if status != 200 {
            last_failure = Some(killed.elapsed());
            failures.push(body);
        }
    }
    // Discovery polls its registry every 500 ms: once that has passed, no request fails.
    let out_at = Instant::now();
    while out_at.elapsed() < Duration::from_secs(1) {
        let (status, _, body) = answer();
        if status != 200 {
            last_failure = Some(killed.elapsed());
            failures.push(body);
        }
    }
    println!(
        "api-a killed: {} failed requests, the last {:?} after the kill",
        failures.len(),
        last_failure
    );
    for _ in 0..40 {
        let (status, _, body) = answer();
        assert_eq!(status, 200, "after api-a left discovery: {body}");
    }
    wait_until_ready(
        &rt,
        ("replicas", "api-a"),
        true,
        Duration::from_secs(30),
        "api-a never came back",
    );
    both_answer("after api-a's restart");

    // Unhealthy: its health check fails (no `ok` file to serve), out of discovery; healthy
    // again, back.
    std::fs::remove_file(dir.join("work/api-b/ok")).unwrap();
    wait_until_ready(
        &rt,
        ("replicas", "api-b"),
        false,
        Duration::from_secs(10),
        "api-b never left discovery",
    );
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..40 {
        let (status, who, body) = answer();
        assert_eq!(status, 200, "while api-b is unhealthy: {body}");
        assert_eq!(
            who,
            Some("api-a"),
            "api-b answered while out of discovery: {body}"
        );
    }
    std::fs::write(dir.join("work/api-b/ok"), "").unwrap();
    wait_until_ready(
        &rt,
        ("replicas", "api-b"),
        true,
        Duration::from_secs(10),
        "api-b never came back",
    );
    both_answer("once api-b is healthy again");

    // `mesh check` names a workload out of discovery; here all are back.
    let check = json(&rt.mesh().args(["check", "--json"]).output().unwrap());
    assert_eq!(check["ok"], true, "{check}");
    let summary = down(&rt, &[], child);
    assert_eq!(workload(&summary, "api-a")["restarts"], 1, "{summary}");
    assert_eq!(workload(&summary, "api-b")["restarts"], 0, "{summary}");
}

/// The `Try:` line is printed only once the request it shows succeeds.
#[test]
fn the_try_line_works_when_it_is_printed() {
    let rt = Runtime::new("try");
    let mut child = rt
        .mesh()
        .args(["up", "--seconds", "30", "--proxy-bin", "builtin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let try_line = loop {
        let line = lines
            .next()
            .expect("mesh up ended without a Try: line")
            .unwrap();
        if let Some(rest) = line.strip_prefix("Try: ") {
            break rest.to_string();
        }
    };
    // `curl -H 'Host: <authority>' http://<addr><path>`, sent at once.
    let host = try_line
        .split('\'')
        .nth(1)
        .unwrap()
        .trim_start_matches("Host: ");
    let url = try_line.rsplit(' ').next().unwrap();
    let (addr, path) = url
        .strip_prefix("http://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let (status, body) = http_get(addr, host, &format!("/{path}"));
    assert_eq!(status, 200, "{try_line}: {body}");
    assert!(body.contains("frontend served /"), "{body}");
    let _ = rt.mesh().args(["down"]).output();
    // Drain the rest so mesh up never blocks on a full pipe.
    for _ in lines {}
    let _ = child.wait();
}

/// A TCP service (Redis, from Debian's package) behind its sidecar, used by an HTTP app
/// through a local port of its own sidecar: every connection is mTLS between the sidecars.
#[test]
fn a_tcp_service_is_reached_over_mtls_through_a_local_port() {
    if !tool("redis-server") {
        return;
    }
    let rt = Runtime::new("redis");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/redis.yaml");
    let child = spawn_up(&rt, "6", &example);
    rt.wait_for_state("redis", Duration::from_secs(60));
    let (web, redis) = (rt.ip("redis", "web"), rt.ip("redis", "redis"));
    let (status, body) = http_get(
        &format!("{web}:4143"),
        "web.cache.svc.cluster.local:8000",
        "/",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("redis {web}:6379 -> hits ")),
        "{body}"
    );
    // Redis's sidecar accepted the connections over mTLS, from web's identity.
    let admin = format!("{redis}:4191");
    let (_, metrics) = http_get(&admin, &admin, "/metrics");
    let (scrape, _) = linkerd_control::prom::Scrape::parse_lossy(&metrics);
    let mtls = scrape.sum(
        "tcp_open_total",
        &[
            ("direction", "inbound"),
            ("peer", "src"),
            ("tls", "true"),
            (
                "client_id",
                "web.cache.serviceaccount.identity.linkerd.cluster.local",
            ),
        ],
    ) as u64;
    assert!(mtls > 0, "{metrics}");
    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    assert_eq!(summary["ok"], true, "{summary}");
    let redis = workload(&summary, "redis");
    assert!(
        redis["tcp"]["inbound"]["opened"].as_u64().unwrap() > 10,
        "{summary}"
    );
    assert!(
        redis["tcp"]["inbound"]["read_bytes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let web = workload(&summary, "web");
    assert!(
        web["tcp"]["outbound"]["opened"].as_u64().unwrap() > 10,
        "{summary}"
    );
    assert_eq!(web["inbound"]["success_rate"], 1.0, "{summary}");
}

#[test]
fn a_broken_workload_is_reported_and_the_rest_keep_running() {
    let rt = Runtime::new("broken");
    let broken = r#"  - name: broken
    port: 8002
    command: 'echo "broken: cannot read /etc/broken.conf" >&2; exit 3'
"#;
    let file = rt.write(
        "broken.yaml",
        &shop(
            &[
                demo_app("web", 8000, true, Some("/items")),
                demo_app("api", 8001, false, None),
                broken.to_string(),
            ],
            &load(30),
        ),
    );
    let out = up(&rt, &["--seconds", "3", "--json"], &file)
        .output()
        .expect("run mesh up");
    let summary = json(&out);
    assert!(
        !out.status.success(),
        "a broken workload must fail the run: {summary}"
    );
    assert_eq!(summary["ok"], false);
    let broken = workload(&summary, "broken");
    assert_eq!(broken["state"], "failed", "{summary}");
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("the app of broken exited"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("cannot read /etc/broken.conf"), "{error}");
    let problems = summary["problems"].as_array().unwrap();
    assert_eq!(
        problems.len(),
        1,
        "only the broken workload is a problem: {summary}"
    );
    // The others ran and carried traffic, mTLS between them.
    for name in ["web", "api"] {
        let w = workload(&summary, name);
        assert_eq!(w["state"], "ready", "{summary}");
        assert_eq!(w["inbound"]["success_rate"], 1.0, "{summary}");
        assert!(w["inbound"]["requests"].as_u64().unwrap() > 0, "{summary}");
    }
    let api = workload(&summary, "api");
    assert_eq!(api["inbound"]["mtls_rate"], 1.0, "{summary}");
    assert_eq!(api["service"], "api.shop.svc.cluster.local", "{summary}");
    assert_eq!(summary["load"]["failed"], 0, "{summary}");
}

#[test]
fn policy_in_the_mesh_file_admits_some_callers_and_refuses_others() {
    let rt = Runtime::new("policy");
    let policy = r#"policy:
  servers:
    - {name: api, namespace: shop, spec: {podSelector: {matchLabels: {app: api}}, port: 8002}}
  meshTLSAuthentications:
    - {name: web, namespace: shop, spec: {identities: [web.shop.serviceaccount.identity.linkerd.cluster.local]}}
  authorizationPolicies:
    - name: api-from-web
      namespace: shop
      spec:
        targetRef: {group: policy.linkerd.io, kind: Server, name: api}
        requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}]
"#;
    let file = rt.write(
        "policy.yaml",
        &shop(
            &[
                demo_app("web", 8000, true, Some("/items")),
                demo_app("intruder", 8001, true, Some("/items")),
                demo_app("api", 8002, false, None),
            ],
            &(load(20) + policy),
        ),
    );
    let child = spawn_up(&rt, "4", &file);
    rt.wait_for_state("policy", Duration::from_secs(60));
    let (web, intruder) = (rt.ip("policy", "web"), rt.ip("policy", "intruder"));
    // The intruder's sidecar (mTLS, but not an identity the policy names) is refused: a 403
    // with the proxy's reason, passed back by the intruder app as a 502.
    for _ in 0..5 {
        let (status, body) = http_get(
            &format!("{intruder}:4143"),
            "intruder.shop.svc.cluster.local:8001",
            "/",
        );
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("403 Forbidden"), "{body}");
        assert!(
            body.contains("unauthorized request on route default"),
            "{body}"
        );
    }
    let (status, body) = http_get(
        &format!("{web}:4143"),
        "web.shop.svc.cluster.local:8000",
        "/",
    );
    assert_eq!(status, 200, "{body}");

    let out = child.wait_with_output().unwrap();
    let summary = json(&out);
    let web = workload(&summary, "web");
    assert_eq!(web["outbound"][0]["success_rate"], 1.0, "{summary}");
    let api = workload(&summary, "api");
    assert_eq!(api["inbound"]["mtls_rate"], 1.0, "{summary}");
    // The refusals are denials, and both sides of the hop count them the same: the
    // intruder's outbound route and the api's inbound traffic.
    let intruder = workload(&summary, "intruder");
    let refused = &intruder["outbound"][0];
    assert_eq!(refused["denied"], 5, "{summary}");
    assert_eq!(refused["failed"], 0, "{summary}");
    assert_eq!(refused["success_rate"], 0.0, "{summary}");
    assert_eq!(api["inbound"]["denied"], 5, "{summary}");
    assert_eq!(api["inbound"]["failed"], 0, "{summary}");
    let api_ok = api["inbound"]["requests"].as_f64().unwrap() - 5.0;
    let web_calls = web["outbound"][0]["requests"].as_f64().unwrap();
    assert_eq!(api_ok, web_calls, "{summary}");
    // The refusals are what failed, and the summary says so; web is untouched.
    assert_eq!(summary["ok"], false, "{summary}");
    let problems: Vec<&str> = summary["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.iter().any(|p| p.starts_with("intruder -> api")),
        "{summary}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("api (inbound)")),
        "{summary}"
    );
    assert!(!problems.iter().any(|p| p.starts_with("web")), "{summary}");
}

#[test]
fn an_invalid_file_is_refused_before_anything_starts() {
    let rt = Runtime::new("invalid");
    let file = rt.write(
        "invalid.yaml",
        "workloads:\n  - {name: Web, port: 80, command: x}\n",
    );
    let stderr = fails(rt.mesh().args(["up", "-f"]).arg(&file));
    assert!(stderr.contains("not a valid mesh file"), "{stderr}");
    assert!(stderr.contains("\"Web\" is not a DNS label"), "{stderr}");
}

#[test]
fn the_viewing_commands_say_how_to_find_a_mesh() {
    let rt = Runtime::new("viewing");
    let stderr = fails(rt.mesh().args(["stat"]));
    assert!(stderr.contains("start one with `mesh up`"), "{stderr}");
    let out = rt.mesh().args(["stat", "--mesh", "nope"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mesh named \"nope\""));
    // A proxy that is not there fails the check with a hint; the control plane is not
    // checked, and the last line says so.
    let out = rt
        .mesh()
        .args(["check", "--admin", "127.0.80.1:4191"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("× 127.0.80.1:4191: the sidecar is ready"),
        "{stdout}"
    );
    assert!(stdout.contains("hint:"), "{stdout}");
    // An error and its cause, once each.
    let stderr = String::from_utf8_lossy(&rt.mesh().args(["down", "x"]).output().unwrap().stderr)
        .to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_port_in_use_is_reported_before_anything_starts() {
    let rt = Runtime::new("port");
    // Hold the front door's sidecar admin port.
    let _held = std::net::TcpListener::bind("127.0.78.10:4191").expect("bind");
    let stderr = fails(
        rt.mesh()
            .args(["up", "--seconds", "1", "--json", "--proxy-bin", "builtin"])
            .args(["--base-ip", "127.0.78.10"]),
    );
    assert!(
        stderr.contains("127.0.78.10:4191 (the sidecar admin of frontend) is in use"),
        "{stderr}"
    );
    assert!(stderr.contains("leave it out"), "{stderr}");
    // Nothing was left behind.
    assert!(!rt.state_file("demo").exists());
}

#[test]
fn version_names_the_proxy_api() {
    let out = support::mesh().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("mesh {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("linkerd2-proxy-api 0.20.0"), "{text}");
}
