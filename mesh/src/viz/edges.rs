//! `mesh edges`: who talks to whom, with the identities on both sides of each hop, from the
//! callers' sidecars' metrics.

use super::{Proxy, Target, scrape_all};
use crate::metrics::Scrape;
use crate::out::outln;
use serde::Serialize;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct EdgesArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    pub requests: u64,
    pub mtls: bool,
}

pub fn edges_of(proxies: &[Proxy], scrapes: &[Result<Scrape, String>]) -> Vec<Edge> {
    let mut out = Vec::new();
    for (p, s) in proxies.iter().zip(scrapes) {
        let Ok(s) = s else { continue };
        for (k, snap) in &s.routes {
            if k.direction != "outbound" || snap.responses <= 0.0 {
                continue;
            }
            out.push(Edge {
                src: p.name.clone(),
                dst: k.authority.clone(),
                client_id: p.info.identity.clone(),
                server_id: k.peer_id.clone(),
                requests: snap.responses.round() as u64,
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
        crate::out::errln!("mesh edges: {e}");
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
    // Two indented lines of identities under each hop: they are too long for columns.
    for e in &edges {
        outln!(
            "{} -> {}: {} requests, {}",
            e.src,
            e.dst,
            e.requests,
            if e.mtls { "mTLS" } else { "plaintext" }
        )?;
        outln!("    client {}", e.client_id.as_deref().unwrap_or("-"))?;
        outln!("    server {}", e.server_id.as_deref().unwrap_or("-"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub const CLIENT: &str = r#"request_total{direction="outbound",authority="backend.demo.svc.cluster.local:8080",target_addr="127.0.0.11:4143",tls="true",server_id="backend-v1.demo.serviceaccount.identity.linkerd.cluster.local"} 7
response_total{direction="outbound",authority="backend.demo.svc.cluster.local:8080",target_addr="127.0.0.11:4143",tls="true",server_id="backend-v1.demo.serviceaccount.identity.linkerd.cluster.local",status_code="200",classification="success"} 7
request_total{direction="outbound",authority="example.com:80",target_addr="93.184.215.14:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery"} 2
response_total{direction="outbound",authority="example.com:80",target_addr="93.184.215.14:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery",status_code="200",classification="success"} 2
"#;

    pub fn proxy(name: &str) -> Proxy {
        Proxy {
            name: name.into(),
            admin: "127.0.0.1:4191".parse().unwrap(),
            info: crate::stats::Info {
                name: name.into(),
                identity: Some(format!(
                    "{name}.demo.serviceaccount.identity.linkerd.cluster.local"
                )),
                ..Default::default()
            },
        }
    }

    #[test]
    fn edges_name_both_identities_and_say_when_a_hop_is_plaintext() {
        let proxies = [proxy("frontend")];
        let edges = edges_of(&proxies, &[Ok(Scrape::parse(CLIENT))]);
        assert_eq!(edges.len(), 2, "{edges:?}");
        let mtls = edges.iter().find(|e| e.dst.starts_with("backend")).unwrap();
        assert!(mtls.mtls);
        assert_eq!(mtls.requests, 7);
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
}
