//! The JSON that `mesh stat --json` and `mesh up --json` print: one schema, documented in
//! mesh/README.md ("JSON output"). Counts are integers, rates and shares are numbers (shares
//! from 0 to 1), missing values are `null`, and nothing is formatted for a table.

use serde::{Deserialize, Serialize};

/// Requests over a window: a workload's inbound traffic, or one of its outbound routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Responses in the window (each request counted once it is answered).
    pub requests: u64,
    /// `requests` per second.
    pub rps: f64,
    /// The share of responses neither `denied` nor `failed`; `null` without responses.
    pub success_rate: Option<f64>,
    /// Refused: HTTP 403 or 429, gRPC `PERMISSION_DENIED` or `RESOURCE_EXHAUSTED` (an
    /// authorization policy, a rate limit, or the app itself).
    pub denied: u64,
    /// HTTP 5xx, any other gRPC error, or no response at all.
    pub failed: u64,
    /// Latency percentiles in milliseconds (`histogram_quantile` over the proxy's buckets).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The share of responses carried over mTLS between sidecars.
    pub mtls_rate: Option<f64>,
}

/// One outbound route: the authority the app called (a service, `host:port`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub authority: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Retries the caller's sidecar sent for this service (its HTTPRoute's retry policy).
    pub retries: u64,
}

/// TCP connections of one direction, as the sidecar accepted them: inbound from peers (each
/// sidecar-to-sidecar mTLS connection, or a client outside the mesh), outbound from its app.
/// Opaque TCP (a database, a cache) shows only here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tcp {
    /// Connections opened in the window.
    pub opened: u64,
    /// Connections open at the end of the window.
    pub open: u64,
    /// Bytes read from and written to those clients in the window.
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub connections_per_second: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpTraffic {
    pub inbound: Tcp,
    pub outbound: Tcp,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Resident memory (counts the binary's pages shared with every other sidecar).
    pub rss_bytes: Option<u64>,
    /// Proportional set size: its private pages plus its share of shared ones, what each
    /// sidecar costs (`mesh up` only: it reads it from /proc).
    pub pss_bytes: Option<u64>,
}

/// Where a workload stands (`null` for proxies given with `--admin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its sidecar is ready and its app passes its health check: in discovery.
    Ready,
    /// Running, but not in discovery (starting, failing its health check, restarting).
    Unready,
    /// Its app or sidecar exited and is not restarted.
    Failed,
    /// Its sidecar's metrics could not be read.
    Unreachable,
}

/// One workload (one sidecar) over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    /// The fully-qualified service it serves (`null` with `--admin`).
    pub service: Option<String>,
    /// Its mTLS identity (`null` with `--admin`).
    pub identity: Option<String>,
    /// Called from outside the mesh (its inbound traffic is plaintext by design).
    pub ingress: bool,
    pub state: Option<State>,
    /// How many times `mesh up` restarted its app.
    pub restarts: u32,
    /// Why it is failed, unready or unreachable.
    pub error: Option<String>,
    pub inbound: Traffic,
    pub outbound: Vec<Route>,
    pub tcp: TcpTraffic,
    pub sidecar: Sidecar,
}

/// `mesh stat --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The mesh's name (`null` with `--admin`).
    pub mesh: Option<String>,
    /// The window the rates, shares and percentiles cover.
    pub window_seconds: f64,
    pub workloads: Vec<Workload>,
}

