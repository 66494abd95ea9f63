//! The metrics and dashboards of deploy/observability/, against real scrapes.
//!
//! `scrape_config_and_dashboards_are_consistent` reads the files only: the PodMonitors relabel
//! as prometheus.yml does, every dashboard parses and uses only variables it defines.
//!
//! `dashboards_answer_from_a_running_mesh` runs `mesh up` (the demo), the proxy injector, and a
//! real Prometheus (Debian's `prometheus` package, /usr/bin/prometheus) on loopback with its own
//! storage. Prometheus runs the two jobs of deploy/observability/prometheus.yml unchanged except
//! for discovery: Kubernetes pod discovery is replaced by static targets carrying the
//! `__meta_kubernetes_*` labels it would give every port of every container of the pods, built
//! from what `mesh inject` writes into the demo's Deployments and from the control plane's
//! Deployments in deploy/base. So the shipped relabelling decides which ports are scraped and
//! what `namespace`, `pod`, `deployment`, ... are. Then every PromQL expression of our Grafana
//! dashboards, with Grafana's variables resolved the way Grafana resolves them, and a sample of
//! Linkerd's own dashboards' expressions (tests/fixtures/linkerd-dashboards.yaml) are evaluated
//! through Prometheus's HTTP API (`/api/v1/query`).
//!
//! Skips when Prometheus is missing, unless MESH_REQUIRE_TOOLS=1 or MESH_REQUIRE_NETNS=1 (CI
//! sets it and installs the package: see .ci/run).

// Test code: `allow-unwrap-in-tests` covers `#[test]` functions but not the helpers beside
// them; these tests drive child processes from a plain thread (no runtime), so sleeping is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use serde_json::{Map, Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{Read, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How often the test's Prometheus scrapes.
const SCRAPE_INTERVAL: &str = "2s";
/// Grafana's `$__rate_interval` for that scrape interval (four of them, its minimum).
const RATE_INTERVAL: &str = "8s";
/// A loopback range of the test's own for `mesh up`, so a demo someone is running does not
/// collide; the injector joins the control plane on the address before it.
const BASE_IP: &str = "127.0.90.10";
/// How long `mesh up` runs; everything is evaluated well within it.
const MESH_UP_SECONDS: u64 = 40;
/// The demo's workloads that call others through their sidecars (examples/demo.yaml): ratings
/// and quotes only answer, so outbound panels are empty for them.
const CALLERS: [&str; 3] = ["frontend", "backend-v1", "backend-v2"];
/// Pod names as a Deployment's ReplicaSet would make them: `<deployment>-<hash>-<suffix>`
/// (tests/fixtures/linkerd-dashboards.yaml names the pods this way).
const POD_TEMPLATE_HASH: &str = "7c8d9f6b5";
const POD_SUFFIX: &str = "q2w4e";
const NAMESPACE: &str = "demo";

fn required() -> bool {
    ["MESH_REQUIRE_TOOLS", "MESH_REQUIRE_NETNS"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn mesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
}

fn pod_name(deployment: &str) -> String {
    format!("{deployment}-{POD_TEMPLATE_HASH}-{POD_SUFFIX}")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped when dropped: SIGINT first (so `mesh up` stops its own children),
/// then SIGKILL if it has not exited within a few seconds.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGINT; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Prometheus's HTTP API ===

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// GET over HTTP/1.0 (the server closes the connection after the body, never chunks it).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Where the test's Prometheus listens.
fn prometheus_addr() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        // A free port: a Prometheus the machine runs may hold 9090.
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().to_string()
    })
}

/// An API call's `data`, or the error Prometheus gave.
fn api(path: &str) -> Result<Value, String> {
    let (status, body) = http_get(prometheus_addr(), path).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {} {}", v["errorType"], v["error"]));
    }
    Ok(v["data"].clone())
}

/// One series of a query's result: its labels and value.
type Sample = (Map<String, Value>, f64);

