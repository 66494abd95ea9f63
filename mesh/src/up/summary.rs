//! What `mesh up` shows: the live table every second (over the rolling window) and, at the
//! end, the summary of the whole run with the problems that make it not ok.

use super::control::pss_kb;
use super::workloads::{Phase, Running};
use crate::metrics::Scrape;
use crate::out;
use crate::schema::{self, State, Summary};
use crate::stats::{self, Info, Rolling};
use crate::table;

/// What is known of a workload besides its metrics.
pub fn info(r: &Running) -> Info {
    let w = &r.workload;
    let (state, error) = match &r.phase {
        Phase::Ready => (State::Ready, None),
        Phase::Starting => (State::Unready, Some("starting".to_string())),
        Phase::Unready(why) => (State::Unready, Some(why.clone())),
        Phase::Restarting { why, .. } => (State::Unready, Some(format!("restarting: {why}"))),
        Phase::Failed(why) => (State::Failed, Some(why.clone())),
    };
    Info {
        name: w.name().to_string(),
        service: Some(w.fqdn()),
        identity: Some(w.identity()),
        ingress: w.spec.ingress,
        state: Some(state),
        restarts: r.restarts,
        error,
        sidecar: schema::Sidecar {
            rss_bytes: None,
            pss_bytes: r
                .sidecar
                .as_ref()
                .and_then(|p| p.id())
                .and_then(pss_kb)
                .map(|kb| kb * 1024),
        },
        ..Info::default()
    }
}

/// Every workload between two scrapes; a failed one, or one whose sidecar did not answer, has
/// no numbers.
pub fn workloads(
    running: &[Running],
    spans: &dyn Fn(usize) -> Option<(Scrape, Scrape, f64)>,
) -> Vec<schema::Workload> {
    running
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let info = info(r);
            if r.is_failed() {
                return info;
            }
            match spans(i) {
                Some((before, after, secs)) => stats::workload(info, &before, &after, secs),
                None => Info {
                    state: Some(State::Unreachable),
                    error: Some(format!(
                        "its sidecar's metrics at {} did not answer",
                        r.workload.admin()
                    )),
                    ..info
                },
            }
        })
        .collect()
}

/// The live table: a header, the tables over the rolling window, the load generator's count.
pub fn print_live(
    header: &str,
    running: &[Running],
    rolling: &Rolling,
    namespace: &str,
    load: Option<(u64, u64)>,
) -> std::io::Result<()> {
    use std::io::IsTerminal;
    let rows = workloads(running, &|i| {
        rolling
            .span(i)
            .map(|(a, b, secs)| (a.clone(), b.clone(), secs))
    });
    let mut text = String::new();
    if std::io::stdout().is_terminal() {
        text.push_str("\x1b[2J\x1b[H");
    }
    text.push_str(header);
    text.push_str(&table::render(&rows, Some(namespace)));
    match load {
        Some((sent, failed)) => text.push_str(&format!(
            "\nLoad: {sent} sent, {failed} failed. Ctrl-C to stop.\n"
        )),
        None => text.push_str("\nCtrl-C to stop.\n"),
    }
    out::print(&text)
}

/// The run's summary and its problems.
pub struct Run<'a> {
    pub mesh: &'a str,
    pub sidecar_command: String,
    pub control_plane_rss: Option<u64>,
    pub running: &'a [Running],
    pub first: &'a [Option<Scrape>],
    pub last: &'a [Option<Scrape>],
    pub secs: f64,
    /// (sent, failed), when the file has a load generator.
    pub load: Option<(u64, u64)>,
    pub traces: Option<schema::Traces>,
    pub mesh_up: schema::MeshUp,
}

pub fn summarize(run: Run<'_>) -> Summary {
    let workloads = workloads(run.running, &|i| {
        Some((
            run.first.get(i)?.clone()?,
            run.last.get(i)?.clone()?,
            run.secs,
        ))
    });
    let mut problems = Vec::new();
    let (sent, failed) = run.load.unwrap_or((0, 0));
    if run.load.is_some() && sent == 0 {
        problems.push("the load generator sent nothing".to_string());
    }
    if failed > 0 {
        problems.push(format!("{failed} of {sent} load requests failed"));
    }
    for w in &workloads {
        problems.extend(problems_of(w));
    }
    Summary {
        mesh: run.mesh.to_string(),
        ok: problems.is_empty(),
        problems,
        window_seconds: run.secs,
        load: schema::Load { sent, failed },
        sidecar_command: run.sidecar_command,
        control_plane: schema::ControlPlane {
            rss_bytes: run.control_plane_rss,
        },
        traces: run.traces,
        mesh_up: run.mesh_up,
        workloads,
    }
}

fn problems_of(w: &schema::Workload) -> Vec<String> {
    let name = &w.name;
    let mut out = Vec::new();
    match (w.state, &w.error) {
        (Some(State::Ready), _) => {}
        (_, Some(e)) if w.state == Some(State::Failed) => out.push(e.clone()),
        (state, e) => out.push(format!(
            "{name} is {} at the end{}",
            match state {
                Some(State::Unreachable) => "unreachable",
                _ => "not ready",
            },
            e.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        )),
    }
    if w.restarts > 0 {
        out.push(format!(
            "the app of {name} was restarted {} times",
            w.restarts
        ));
    }
    let rate = |v: Option<f64>| v.map_or("-".into(), |r| format!("{:.2}%", r * 100.0));
    for r in &w.outbound {
        let t = &r.traffic;
        if t.success_rate != Some(1.0) {
            out.push(format!(
                "{name} -> {}: success rate {} ({} denied, {} failed)",
                r.authority,
                rate(t.success_rate),
                t.denied,
                t.failed
            ));
        }
        if t.mtls_rate != Some(1.0) {
            out.push(format!(
                "{name} -> {}: only {} of responses over mTLS",
                r.authority,
                rate(t.mtls_rate)
            ));
        }
    }
    let t = &w.inbound;
    if t.requests > 0 {
        if t.success_rate != Some(1.0) {
            out.push(format!(
                "{name} (inbound): success rate {} ({} denied, {} failed)",
                rate(t.success_rate),
                t.denied,
                t.failed
            ));
        }
        // Traffic between workloads must all be mTLS; a front door is called from outside.
        if !w.ingress && t.mtls_rate != Some(1.0) {
            out.push(format!(
                "{name} (inbound): only {} of responses over mTLS",
                rate(t.mtls_rate)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Route, Traffic};

    fn w(state: State) -> schema::Workload {
        Info {
            name: "api".into(),
            state: Some(state),
            error: Some("the app of api exited (exit status: 3): boom".into()),
            ..Info::default()
        }
    }

    #[test]
    fn problems_name_the_workload_and_what_went_wrong() {
        assert_eq!(
            problems_of(&w(State::Failed)),
            ["the app of api exited (exit status: 3): boom"]
        );
        assert!(problems_of(&w(State::Unready))[0].starts_with("api is not ready at the end"));
        let mut ok = w(State::Ready);
        assert!(problems_of(&ok).is_empty());
        ok.outbound.push(Route {
            authority: "db:5432".into(),
            traffic: Traffic {
                requests: 10,
                success_rate: Some(0.8),
                denied: 2,
                mtls_rate: Some(1.0),
                ..Traffic::default()
            },
            retries: 0,
        });
        ok.restarts = 2;
        let p = problems_of(&ok);
        assert!(
            p.contains(&"the app of api was restarted 2 times".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(&"api -> db:5432: success rate 80.00% (2 denied, 0 failed)".to_string()),
            "{p:?}"
        );
    }
}
