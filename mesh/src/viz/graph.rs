//! `mesh graph`: the service graph as Graphviz DOT (and SVG with `--svg`).

use super::{
    Proxy, Target,
    edges::{Edge, edges_of},
    scrape_all,
};
use crate::instance::State;
use crate::out;
use anyhow::{Context, bail};
use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    #[command(flatten)]
    target: Target,
    /// Also render SVG to this file with Graphviz's `dot` (which must be installed).
    #[arg(long)]
    svg: Option<PathBuf>,
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
        crate::out::errln!("wrote {}", svg.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::StateWorkload;
    use crate::metrics::Scrape;
    use crate::viz::edges::tests::{CLIENT, proxy};

    #[test]
    fn the_graph_points_callers_at_the_workloads_of_a_service() {
        let proxies = [proxy("frontend"), proxy("backend-v1")];
        let workloads = vec![
            StateWorkload {
                name: "frontend".into(),
                service: "frontend.demo.svc.cluster.local".into(),
                identity: "f".into(),
                admin: "127.0.0.10:4191".parse().unwrap(),
                app: "127.0.0.10:8080".parse().unwrap(),
                ingress: true,
                ready: true,
            },
            StateWorkload {
                name: "backend-v1".into(),
                service: "backend.demo.svc.cluster.local".into(),
                identity: "backend-v1.demo.serviceaccount.identity.linkerd.cluster.local".into(),
                admin: "127.0.0.11:4191".parse().unwrap(),
                app: "127.0.0.11:8080".parse().unwrap(),
                ingress: false,
                ready: true,
            },
        ];
        let state = State::for_tests("demo", 1, "/tmp".into(), workloads);
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
}