/// Values of Grafana variables, by name.
type Vars = BTreeMap<String, String>;

/// The result of an instant query: one sample per series.
fn query(expr: &str) -> Result<Vec<Sample>, String> {
    let data = api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
    let value = |v: &Value| {
        v[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => Ok(data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"].as_object().unwrap().clone(), value(&s["value"])))
            .collect()),
        Some("scalar") => Ok(vec![(Map::new(), value(&data["result"]))]),
        other => Err(format!("unexpected result type {other:?}")),
    }
}

/// Grafana's `label_values(selector, label)` or `label_values(label)`, the way its Prometheus
/// data source answers it: the label's values on the series the selector matches.
fn label_values(expr: &str) -> Result<BTreeSet<String>, String> {
    let inner = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("not a label_values() query: {expr}"))?;
    // The last comma outside braces and quotes separates the selector from the label.
    let (mut depth, mut quoted, mut split) = (0, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    let values: Vec<String> = match split {
        None => {
            let data = api(&format!("/api/v1/label/{}/values", inner.trim()))?;
            data.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        }
        Some(i) => {
            let (selector, label) = (inner[..i].trim(), inner[i + 1..].trim());
            let data = api(&format!("/api/v1/series?match[]={}", url_encode(selector)))?;
            data.as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s[label].as_str().map(str::to_string))
                .collect()
        }
    };
    Ok(values
        .into_iter()
        .filter(|v: &String| !v.is_empty())
        .collect())
}

/// Replaces Grafana's `$name` and `${name}`; `$__rate_interval` becomes [`RATE_INTERVAL`].
/// Names it does not know are returned as errors.
fn interpolate(expr: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or("unclosed ${")?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "__rate_interval" => out.push_str(RATE_INTERVAL),
            _ => match vars.get(name) {
                Some(v) => out.push_str(v),
                None => return Err(format!("unknown variable ${name}")),
            },
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A multi-value variable set to All, as Grafana writes it into PromQL: `(a|b)` with regex
/// characters escaped (a backslash in a PromQL string is written twice).
fn all_of(values: &BTreeSet<String>) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| {
                    if "\\.+*?()|[]{}^$".contains(c) {
                        format!("\\\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!("({})", escaped.join("|"))
}

// === The dashboards ===

#[derive(Debug)]
struct Dashboard {
    file: String,
    /// Query variables, in order: (name, label_values query, multi).
    variables: Vec<(String, String, bool)>,
    /// (panel title, expression).
    exprs: Vec<(String, String)>,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo("deploy/observability/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let d: Value = serde_json::from_str(&read(path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let variables = d["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["type"] == "query")
                .map(|v| {
                    let q = v["query"]
                        .as_str()
                        .or(v["query"]["query"].as_str())
                        .unwrap();
                    (
                        v["name"].as_str().unwrap().to_string(),
                        q.to_string(),
                        v["multi"] == true,
                    )
                })
                .collect();
            let mut exprs = Vec::new();
            fn walk(panels: &Value, exprs: &mut Vec<(String, String)>) {
                for p in panels.as_array().into_iter().flatten() {
                    let title = p["title"].as_str().unwrap_or_default().to_string();
                    for t in p["targets"].as_array().into_iter().flatten() {
                        exprs.push((title.clone(), t["expr"].as_str().unwrap().to_string()));
                    }
                    walk(&p["panels"], exprs);
                }
            }
            walk(&d["panels"], &mut exprs);
            Dashboard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                variables,
                exprs,
            }
        })
        .collect()
}

/// prometheus.yml's relabel rules with the keys the Prometheus operator uses.
fn operator_keys(rule: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in rule.as_object().unwrap() {
        let k = match k.as_str() {
            "source_labels" => "sourceLabels",
            "target_label" => "targetLabel",
            other => other,
        };
        out.insert(k.to_string(), v.clone());
    }
    Value::Object(out)
}