/// `mesh up --json`: the whole run as one window, and whether it went well.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mesh: String,
    /// True only if every workload ran, every route's requests succeeded and all traffic
    /// between workloads was mTLS.
    pub ok: bool,
    /// Why `ok` is false, one sentence each.
    pub problems: Vec<String>,
    /// The window: from the moment everything was ready to the end.
    pub window_seconds: f64,
    pub load: Load,
    /// How the sidecars were started.
    pub sidecar_command: String,
    pub control_plane: ControlPlane,
    /// The traces the embedded receiver collected (`null` when the sidecars export elsewhere,
    /// `--trace-collector`).
    #[serde(default)]
    pub traces: Option<Traces>,
    /// `mesh up`'s own process (the dashboard and the trace receiver live in it).
    #[serde(default)]
    pub mesh_up: MeshUp,
    pub workloads: Vec<Workload>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traces {
    /// Traces seen (distinct trace ids), including those no longer kept.
    pub collected: u64,
    /// Traces kept at the end (at most 1,000).
    pub stored: usize,
    pub spans: u64,
    /// How many of the mesh's workloads exported spans, and which.
    pub workloads: usize,
    pub workload_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshUp {
    /// Resident memory at the end.
    pub rss_bytes: Option<u64>,
    /// Where the dashboard was served (`null` with `--no-dashboard`).
    pub dashboard: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub sent: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Resident memory of the identity, destination and policy services together.
    pub rss_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload() -> Workload {
        Workload {
            name: "backend-v1".into(),
            service: Some("backend.demo.svc.cluster.local".into()),
            identity: Some("backend-v1.demo.serviceaccount.identity.linkerd.cluster.local".into()),
            ingress: false,
            state: Some(State::Ready),
            restarts: 0,
            error: None,
            inbound: Traffic {
                requests: 20,
                rps: 2.0,
                success_rate: Some(0.9),
                denied: 1,
                failed: 1,
                p50_ms: Some(1.5),
                p99_ms: Some(9.0),
                mtls_rate: Some(1.0),
            },
            outbound: vec![Route {
                authority: "ratings.demo.svc.cluster.local:8080".into(),
                traffic: Traffic::default(),
                retries: 2,
            }],
            tcp: TcpTraffic::default(),
            sidecar: Sidecar {
                rss_bytes: Some(7_000_000),
                pss_bytes: None,
            },
        }
    }

    /// The field names are the documented schema: renaming one breaks scripts.
    #[test]
    fn the_schema_names_its_fields_as_documented() {
        let v = serde_json::to_value(workload()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            [
                "error", "identity", "inbound", "ingress", "name", "outbound", "restarts",
                "service", "sidecar", "state", "tcp"
            ]
        );
        let traffic = [
            "denied",
            "failed",
            "mtls_rate",
            "p50_ms",
            "p99_ms",
            "requests",
            "rps",
            "success_rate",
        ];
        assert_eq!(keys(&v["inbound"]), traffic);
        // A route is its authority, the same traffic fields (flattened), and its retries.
        let mut route = [&traffic[..], &["authority", "retries"]].concat();
        route.sort();
        assert_eq!(keys(&v["outbound"][0]), route);
        assert_eq!(keys(&v["tcp"]), ["inbound", "outbound"]);
        assert_eq!(
            keys(&v["tcp"]["inbound"]),
            [
                "connections_per_second",
                "open",
                "opened",
                "read_bytes",
                "read_bytes_per_second",
                "write_bytes",
                "write_bytes_per_second"
            ]
        );
        assert_eq!(keys(&v["sidecar"]), ["pss_bytes", "rss_bytes"]);
        assert_eq!(v["state"], "ready");
    }

    #[test]
    fn counts_are_integers_and_absent_values_null() {
        let v = serde_json::to_value(workload()).unwrap();
        assert!(v["inbound"]["requests"].is_u64());
        assert!(v["inbound"]["denied"].is_u64());
        assert!(v["outbound"][0]["retries"].is_u64());
        assert!(v["sidecar"]["rss_bytes"].is_u64());
        assert_eq!(v["outbound"][0]["success_rate"], json!(null));
        assert_eq!(v["sidecar"]["pss_bytes"], json!(null));
        // Nothing table-shaped: the name is always there, routes are plain authorities.
        assert_eq!(v["name"], "backend-v1");
        assert_eq!(
            v["outbound"][0]["authority"],
            "ratings.demo.svc.cluster.local:8080"
        );
    }

    #[test]
    fn stat_and_summary_share_the_workload_schema_and_round_trip() {
        let stat = Stat {
            mesh: Some("demo".into()),
            window_seconds: 10.0,
            workloads: vec![workload()],
        };
        let summary = Summary {
            mesh: "demo".into(),
            ok: true,
            problems: vec![],
            window_seconds: 30.0,
            load: Load {
                sent: 600,
                failed: 0,
            },
            sidecar_command: "mesh proxy".into(),
            control_plane: ControlPlane {
                rss_bytes: Some(80_000_000),
            },
            traces: Some(Traces {
                collected: 10,
                stored: 10,
                spans: 70,
                workloads: 5,
                workload_names: vec!["frontend".into()],
            }),
            mesh_up: MeshUp::default(),
            workloads: vec![workload()],
        };
        let s = serde_json::to_value(&stat).unwrap();
        let u = serde_json::to_value(&summary).unwrap();
        assert_eq!(s["workloads"][0], u["workloads"][0]);
        assert_eq!(serde_json::from_value::<Stat>(s).unwrap(), stat);
        assert_eq!(serde_json::from_value::<Summary>(u).unwrap(), summary);
    }
}
