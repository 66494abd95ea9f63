//! Looking at a running mesh: `mesh stat`, `mesh edges`, `mesh graph` and `mesh check`, read
//! from the sidecars' and control plane's admin servers. They find a local mesh through the
//! state file `mesh up` writes, or take any set of proxy admin addresses (`--admin`).

use crate::out::{self, outln};
use crate::stat::{self, Scrape, Window};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

/// What `mesh up` is running, written where the other commands look for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    pub logs: PathBuf,
    pub namespace: String,
    pub identity_admin: SocketAddr,
    pub destination_admin: SocketAddr,
    pub policy_admin: SocketAddr,
    pub trust_anchor_file: PathBuf,
    pub workloads: Vec<StateWorkload>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateWorkload {
    pub name: String,
    pub service: String,
    pub identity: String,
    pub admin: SocketAddr,
    pub app: SocketAddr,
    pub ingress: bool,
}

pub fn default_state_file() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("mesh-up.json")
}

/// Where to look: the state of a local mesh, or proxies' admin addresses.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Sidecar admin addresses (host:port, comma-separated or repeated) instead of the local
    /// mesh's state file.
    #[arg(long, value_delimiter = ',')]
    admin: Vec<SocketAddr>,
    /// The state file `mesh up` writes.
    #[arg(long, default_value_os_t = default_state_file())]
    state: PathBuf,
}

/// One proxy to look at.
#[derive(Clone, Debug)]
struct Proxy {
    name: String,
    admin: SocketAddr,
    identity: Option<String>,
}

impl Target {
    fn resolve(&self) -> anyhow::Result<(Vec<Proxy>, Option<State>)> {
        if !self.admin.is_empty() {
            let proxies = self
                .admin
                .iter()
                .map(|a| Proxy {
                    name: a.to_string(),
                    admin: *a,
                    identity: None,
                })
                .collect();
            return Ok((proxies, None));
        }
        let state = read_state(&self.state)?;
        let proxies = state
            .workloads
            .iter()
            .map(|w| Proxy {
                name: w.name.clone(),
                admin: w.admin,
                identity: Some(w.identity.clone()),
            })
            .collect();
        Ok((proxies, Some(state)))
    }
}

fn read_state(path: &Path) -> anyhow::Result<State> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no local mesh found ({} does not exist): start one with `mesh up`, or pass --admin <proxy admin address>",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a mesh state file; pass --admin <proxy admin address> instead",
            path.display()
        )
    })
}

// === stat ===

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    target: Target,
    /// The window the rates and percentiles are measured over, in seconds.
    #[arg(long, default_value = "2")]
    window: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of the stat table: a workload's inbound traffic, or one of its outbound routes.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    /// `inbound`, or `-> <authority>` for an outbound route.
    pub route: String,
    #[serde(flatten)]
    pub window: Window,
    pub rss_bytes: f64,
    pub error: Option<String>,
}

impl Row {
    pub fn failed(workload: &str, error: &str) -> Self {
        Row {
            workload: workload.to_string(),
            route: "FAILED".into(),
            window: Window::default(),
            rss_bytes: 0.0,
            error: Some(error.to_string()),
        }
    }
}

/// A workload's rows between two scrapes: inbound, then each outbound route.
pub fn rows(workload: &str, before: &Scrape, after: &Scrape, secs: f64) -> Vec<Row> {
    let mut out = vec![Row {
        workload: workload.to_string(),
        route: "inbound".into(),
        window: Window::between(
            &before.direction("inbound"),
            &after.direction("inbound"),
            secs,
        ),
        rss_bytes: after.rss_bytes,
        error: None,
    }];
    let prev = before.by_authority("outbound");
    for (authority, now) in after.by_authority("outbound") {
        let then = prev.get(&authority).cloned().unwrap_or_default();
        out.push(Row {
            workload: String::new(),
            route: format!("-> {authority}"),
            window: Window::between(&then, &now, secs),
            rss_bytes: f64::NAN,
            error: None,
        });
    }
    out
}