fn job<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == name)
        .unwrap_or_else(|| panic!("prometheus.yml has no job {name}"))
}

#[test]
fn scrape_config_and_dashboards_are_consistent() {
    let config = yaml(&repo("deploy/observability/prometheus.yml"));
    let monitors = yaml_docs(&read(&repo("deploy/observability/podmonitor.yaml")));
    assert_eq!(monitors.len(), 2);
    for (name, port) in [
        ("linkerd-proxy", "linkerd-admin"),
        ("linkerd-controller", "admin-http"),
    ] {
        let job = job(&config, name);
        assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod", "{name}");
        let rules = job["relabel_configs"].as_array().unwrap();
        // The keep rules select the port; a PodMonitor selects it with `port` (and running
        // pods with the operator's default `filterRunning`). The rest must be the same rules.
        let expected: Vec<Value> = rules
            .iter()
            .filter(|r| r["action"] != "keep")
            .map(operator_keys)
            .chain([json!({"action": "labeldrop", "regex": "container|endpoint"})])
            .collect();
        let monitor = monitors
            .iter()
            .find(|m| m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("podmonitor.yaml has no {name}"));
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(monitor["kind"], "PodMonitor");
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"], port, "{name}");
        assert_eq!(endpoint["path"], "/metrics", "{name}");
        assert_eq!(
            endpoint["relabelings"],
            Value::Array(expected),
            "{name}: the PodMonitor's relabelings differ from prometheus.yml's"
        );
        // The keep rule names the same port.
        assert!(
            rules
                .iter()
                .any(|r| r["action"] == "keep" && r["regex"].as_str().unwrap().contains(port)),
            "{name}"
        );
    }

    let all = dashboards();
    assert_eq!(all.len(), 5, "{all:?}");
    let mut uids = BTreeSet::new();
    for path in std::fs::read_dir(repo("deploy/observability/dashboards")).unwrap() {
        let d: Value = serde_json::from_str(&read(&path.unwrap().path())).unwrap();
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{}",
            d["uid"]
        );
        for p in d["panels"].as_array().unwrap() {
            if p["type"] != "row" {
                assert!(
                    !p["targets"].as_array().unwrap().is_empty(),
                    "{}: {}",
                    d["uid"],
                    p["title"]
                );
                assert_eq!(p["datasource"]["uid"], "${datasource}");
            }
        }
    }
    for d in &all {
        let vars: Vars = d
            .variables
            .iter()
            .map(|(name, _, _)| (name.clone(), "x".to_string()))
            .collect();
        for (title, expr) in &d.exprs {
            interpolate(expr, &vars).unwrap_or_else(|e| panic!("{} {title}: {e}", d.file));
        }
        for (name, q, _) in &d.variables {
            interpolate(q, &vars).unwrap_or_else(|e| panic!("{} ${name}: {e}", d.file));
        }
    }

    let fixture = yaml(&repo("mesh/tests/fixtures/linkerd-dashboards.yaml"));
    for e in fixture["expressions"].as_array().unwrap() {
        let expect = e["expect"].as_str().unwrap();
        assert!(["data", "empty", "collapsed"].contains(&expect), "{e}");
        assert_eq!(
            expect != "data",
            e["gap"].is_string(),
            "a gap says why: {e}"
        );
    }
}

// === Against a running mesh ===

