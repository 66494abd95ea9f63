//! The registry file the destination and policy services watch (polled every 500 ms): every
//! service of the mesh file on its port, its endpoints the inbound sidecars of the workloads
//! serving it, each with its identity and `ready` as the health checks last said (a workload
//! that is not ready stays listed, for the policy service, but discovery does not serve it),
//! the Service annotations (failure accrual by default), and the file's policy sections.

use super::{config::FailureAccrual, workloads::Workload};
use crate::up::MeshFile;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `balancer.linkerd.io/failure-accrual`, the Service annotation that turns on consecutive-
/// failure accrual for the service's callers.
pub const FAILURE_ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";

/// The registry with the workloads `ready` says are ready.
pub fn yaml(file: &MeshFile, workloads: &[Workload], ready: &dyn Fn(&Workload) -> bool) -> String {
    let mut services = Vec::new();
    let mut names = Vec::new();
    let endpoint = |w: &Workload| {
        json!({
            "ip": w.ip.to_string(),
            "port": super::INBOUND_PORT,
            "identity": w.identity(),
            "ready": ready(w),
            "labels": {"pod": w.name(), "app": w.service()},
        })
    };
    let mut service = |name: &str, port: u16, members: Vec<Value>| {
        let mut s = json!({
            "name": name,
            "namespace": file.namespace,
            "ports": [port],
            "endpoints": members,
        });
        if file.is_tcp(name) {
            s["opaquePorts"] = json!([port]);
        }
        services.push(s);
        names.push(name.to_string());
    };
    for (svc, port) in file.services() {
        let members = workloads
            .iter()
            .filter(|w| w.service() == svc)
            .map(endpoint)
            .collect();
        service(svc, port, members);
    }
    // Each workload of a shared service is also its own service, for routes that split.
    for w in workloads.iter().filter(|w| w.service() != w.name()) {
        let opaque = file.is_tcp(w.service());
        let mut s = json!({
            "name": w.name(),
            "namespace": file.namespace,
            "ports": [w.spec.port],
            "endpoints": [endpoint(w)],
        });
        if opaque {
            s["opaquePorts"] = json!([w.spec.port]);
        }
        services.push(s);
        names.push(w.name().to_string());
    }
    let mut out = format!("services: {}\n", Value::Array(services));
    let mut policy = file.policy.clone().unwrap_or_default();
    let annotations = service_annotations(
        file,
        &names,
        policy.remove("serviceAnnotations").unwrap_or(Value::Null),
    );
    if !annotations.is_empty() {
        out.push_str(&format!(
            "serviceAnnotations: {}\n",
            Value::Array(annotations)
        ));
    }
    // The file's policy sections, for the policy service (JSON is YAML).
    for (section, value) in policy {
        out.push_str(&format!("{section}: {value}\n"));
    }
    out
}

/// Failure accrual on every service (unless the file says `failureAccrual: none`), merged with
/// the file's own `serviceAnnotations`, whose values win.
fn service_annotations(file: &MeshFile, services: &[String], given: Value) -> Vec<Value> {
    let mut merged: BTreeMap<(String, String), BTreeMap<String, Value>> = BTreeMap::new();
    let mut order = Vec::new();
    if file.failure_accrual == FailureAccrual::Consecutive {
        for s in services {
            let key = (s.clone(), file.namespace.clone());
            order.push(key.clone());
            merged.insert(
                key,
                BTreeMap::from([(FAILURE_ACCRUAL.to_string(), json!("consecutive"))]),
            );
        }
    }
    let mut others = Vec::new();
    for entry in given.as_array().into_iter().flatten() {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The policy service's default namespace.
        let ns = entry
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let key = (name.to_string(), ns.to_string());
        let plain = entry.as_object().is_some_and(|o| {
            o.keys()
                .all(|k| matches!(k.as_str(), "name" | "namespace" | "annotations"))
        });
        match (merged.get_mut(&key), entry.get("annotations")) {
            (Some(existing), Some(Value::Object(a))) if plain => {
                existing.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            // Anything else goes as written, for the policy service to accept or refuse.
            _ => others.push(entry.clone()),
        }
    }
    let mut out: Vec<Value> = order
        .into_iter()
        .filter_map(|key| {
            let a = merged.remove(&key)?;
            Some(json!({"name": key.0, "namespace": key.1, "annotations": a}))
        })
        .collect();
    out.extend(others);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn workloads(file: &MeshFile) -> Vec<Workload> {
        file.workloads
            .iter()
            .enumerate()
            .map(|(i, spec)| Workload {
                spec: spec.clone(),
                namespace: file.namespace.clone(),
                ip: Ipv4Addr::new(127, 0, 0, 10 + i as u8),
            })
            .collect()
    }

    fn parse(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn the_demo_registry_lists_both_backends_under_one_service() {
        let file = MeshFile::demo().unwrap();
        let ws = workloads(&file);
        let reg = parse(&yaml(&file, &ws, &|w| w.name() != "backend-v2"));
        let services = reg["services"].as_array().unwrap();
        let backend = services.iter().find(|s| s["name"] == "backend").unwrap();
        let eps = backend["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2, "{reg}");
        assert_eq!(eps[0]["port"], 4143);
        assert_eq!(
            eps[0]["identity"],
            "backend-v1.demo.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(eps[0]["ready"], true);
        // Not ready: listed (the policy service still knows the pod), not served.
        assert_eq!(eps[1]["ready"], false);
        assert!(services.iter().any(|s| s["ports"][0] == 9090));
        // Each version is also a service of its own, for the 90/10 HTTPRoute.
        let v2 = services.iter().find(|s| s["name"] == "backend-v2").unwrap();
        assert_eq!(v2["endpoints"].as_array().unwrap().len(), 1);
        assert!(reg["httpRoutes"].is_array(), "{reg}");
        // Every service has failure accrual.
        let ann = reg["serviceAnnotations"].as_array().unwrap();
        assert_eq!(ann.len(), services.len());
        assert!(
            ann.iter()
                .all(|a| a["annotations"][FAILURE_ACCRUAL] == "consecutive")
        );
    }

    #[test]
    fn the_file_overrides_failure_accrual_and_marks_tcp_ports_opaque() {
        let file = MeshFile::parse(
            "namespace: shop\nworkloads:\n  - {name: web, port: 80, command: x, uses: [cache]}\n  - {name: cache, port: 6379, command: x, protocol: tcp}\npolicy:\n  serviceAnnotations:\n    - {name: web, namespace: shop, annotations: {balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\"}}\n",
        )
        .unwrap();
        let reg = parse(&yaml(&file, &workloads(&file), &|_| true));
        let ann = reg["serviceAnnotations"].as_array().unwrap();
        let web = ann.iter().find(|a| a["name"] == "web").unwrap();
        assert_eq!(web["annotations"][FAILURE_ACCRUAL], "consecutive");
        assert_eq!(
            web["annotations"]["balancer.linkerd.io/failure-accrual-consecutive-max-failures"],
            "3"
        );
        let cache = reg["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "cache")
            .unwrap();
        assert_eq!(cache["opaquePorts"], json!([6379]));

        let off = MeshFile::parse(
            "failureAccrual: none\nworkloads: [{name: web, port: 80, command: x}]\n",
        )
        .unwrap();
        let reg = parse(&yaml(&off, &workloads(&off), &|_| true));
        assert!(reg.get("serviceAnnotations").is_none(), "{reg}");
    }
}