pub fn print_rows(rows: &[Row]) -> std::io::Result<()> {
    let route_width = rows.iter().map(|r| r.route.len()).max().unwrap_or(5).max(5);
    outln!(
        "{:<12} {:<route_width$} {:>7} {:>8} {:>8} {:>8} {:>7} {:>6}",
        "WORKLOAD",
        "ROUTE",
        "RPS",
        "SUCCESS",
        "P50",
        "P99",
        "MTLS",
        "RSS"
    )?;
    for r in rows {
        if let Some(e) = &r.error {
            outln!("{:<12} {:<route_width$} {e}", r.workload, r.route)?;
            continue;
        }
        let w = &r.window;
        let rss = if r.rss_bytes.is_nan() {
            String::new()
        } else {
            format!("{:.1}M", r.rss_bytes / 1e6)
        };
        outln!(
            "{:<12} {:<route_width$} {:>7.1} {:>8} {:>8} {:>8} {:>7} {:>6}",
            r.workload,
            r.route,
            w.rps,
            pct(w.success_rate),
            ms(w.p50_ms),
            ms(w.p99_ms),
            pct(w.tls_fraction),
            rss,
        )?;
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |ms| format!("{ms:.1}ms"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

async fn scrape_all(proxies: &[Proxy]) -> Vec<Result<Scrape, String>> {
    let mut out = Vec::with_capacity(proxies.len());
    for p in proxies {
        out.push(
            stat::scrape(p.admin)
                .await
                .map(|t| Scrape::parse(&t))
                .map_err(|e| format!("cannot scrape {}: {e:#}", p.admin)),
        );
    }
    out
}

pub async fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    let (proxies, _) = args.target.resolve()?;
    let window = args.window.clamp(0.1, 600.0);
    let before = scrape_all(&proxies).await;
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let after = scrape_all(&proxies).await;
    let mut out = Vec::new();
    let mut reachable = 0;
    for (i, p) in proxies.iter().enumerate() {
        match (&before[i], &after[i]) {
            (Ok(b), Ok(a)) => {
                reachable += 1;
                out.extend(rows(&p.name, b, a, window));
            }
            (Err(e), _) | (_, Err(e)) => out.push(Row::failed(&p.name, e)),
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        print_rows(&out)?;
    }
    Ok(if reachable == proxies.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// === top ===

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Rows shown in the live table.
    #[arg(long, default_value = "20")]
    rows: usize,
    /// Print one JSON summary at the end instead of the live table.
    #[arg(long)]
    json: bool,
}

/// Requests seen through `/tap` for one (workload, direction, method, authority, path).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TopRow {
    pub workload: String,
    pub direction: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub count: u64,
    pub successes: u64,
    pub tls: u64,
    #[serde(skip)]
    latencies_us: Vec<u64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One `/tap` event, as the proxy writes it.
#[derive(Debug, Deserialize)]
struct TapEvent {
    direction: String,
    method: String,
    authority: String,
    path: String,
    #[serde(default)]
    tls: bool,
    status: Option<u16>,
    grpc_status: Option<u32>,
    error: Option<String>,
    latency_us: u64,
}

impl TapEvent {
    fn success(&self) -> bool {
        self.error.is_none()
            && self.status.is_some_and(|s| s < 500)
            && self.grpc_status.is_none_or(|g| g == 0)
    }
}

/// Keeps this many latencies per row for the percentiles.
const TOP_SAMPLES: usize = 10_000;

#[derive(Debug, Default)]
struct Top {
    rows: BTreeMap<(String, String, String, String, String), TopRow>,
    lost: u64,
}

impl Top {
    fn add(&mut self, workload: &str, line: &str) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(lost) = v.get("lost").and_then(|l| l.as_u64())
        {
            self.lost += lost;
            return;
        }
        let Ok(ev) = serde_json::from_str::<TapEvent>(line) else {
            return;
        };
        let key = (
            workload.to_string(),
            ev.direction.clone(),
            ev.method.clone(),
            ev.authority.clone(),
            ev.path.clone(),
        );
        let row = self.rows.entry(key).or_insert_with(|| TopRow {
            workload: workload.to_string(),
            direction: ev.direction.clone(),
            method: ev.method.clone(),
            authority: ev.authority.clone(),
            path: ev.path.clone(),
            ..TopRow::default()
        });
        row.count += 1;
        row.successes += u64::from(ev.success());
        row.tls += u64::from(ev.tls);
        if row.latencies_us.len() < TOP_SAMPLES {
            row.latencies_us.push(ev.latency_us);
        }
    }

    /// The rows, busiest first, with their percentiles.
    fn sorted(&self) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = self
            .rows
            .values()
            .map(|r| {
                let mut r = r.clone();
                let mut l = std::mem::take(&mut r.latencies_us);
                l.sort_unstable();
                r.p50_ms = l.get(l.len() / 2).map(|us| *us as f64 / 1000.0);
                r.max_ms = l.last().map(|us| *us as f64 / 1000.0);
                r
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        rows
    }
}

fn print_top(rows: &[TopRow], limit: usize, lost: u64) -> std::io::Result<()> {
    outln!(
        "{:<12} {:<4} {:<6} {:<40} {:<24} {:>7} {:>8} {:>8} {:>8} {:>5}",
        "WORKLOAD",
        "DIR",
        "METHOD",
        "AUTHORITY",
        "PATH",
        "COUNT",
        "SUCCESS",
        "P50",
        "MAX",
        "MTLS"
    )?;
    for r in rows.iter().take(limit) {
        outln!(
            "{:<12} {:<4} {:<6} {:<40} {:<24} {:>7} {:>8} {:>8} {:>8} {:>5}",
            r.workload,
            if r.direction == "inbound" {
                "in"
            } else {
                "out"
            },
            r.method,
            r.authority,
            r.path,
            r.count,
            pct(Some(r.successes as f64 / r.count.max(1) as f64)),
            ms(r.p50_ms),
            ms(r.max_ms),
            if r.tls == r.count {
                "yes"
            } else if r.tls == 0 {
                "no"
            } else {
                "some"
            },
        )?;
    }
    if lost > 0 {
        outln!("({lost} events lost: the proxies produced them faster than we read)")?;
    }
    Ok(())
}

/// Reads one proxy's `/tap` stream line by line into `tx`.
async fn tap_stream(
    name: String,
    admin: SocketAddr,
    seconds: u64,
    tx: tokio::sync::mpsc::Sender<(String, String)>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .context("connect timed out")??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/tap?seconds={seconds}"))
        .header(http::header::HOST, admin.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let rsp = sender.send_request(req).await?;
    if !rsp.status().is_success() {
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let mut body = rsp.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if tx.send((name.clone(), line)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let (proxies, _) = args.target.resolve()?;
    let seconds = args.seconds.unwrap_or(3600).clamp(1, 3600);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut tasks = Vec::new();
    for p in &proxies {
        let (name, admin, tx) = (p.name.clone(), p.admin, tx.clone());
        tasks.push(tokio::spawn(async move {
            tap_stream(name.clone(), admin, seconds, tx)
                .await
                .map_err(|e| format!("{name} ({admin}): {e:#}"))
        }));
    }
    drop(tx);
    let mut top = Top::default();
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((name, line)) => top.add(&name, &line),
                None => break,
            },
            _ = tick.tick(), if !args.json => {
                if std::io::stdout().is_terminal() {
                    out::print("\x1b[2J\x1b[H")?;
                }
                print_top(&top.sorted(), args.rows, top.lost)?;
                out::print("\n")?;
            }
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let mut errors = Vec::new();
    for t in tasks {
        t.abort();
        if let Ok(Err(e)) = t.await {
            errors.push(e);
        }
    }
    let rows = top.sorted();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"rows": rows, "lost": top.lost, "errors": errors})
            )?
        )?;
    } else {
        print_top(&rows, args.rows, top.lost)?;
        for e in &errors {
            eprintln!("mesh top: {e}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// === edges and graph ===

#[derive(Debug, clap::Args)]
pub struct EdgesArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    #[command(flatten)]
    target: Target,
    /// Also render SVG to this file with Graphviz's `dot` (which must be installed).
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// Who talks to whom, seen from the caller's sidecar: requests since it started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    /// The calling workload.
    pub src: String,
    /// The called service (the request's authority).
    pub dst: String,
    /// The caller's identity, when known (the local mesh's state names it).
    pub client_id: Option<String>,
    /// The identity the callee's sidecar proved over mTLS, if the hop was mTLS.
    pub server_id: Option<String>,
    pub requests: f64,
    pub mtls: bool,
}

fn edges_of(proxies: &[Proxy], scrapes: &[Result<Scrape, String>]) -> Vec<Edge> {
    let mut out = Vec::new();
    for (p, s) in proxies.iter().zip(scrapes) {
        let Ok(s) = s else { continue };
        for (k, snap) in &s.routes {
            if k.direction != "outbound" || snap.requests <= 0.0 {
                continue;
            }
            out.push(Edge {
                src: p.name.clone(),
                dst: k.authority.clone(),
                client_id: p.identity.clone(),
                server_id: k.peer_id.clone(),
                requests: snap.requests,
                mtls: k.peer_id.is_some() || snap.tls_responses > 0.0,
            });
        }
    }
    out
}

pub async fn edges(args: EdgesArgs) -> anyhow::Result<ExitCode> {
    let (proxies, _) = args.target.resolve()?;
    let scrapes = scrape_all(&proxies).await;
    for e in scrapes.iter().filter_map(|s| s.as_ref().err()) {
        eprintln!("mesh edges: {e}");
    }
    let edges = edges_of(&proxies, &scrapes);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&edges)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if edges.is_empty() {
        outln!("no traffic between workloads yet")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<12} {:<40} {:>9} {:<5} {:<55} SERVER_ID",
        "SRC",
        "DST",
        "REQUESTS",
        "MTLS",
        "CLIENT_ID"
    )?;
    for e in &edges {
        outln!(
            "{:<12} {:<40} {:>9} {:<5} {:<55} {}",
            e.src,
            e.dst,
            e.requests,
            if e.mtls { "yes" } else { "no" },
            e.client_id.as_deref().unwrap_or("-"),
            e.server_id.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The service graph in Graphviz DOT: workloads and the services they call, edges labelled
/// with requests and whether they were mTLS.
fn dot(proxies: &[Proxy], state: Option<&State>, edges: &[Edge]) -> String {
    let mut out = String::from(
        "digraph mesh {\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\"];\n",
    );
    // Group the workloads by the service they serve, when the state says.
    let mut by_service: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for p in proxies {
        let svc = state
            .and_then(|s| s.workloads.iter().find(|w| w.name == p.name))
            .map(|w| w.service.clone())
            .unwrap_or_else(|| p.name.clone());
        by_service.entry(svc).or_default().push(&p.name);
    }
    for (i, (svc, names)) in by_service.iter().enumerate() {
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            quote(svc)
        ));
        for n in names {
            out.push_str(&format!("    {};\n", quote(n)));
        }
        out.push_str("  }\n");
    }
    for e in edges {
        // Point at the workload whose identity answered, else at the service's workloads
        // when the state knows them, else at the authority.
        let by_identity = e
            .server_id
            .as_ref()
            .and_then(|id| state.and_then(|s| s.workloads.iter().find(|w| &w.identity == id)));
        let host = e.dst.split(':').next().unwrap_or(&e.dst);
        let targets: Vec<&str> = match by_identity {
            Some(w) => vec![w.name.as_str()],
            None => by_service
                .get(host)
                .map(|v| v.to_vec())
                .unwrap_or_else(|| vec![e.dst.as_str()]),
        };
        for t in targets {
            out.push_str(&format!(
                "  {} -> {} [label={}{}];\n",
                quote(&e.src),
                quote(t),
                quote(&format!(
                    "{} req{}",
                    e.requests,
                    if e.mtls { ", mTLS" } else { "" }
                )),
                if e.mtls { "" } else { ", style=dashed" }
            ));
        }
    }
    out.push_str("}\n");
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub async fn graph(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let (proxies, state) = args.target.resolve()?;
    let scrapes = scrape_all(&proxies).await;
    let text = dot(&proxies, state.as_ref(), &edges_of(&proxies, &scrapes));
    out::print(&text)?;
    if let Some(svg) = args.svg {
        let mut child = tokio::process::Command::new("dot")
            .arg("-Tsvg")
            .arg("-o")
            .arg(&svg)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot run `dot` for --svg: install Graphviz (apt-get install graphviz)")?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(text.as_bytes()).await?;
        }
        let status = child.wait().await?;
        if !status.success() {
            bail!("`dot` failed ({status})");
        }
        eprintln!("wrote {}", svg.display());
    }
    Ok(ExitCode::SUCCESS)
}

// === check ===

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// Warn when a certificate expires sooner than this many hours.
    #[arg(long, default_value = "6")]
    expiry_warning_hours: f64,
    /// Print JSON instead of pass/fail lines.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<String>,
}

fn result(check: String, outcome: Result<String, (String, String)>) -> CheckResult {
    match outcome {
        Ok(detail) => CheckResult {
            check,
            ok: true,
            detail,
            hint: None,
        },
        Err((detail, hint)) => CheckResult {
            check,
            ok: false,
            detail,
            hint: Some(hint),
        },
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    stat::get(addr, path).await
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An expiry check: fails when `expiry` has passed or is nearer than `warn_secs`.
fn expiry_ok(what: &str, expiry: f64, now: f64, warn_secs: f64) -> Result<String, String> {
    let left = expiry - now;
    let human = if left.abs() >= 3600.0 {
        format!("{:.1} h", left / 3600.0)
    } else {
        format!("{:.0} s", left)
    };
    if left <= 0.0 {
        Err(format!(
            "{what} expired {} ago",
            human.trim_start_matches('-')
        ))
    } else if left < warn_secs {
        Err(format!("{what} expires in {human}"))
    } else {
        Ok(format!("{what} valid for {human}"))
    }
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (proxies, state) = args.target.resolve()?;
    let warn = args.expiry_warning_hours * 3600.0;
    let now = now_unix();
    let mut results = Vec::new();
    if let Some(state) = &state {
        for (name, addr) in [
            ("identity", state.identity_admin),
            ("destination", state.destination_admin),
            ("policy", state.policy_admin),
        ] {
            let outcome = match admin_get(addr, "/ready").await {
                Ok((200, _)) => Ok(format!("ready at {addr}")),
                Ok((status, body)) => Err((
                    format!("{addr}/ready answered {status}: {}", body.trim()),
                    format!("see {}/{name}.err.log", state.logs.display()),
                )),
                Err(e) => Err((
                    format!("cannot reach {addr}: {e:#}"),
                    format!(
                        "is `mesh up` (pid {}) still running? see {}/{name}.err.log",
                        state.pid,
                        state.logs.display()
                    ),
                )),
            };
            results.push(result(format!("the {name} service is ready"), outcome));
        }
        let issuer = match admin_get(state.identity_admin, "/metrics").await {
            Ok((200, text)) => match metric(&text, "identity_issuer_expiry_timestamp_seconds") {
                Some(expiry) => expiry_ok("the issuer certificate", expiry, now, warn).map_err(
                    |d| {
                        (
                            d,
                            "rotate the issuer: `mesh identity rotate` (the identity service reloads it)"
                                .to_string(),
                        )
                    },
                ),
                None => Err((
                    "the identity service reports no issuer".into(),
                    "check the issuer files it was started with".into(),
                )),
            },
            Ok((status, _)) => Err((
                format!("its /metrics answered {status}"),
                "see the identity service's log".into(),
            )),
            Err(e) => Err((
                format!("cannot read its metrics: {e:#}"),
                "is the identity service running?".into(),
            )),
        };
        results.push(result("the issuer is valid".into(), issuer));
        let anchor = match std::fs::read(&state.trust_anchor_file) {
            Ok(pem) => match linkerd_identity::ca::TrustAnchors::from_pem(&pem) {
                Ok(anchors) => Ok(format!("{} trust anchor(s) parsed", anchors.ders().len())),
                Err(e) => Err((
                    format!("{}: {e}", state.trust_anchor_file.display()),
                    "restart `mesh up` to generate fresh trust".into(),
                )),
            },
            Err(e) => Err((
                format!("cannot read {}: {e}", state.trust_anchor_file.display()),
                "restart `mesh up`".into(),
            )),
        };
        results.push(result("the trust anchor is readable".into(), anchor));
    }
    for p in &proxies {
        let ready = match admin_get(p.admin, "/ready").await {
            Ok((200, _)) => Ok(format!("ready at {}", p.admin)),
            Ok((status, body)) => Err((
                format!("{}/ready answered {status}: {}", p.admin, body.trim()),
                "a sidecar is ready once it has a certificate: is the identity service reachable and is its token valid?".into(),
            )),
            Err(e) => Err((
                format!("cannot reach {}: {e:#}", p.admin),
                match &state {
                    Some(s) => format!("see {}/{}-proxy.err.log", s.logs.display(), p.name),
                    None => "is the proxy running, with its admin server on that address?".into(),
                },
            )),
        };
        results.push(result(format!("{}: the sidecar is ready", p.name), ready));
        let cert = match admin_get(p.admin, "/metrics").await {
            Ok((200, text)) => {
                // Linkerd's current name, and the one proxies before 2024 exported.
                let expiry = metric(&text, "control_identity_cert_expiration_timestamp_seconds")
                    .or_else(|| metric(&text, "identity_cert_expiration_timestamp_seconds"));
                match expiry {
                    Some(expiry) => {
                        expiry_ok("its certificate", expiry, now, warn).map_err(|d| {
                            (
                                d,
                                "the sidecar renews at 70% of the lifetime: check the identity service and the sidecar's log".into(),
                            )
                        })
                    }
                    None => Err((
                        "it has no certificate".into(),
                        "is identity configured (LINKERD2_PROXY_IDENTITY_*)?".into(),
                    )),
                }
            }
            Ok((status, _)) => Err((
                format!("its /metrics answered {status}"),
                "see the sidecar's log".into(),
            )),
            Err(e) => Err((format!("{e:#}"), "is the proxy running?".into())),
        };
        results.push(result(
            format!("{}: the sidecar's certificate is valid", p.name),
            cert,
        ));
    }
    let ok = results.iter().all(|r| r.ok);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": results}))?
        )?;
    } else {
        for r in &results {
            outln!(
                "{} {} ({})",
                if r.ok { "√" } else { "×" },
                r.check,
                r.detail
            )?;
            if let Some(h) = &r.hint {
                outln!("    hint: {h}")?;
            }
        }
        outln!(
            "\n{}",
            if ok {
                "Status check results are √"
            } else {
                "Some checks failed"
            }
        )?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = r#"request_total{direction="outbound",authority="backend.demo.svc.cluster.local:8080",target_addr="127.0.0.11:4143",tls="true",server_id="backend-v1.demo.serviceaccount.identity.linkerd.cluster.local"} 7
response_total{direction="outbound",authority="backend.demo.svc.cluster.local:8080",target_addr="127.0.0.11:4143",tls="true",server_id="backend-v1.demo.serviceaccount.identity.linkerd.cluster.local",status_code="200",classification="success"} 7
request_total{direction="outbound",authority="example.com:80",target_addr="93.184.215.14:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery"} 2
response_total{direction="outbound",authority="example.com:80",target_addr="93.184.215.14:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery",status_code="200",classification="success"} 2
"#;

    fn proxy(name: &str) -> Proxy {
        Proxy {
            name: name.into(),
            admin: "127.0.0.1:4191".parse().unwrap(),
            identity: Some(format!(
                "{name}.demo.serviceaccount.identity.linkerd.cluster.local"
            )),
        }
    }

    #[test]
    fn edges_name_both_identities_and_say_when_a_hop_is_plaintext() {
        let proxies = [proxy("frontend")];
        let edges = edges_of(&proxies, &[Ok(Scrape::parse(CLIENT))]);
        assert_eq!(edges.len(), 2, "{edges:?}");
        let mtls = edges.iter().find(|e| e.dst.starts_with("backend")).unwrap();
        assert!(mtls.mtls);
        assert_eq!(mtls.requests, 7.0);
        assert_eq!(
            mtls.server_id.as_deref(),
            Some("backend-v1.demo.serviceaccount.identity.linkerd.cluster.local")
        );
        assert_eq!(
            mtls.client_id.as_deref(),
            Some("frontend.demo.serviceaccount.identity.linkerd.cluster.local")
        );
        let plain = edges.iter().find(|e| e.dst.starts_with("example")).unwrap();
        assert!(!plain.mtls);
        assert_eq!(plain.server_id, None);
    }

    #[test]
    fn the_graph_points_callers_at_the_workloads_of_a_service() {
        let proxies = [proxy("frontend"), proxy("backend-v1")];
        let state = State {
            pid: 1,
            logs: "/tmp".into(),
            namespace: "demo".into(),
            identity_admin: "127.0.0.9:9990".parse().unwrap(),
            destination_admin: "127.0.0.9:9996".parse().unwrap(),
            policy_admin: "127.0.0.9:9997".parse().unwrap(),
            trust_anchor_file: "/nonexistent".into(),
            workloads: vec![
                StateWorkload {
                    name: "frontend".into(),
                    service: "frontend.demo.svc.cluster.local".into(),
                    identity: "f".into(),
                    admin: "127.0.0.10:4191".parse().unwrap(),
                    app: "127.0.0.10:8080".parse().unwrap(),
                    ingress: true,
                },
                StateWorkload {
                    name: "backend-v1".into(),
                    service: "backend.demo.svc.cluster.local".into(),
                    identity: "backend-v1.demo.serviceaccount.identity.linkerd.cluster.local"
                        .into(),
                    admin: "127.0.0.11:4191".parse().unwrap(),
                    app: "127.0.0.11:8080".parse().unwrap(),
                    ingress: false,
                },
            ],
        };
        let edges = edges_of(&proxies[..1], &[Ok(Scrape::parse(CLIENT))]);
        let text = dot(&proxies, Some(&state), &edges);
        assert!(
            text.contains("\"frontend\" -> \"backend-v1\" [label=\"7 req, mTLS\"]"),
            "{text}"
        );
        assert!(
            text.contains("\"frontend\" -> \"example.com:80\" [label=\"2 req\", style=dashed]"),
            "{text}"
        );
        assert!(text.contains("label=\"backend.demo.svc.cluster.local\""));
    }

    #[test]
    fn top_groups_tap_events_by_path_busiest_first() {
        let mut top = Top::default();
        let line = |path: &str, status: u16, grpc: Option<u32>, us: u64| {
            let grpc = grpc.map_or(String::new(), |g| format!(",\"grpc_status\":{g}"));
            format!(
                "{{\"direction\":\"inbound\",\"method\":\"GET\",\"authority\":\"a:80\",\"path\":\"{path}\",\"tls\":true,\"status\":{status}{grpc},\"latency_us\":{us}}}"
            )
        };
        for us in [1000, 2000, 3000] {
            top.add("web", &line("/busy", 200, None, us));
        }
        top.add("web", &line("/busy", 503, None, 9000));
        top.add("web", &line("/grpc", 200, Some(14), 500));
        top.add("web", "{\"lost\":7}");
        top.add("web", "not json");
        let rows = top.sorted();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].path, "/busy");
        assert_eq!(rows[0].count, 4);
        assert_eq!(rows[0].successes, 3);
        assert_eq!(rows[0].p50_ms, Some(3.0));
        assert_eq!(rows[0].max_ms, Some(9.0));
        assert_eq!(rows[1].successes, 0, "grpc-status 14 is a failure");
        assert_eq!(top.lost, 7);
    }

    #[test]
    fn expiry_checks_warn_before_and_fail_after() {
        assert!(expiry_ok("x", 1000.0 + 86400.0, 1000.0, 3600.0).is_ok());
        let soon = expiry_ok("x", 1000.0 + 600.0, 1000.0, 3600.0).unwrap_err();
        assert!(soon.contains("expires in 600 s"), "{soon}");
        let gone = expiry_ok("x", 1000.0 - 7200.0, 1000.0, 3600.0).unwrap_err();
        assert!(gone.contains("expired 2.0 h ago"), "{gone}");
    }

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "# HELP a\nidentity_cert_expiration_timestamp_seconds 123.5\nidentity_cert_expiration_timestamp_seconds_other 9\n";
        assert_eq!(
            metric(text, "identity_cert_expiration_timestamp_seconds"),
            Some(123.5)
        );
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn a_missing_state_file_says_to_start_the_mesh() {
        let err = read_state(Path::new("/nonexistent/mesh-up.json")).unwrap_err();
        assert!(format!("{err:#}").contains("mesh up"));
    }

    #[test]
    fn rows_list_inbound_then_each_outbound_route() {
        let after = Scrape::parse(CLIENT);
        let rows = rows("frontend", &Scrape::default(), &after, 1.0);
        assert_eq!(rows[0].route, "inbound");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].route, "-> backend.demo.svc.cluster.local:8080");
        assert_eq!(rows[1].window.tls_fraction, Some(1.0));
        assert_eq!(rows[2].window.tls_fraction, Some(0.0));
    }
}