/// One target as Kubernetes pod discovery would give it: every port of every container.
fn pod_targets(
    pod: &str,
    namespace: &str,
    ip: &str,
    template: &Value,
    keep_container: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let mut common = Map::new();
    let mut put = |k: String, v: &str| {
        common.insert(k, Value::String(v.to_string()));
    };
    put("__meta_kubernetes_namespace".into(), namespace);
    put("__meta_kubernetes_pod_name".into(), pod);
    put("__meta_kubernetes_pod_phase".into(), "Running");
    put("__meta_kubernetes_pod_ready".into(), "true");
    put("__meta_kubernetes_pod_ip".into(), ip);
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("pod-template-hash".into(), POD_TEMPLATE_HASH.into());
    for (k, v) in &labels {
        let k: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        put(
            format!("__meta_kubernetes_pod_label_{k}"),
            v.as_str().unwrap(),
        );
        put(format!("__meta_kubernetes_pod_labelpresent_{k}"), "true");
    }
    let spec = &template["spec"];
    let mut out = Vec::new();
    for (init, list) in [
        ("false", &spec["containers"]),
        ("true", &spec["initContainers"]),
    ] {
        for c in list.as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap();
            if !keep_container(name) {
                continue;
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                let port = p["containerPort"].as_u64().unwrap();
                let mut l = common.clone();
                l.insert("__meta_kubernetes_pod_container_name".into(), name.into());
                l.insert("__meta_kubernetes_pod_container_init".into(), init.into());
                l.insert(
                    "__meta_kubernetes_pod_container_port_number".into(),
                    port.to_string().into(),
                );
                l.insert(
                    "__meta_kubernetes_pod_container_port_protocol".into(),
                    p["protocol"].as_str().unwrap_or("TCP").into(),
                );
                if let Some(n) = p["name"].as_str() {
                    l.insert("__meta_kubernetes_pod_container_port_name".into(), n.into());
                }
                out.push(json!({"targets": [format!("{ip}:{port}")], "labels": l}));
            }
        }
    }
    out
}

/// What `mesh inject` makes of a plain Deployment of each workload: its pod template.
fn injected_templates(workloads: &[Value], anchors: &Path) -> BTreeMap<String, Value> {
    let items: Vec<Value> = workloads
        .iter()
        .map(|w| {
            let name = w["name"].as_str().unwrap();
            let port: u16 = w["app"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1
                .parse()
                .unwrap();
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{
                            "name": "app",
                            "image": "demo",
                            "ports": [{"name": "http", "containerPort": port}],
                        }]},
                    },
                },
            })
        })
        .collect();
    let mut child = mesh()
        .args(["inject", "-", "--identity-trust-anchors-file"])
        .arg(anchors)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mesh inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    injected["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["template"].clone(),
            )
        })
        .collect()
}

/// The control plane's Deployments in deploy/base, by name.
fn control_plane_templates() -> BTreeMap<String, Value> {
    ["identity", "destination", "policy", "injector"]
        .iter()
        .flat_map(|f| yaml_docs(&read(&repo(&format!("deploy/base/{f}.yaml")))))
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["template"].clone(),
            )
        })
        .collect()
}

fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match ready() {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Whether the demo gives an expression data when its dashboard shows `scope` (one workload or
/// one authority): outbound panels only have data for workloads that call others, and for
/// authorities that workloads call through their sidecars (not the front door's).
fn expects_data(expr: &str, scope: &Vars, front_door: &str) -> bool {
    let outbound = expr.contains("direction=\"outbound\"") || expr.contains("outbound_http_route_");
    if !outbound {
        return true;
    }
    if let Some(d) = scope.get("deployment") {
        return CALLERS.contains(&d.as_str());
    }
    if let Some(a) = scope.get("authority") {
        return a != front_door;
    }
    true
}

/// Every combination of the dashboard's variables: a single-value variable takes each of its
/// values in turn, a multi-value one is All.
fn combinations(
    d: &Dashboard,
    i: usize,
    bound: &mut Vars,
    scope: &mut Vars,
    out: &mut Vec<(Vars, Vars)>,
    resolved: &mut BTreeMap<String, BTreeSet<String>>,
    failures: &mut Vec<String>,
) {
    let Some((name, q, multi)) = d.variables.get(i) else {
        out.push((bound.clone(), scope.clone()));
        return;
    };
    let values = interpolate(q, bound).and_then(|q| label_values(&q));
    let values = match values {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            failures.push(format!("{} ${name}: no values ({q})", d.file));
            return;
        }
        Err(e) => {
            failures.push(format!("{} ${name}: {e}", d.file));
            return;
        }
    };
    resolved
        .entry(name.clone())
        .or_default()
        .extend(values.iter().cloned());
    if *multi {
        bound.insert(name.clone(), all_of(&values));
        combinations(d, i + 1, bound, scope, out, resolved, failures);
    } else {
        for v in values {
            bound.insert(name.clone(), v.clone());
            scope.insert(name.clone(), v);
            combinations(d, i + 1, bound, scope, out, resolved, failures);
        }
        scope.remove(name);
    }
    bound.remove(name);
}

/// `mesh up` with the demo for [`MESH_UP_SECONDS`], its sidecars the proxy built with this
/// test; and where it writes its state file (the admin addresses of every sidecar and of the
/// control plane): `dir` is its runtime directory, so the mesh named `demo` writes
/// `demo.json` there.
fn start_mesh_up(dir: &Path) -> (Proc, PathBuf) {
    let state_file = dir.join("demo.json");
    let up = Proc::spawn(
        "mesh up",
        mesh()
            .env("MESH_RUNTIME_DIR", dir)
            .args(["up", "--seconds", &MESH_UP_SECONDS.to_string(), "--json"])
            .args(["--base-ip", BASE_IP, "--proxy-bin", "builtin"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mesh-up.log")).unwrap()),
    );
    (up, state_file)
}

#[test]
fn dashboards_answer_from_a_running_mesh() {
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            !required(),
            "{PROMETHEUS} is required (MESH_REQUIRE_TOOLS/MESH_REQUIRE_NETNS) but missing: \
             apt-get install prometheus"
        );
        println!("SKIP: {PROMETHEUS} is not installed (apt-get install prometheus)");
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("mesh-observability");
    let trust = dir.0.join("trust");
    let init = mesh()
        .args(["identity", "init", "--dir"])
        .arg(&trust)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let anchors = trust.join("ca.crt");

    let (mut up, state_file) = start_mesh_up(&dir.0);
    wait_until("mesh up's state file", Duration::from_secs(60), || {
        if let Some(status) = up.exited() {
            panic!(
                "mesh up exited before it was ready: {status}\n{}",
                read(&dir.0.join("mesh-up.log"))
            );
        }
        state_file
            .exists()
            .then_some(())
            .ok_or_else(|| "not written".to_string())
    });
    let state: Value = serde_json::from_str(&read(&state_file)).unwrap();
    let workloads = state["workloads"].as_array().unwrap().clone();
    let names: BTreeSet<String> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    let ip_of = |admin: &Value| {
        admin
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string()
    };
    let cp_ip = ip_of(&state["identity_admin"]);
    // The injector is not part of `mesh up`; it runs here, beside the control plane, so the
    // control plane's dashboard has all four components. The issuer's certificate serves as its
    // webhook certificate.
    let namespaces = dir.0.join("namespaces.yaml");
    std::fs::write(&namespaces, "demo: {}\n").unwrap();
    let _injector = Proc::spawn(
        "mesh injector",
        mesh()
            .args(["injector", "serve", "--addr", &format!("{cp_ip}:8443")])
            .args(["--admin-addr", &format!("{cp_ip}:9995"), "--tls-cert"])
            .arg(trust.join("issuer.crt"))
            .arg("--tls-key")
            .arg(trust.join("issuer.key"))
            .arg("--identity-trust-anchors-file")
            .arg(&anchors)
            .arg("--namespaces-file")
            .arg(&namespaces)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let front_door = workloads
        .iter()
        .find(|w| w["ingress"] == true)
        .map(|w| {
            let port = w["app"].as_str().unwrap().rsplit_once(':').unwrap().1;
            format!("{}:{port}", w["service"].as_str().unwrap())
        })
        .unwrap();

    // Discovery as Kubernetes would do it: every port of every container of the demo's
    // (injected) pods for the proxies' job, of the control plane's pods for its job. The
    // control plane's own proxies are left out of the proxies' job: `mesh up` runs no sidecar
    // beside its control plane.
    let mut proxy_targets = Vec::new();
    let templates = injected_templates(&workloads, &anchors);
    for w in &workloads {
        let name = w["name"].as_str().unwrap();
        proxy_targets.extend(pod_targets(
            &pod_name(name),
            NAMESPACE,
            &ip_of(&w["admin"]),
            &templates[name],
            |_| true,
        ));
    }
    let mut controller_targets = Vec::new();
    for (name, template) in control_plane_templates() {
        let pod = pod_name(&name);
        controller_targets.extend(pod_targets(&pod, "linkerd", &cp_ip, &template, |_| true));
        proxy_targets.extend(pod_targets(&pod, "linkerd", &cp_ip, &template, |c| {
            c != "linkerd-proxy"
        }));
    }
    let mut config = yaml(&repo("deploy/observability/prometheus.yml"));
    config["global"] = json!({
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "evaluation_interval": SCRAPE_INTERVAL,
    });
    for j in config["scrape_configs"].as_array_mut().unwrap() {
        let j = j.as_object_mut().unwrap();
        assert!(j.remove("kubernetes_sd_configs").is_some());
        let targets = match j["job_name"].as_str().unwrap() {
            "linkerd-proxy" => &proxy_targets,
            "linkerd-controller" => &controller_targets,
            other => panic!("unexpected job {other}"),
        };
        j.insert("static_configs".into(), Value::Array(targets.clone()));
    }
    // JSON is YAML.
    let config_file = dir.0.join("prometheus.yml");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let prometheus_log = dir.0.join("prometheus.log");
    let _prometheus = Proc::spawn(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={}", prometheus_addr()))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prometheus_log).unwrap()),
    );
    let log = || read(&prometheus_log);
    wait_until(
        "prometheus ready",
        Duration::from_secs(30),
        || match http_get(prometheus_addr(), "/-/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}\n{}", log())),
        },
    );

    // The relabelling kept exactly the proxies' admin ports and the control plane's admin
    // ports, with the labels Linkerd's dashboards group by; every target answers.
    let admins: BTreeSet<String> = workloads
        .iter()
        .map(|w| w["admin"].as_str().unwrap().to_string())
        .collect();
    let controllers: BTreeSet<String> = [
        state["identity_admin"].as_str().unwrap().to_string(),
        state["destination_admin"].as_str().unwrap().to_string(),
        state["policy_admin"].as_str().unwrap().to_string(),
        format!("{cp_ip}:9995"),
    ]
    .into();
    wait_until("every target scraped", Duration::from_secs(30), || {
        let data = api("/api/v1/targets?state=active")?;
        let active = data["activeTargets"].as_array().unwrap();
        let of = |job: &str| -> BTreeSet<String> {
            active
                .iter()
                .filter(|t| t["labels"]["job"] == job)
                .map(|t| t["labels"]["instance"].as_str().unwrap().to_string())
                .collect()
        };
        if of("linkerd-proxy") != admins || of("linkerd-controller") != controllers {
            let kept: Vec<String> = active
                .iter()
                .map(|t| format!("{} {}", t["labels"]["job"], t["labels"]["instance"]))
                .collect();
            return Err(format!("kept targets: {kept:?}"));
        }
        for t in active {
            let l = &t["labels"];
            if l["job"] == "linkerd-proxy" {
                let pod = l["pod"].as_str().unwrap();
                let deployment = l["deployment"].as_str().unwrap();
                assert_eq!(pod, pod_name(deployment), "{t}");
                assert!(names.contains(deployment), "{t}");
                assert_eq!(l["namespace"], NAMESPACE, "{t}");
                assert_eq!(l["control_plane_ns"], "linkerd", "{t}");
                assert_eq!(l["workload_ns"], NAMESPACE, "{t}");
                assert_eq!(l["app"], deployment, "{t}");
                assert_eq!(l["pod_template_hash"], POD_TEMPLATE_HASH, "{t}");
                let names: Vec<&String> = l.as_object().unwrap().keys().collect();
                assert!(
                    names
                        .iter()
                        .all(|n| !n.starts_with("linkerd_io") && !n.starts_with("proxy_")),
                    "{t}"
                );
            } else {
                assert_eq!(l["namespace"], "linkerd", "{t}");
                let component = l["component"].as_str().unwrap();
                assert!(
                    ["identity", "destination", "policy", "proxy-injector"].contains(&component),
                    "{t}"
                );
            }
        }
        match active.iter().find(|t| t["health"] != "up") {
            Some(t) => Err(format!("{t}")),
            None => Ok(()),
        }
    });
    // Enough samples for every rate over $__rate_interval.
    wait_until(
        "four scrapes of every target",
        Duration::from_secs(30),
        || {
            let q = format!("min(count_over_time(up[{RATE_INTERVAL}]))");
            match query(&q)?.first() {
                Some((_, n)) if *n >= 4.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let ready_after = started.elapsed();

    // Our dashboards: every expression, for every value of the dashboard's single-value
    // variables, with data where the demo has traffic of that kind and none elsewhere.
    let mut failures = Vec::new();
    let mut report = String::new();
    let (mut our_exprs, mut our_evals) = (0, 0);
    for d in dashboards() {
        let mut combos = Vec::new();
        let mut resolved = BTreeMap::new();
        combinations(
            &d,
            0,
            &mut BTreeMap::new(),
            &mut BTreeMap::new(),
            &mut combos,
            &mut resolved,
            &mut failures,
        );
        // The route dashboard's client workloads are the callers only.
        if let Some(deployments) = resolved.get("deployment")
            && d.file != "route.json"
            && deployments != &names
        {
            failures.push(format!("{}: $deployment = {deployments:?}", d.file));
        }
        if let Some(authorities) = resolved.get("authority") {
            for w in &workloads {
                let port = w["app"].as_str().unwrap().rsplit_once(':').unwrap().1;
                let a = format!("{}:{port}", w["service"].as_str().unwrap());
                if !authorities.contains(&a) {
                    failures.push(format!("{}: $authority lacks {a}: {authorities:?}", d.file));
                }
            }
        }
        let mut evals = 0;
        for (title, expr) in &d.exprs {
            for (vars, scope) in &combos {
                let q = interpolate(expr, vars).unwrap();
                evals += 1;
                let want = expects_data(expr, scope, &front_door);
                match query(&q) {
                    Err(e) => failures.push(format!("{} {title} {scope:?}: {e}\n  {q}", d.file)),
                    Ok(r) if want && r.is_empty() => {
                        failures.push(format!("{} {title} {scope:?}: no data\n  {q}", d.file))
                    }
                    Ok(r) if want && r.iter().any(|(_, v)| !v.is_finite()) => failures.push(
                        format!("{} {title} {scope:?}: not a number: {r:?}\n  {q}", d.file),
                    ),
                    Ok(r) if !want && !r.is_empty() => failures.push(format!(
                        "{} {title} {scope:?}: data where the demo has none: {r:?}\n  {q}",
                        d.file
                    )),
                    Ok(_) => {}
                }
            }
        }
        let _ = writeln!(
            report,
            "  {}: {} expressions, {} evaluations ({} variable combinations)",
            d.file,
            d.exprs.len(),
            evals,
            combos.len()
        );
        our_exprs += d.exprs.len();
        our_evals += evals;
    }

    // Not only data, the right numbers where the demo fixes them: the top line's mTLS share
    // per workload is 0 for the front door (the load generator is not meshed) and 1 for the
    // rest (every hop between workloads is mTLS).
    let top = dashboards()
        .into_iter()
        .find(|d| d.file == "top-line.json")
        .unwrap();
    let (_, mtls) = top
        .exprs
        .iter()
        .find(|(title, e)| title == "Workloads" && e.contains("tls=\"true\""))
        .unwrap();
    let vars = Vars::from([("namespace".to_string(), format!("({NAMESPACE})"))]);
    let shares: BTreeMap<String, f64> = query(&interpolate(mtls, &vars).unwrap())
        .unwrap()
        .into_iter()
        .map(|(m, v)| (m["deployment"].as_str().unwrap().to_string(), v))
        .collect();
    let want: BTreeMap<String, f64> = workloads
        .iter()
        .map(|w| {
            let share = if w["ingress"] == true { 0.0 } else { 1.0 };
            (w["name"].as_str().unwrap().to_string(), share)
        })
        .collect();
    if shares != want {
        failures.push(format!(
            "top-line.json mTLS by workload: {shares:?}, want {want:?}"
        ));
    }

    // Linkerd's dashboards: each expression as the fixture expects it.
    let fixture = yaml(&repo("mesh/tests/fixtures/linkerd-dashboards.yaml"));
    let defaults: Vars = serde_json::from_value(fixture["defaults"].clone()).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut gaps: BTreeMap<String, usize> = BTreeMap::new();
    for e in fixture["expressions"].as_array().unwrap() {
        let mut vars = defaults.clone();
        if let Some(v) = e["vars"].as_object() {
            for (k, v) in v {
                vars.insert(k.clone(), v.as_str().unwrap().to_string());
            }
        }
        let expect = e["expect"].as_str().unwrap();
        let what = format!(
            "Linkerd {} {}",
            e["dashboard"].as_str().unwrap(),
            e["panel"].as_str().map_or_else(
                || format!("${}", e["variable"].as_str().unwrap()),
                str::to_string
            )
        );
        let q = interpolate(e["expr"].as_str().unwrap(), &vars).unwrap();
        let result = if e["variable"].is_string() {
            label_values(&q).map(|v| {
                v.into_iter()
                    .map(|v| {
                        (
                            Map::from_iter([("value".to_string(), Value::String(v))]),
                            0.0,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            query(&q)
        };
        *counts.entry(expect).or_default() += 1;
        if let Some(gap) = e["gap"].as_str() {
            *gaps.entry(gap.to_string()).or_default() += 1;
        }
        match (expect, result) {
            (_, Err(err)) => failures.push(format!("{what}: {err}\n  {q}")),
            ("data", Ok(r)) if r.is_empty() => failures.push(format!("{what}: no data\n  {q}")),
            ("empty", Ok(r)) if !r.is_empty() => failures.push(format!(
                "{what}: expected no data (gap: {}), got {r:?}\n  {q}",
                e["gap"]
            )),
            ("collapsed", Ok(r))
                if r.is_empty()
                    || r.iter()
                        .any(|(m, _)| m.keys().any(|k| k.starts_with("dst_"))) =>
            {
                failures.push(format!(
                    "{what}: expected one series without dst_* labels, got {r:?}\n  {q}"
                ))
            }
            _ => {}
        }
    }
    let evaluated_after = started.elapsed();
    assert!(
        up.exited().is_none(),
        "mesh up ended before the evaluation did (after {evaluated_after:?})"
    );
    println!(
        "ready after {ready_after:?}, evaluated after {evaluated_after:?}\n\
         our dashboards: {our_exprs} expressions, {our_evals} evaluations\n{report}\
         Linkerd's dashboards: {counts:?}; gaps: {gaps:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        log()
    );

    // `mesh up` ran its course and everything in it worked.
    let deadline = Instant::now() + Duration::from_secs(MESH_UP_SECONDS + 30);
    let status = loop {
        if let Some(s) = up.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "mesh up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "mesh up: {status}\n{}",
        read(&dir.0.join("mesh-up.log"))
    );
    println!("done after {:?}", started.elapsed());
}
