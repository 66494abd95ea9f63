//! `mesh inject`'s library half: workloads in multi-document YAML.

use crate::support::*;
use linkerd_injector::{
    SkipReason,
    workload::{InjectError, ReportOutcome, inject_yaml},
};
use serde_json::Value;

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple(yaml).unwrap()
}

fn template_spec<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(&format!("{pointer}/spec")).unwrap()
}

#[test]
fn deployment_file_injects_workloads_and_passes_the_rest_through() {
    let cfg = config();
    let input = fixture("deployment.yaml");
    let (out, reports) = inject_yaml(&input, &ns(&[]), &cfg).unwrap();
    let before = docs(&input);
    let after = docs(&out);
    assert_eq!(after.len(), 4);
    // ConfigMap and Service unchanged.
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    // The Deployment's template is injected, with the owner label.
    let d = &after[1];
    let spec = template_spec(d, "/spec/template");
    assert_eq!(
        names(&spec["initContainers"]),
        ["linkerd-init", "linkerd-proxy"]
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["linkerd.io/proxy-deployment"],
        "web"
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["linkerd.io/workload-ns"],
        "shop"
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        env(init_container(spec, "linkerd-proxy"))["LINKERD2_PROXY_INBOUND_PORTS"],
        "8080"
    );
    // The StatefulSet says disabled: unchanged.
    assert_eq!(after[3], before[3]);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].what, "deployment/web");
    assert!(matches!(reports[0].outcome, ReportOutcome::Injected { .. }));
    assert_eq!(reports[1].what, "statefulset/cache");
    assert_eq!(
        reports[1].outcome,
        ReportOutcome::Skipped(SkipReason::DisabledOnPod)
    );

    // Injecting the output again changes nothing.
    let (again, reports) = inject_yaml(&out, &ns(&[]), &cfg).unwrap();
    assert_eq!(docs(&again), after);
    assert_eq!(
        reports[0].outcome,
        ReportOutcome::Skipped(SkipReason::AlreadyInjected)
    );
}

#[test]
fn job_keeps_its_restart_policy_and_gets_a_native_sidecar() {
    let (out, _) = inject_yaml(&fixture("job.yaml"), &ns(&[]), &config()).unwrap();
    let job = &docs(&out)[0];
    let t = &job["spec"]["template"];
    assert_eq!(t["spec"]["restartPolicy"], "Never");
    assert_eq!(
        init_container(&t["spec"], "linkerd-proxy")["restartPolicy"],
        "Always"
    );
    assert_eq!(t["metadata"]["labels"]["linkerd.io/proxy-job"], "report");
    assert_eq!(t["metadata"]["annotations"]["linkerd.io/inject"], "enabled");
    let _: k8s_openapi::api::batch::v1::Job = serde_json::from_value(job.clone()).unwrap();
}

#[test]
fn cronjob_template_without_metadata() {
    let (out, reports) = inject_yaml(&fixture("cronjob.yaml"), &ns(&[]), &config()).unwrap();
    let cj = &docs(&out)[0];
    let t = &cj["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        names(&t["spec"]["initContainers"]),
        ["linkerd-init", "linkerd-proxy"]
    );
    assert_eq!(
        t["metadata"]["labels"]["linkerd.io/proxy-cronjob"],
        "nightly"
    );
    assert!(t["metadata"]["annotations"]["linkerd.io/trust-root-sha256"].is_string());
    assert_eq!(reports[0].what, "cronjob/nightly");
    let _: k8s_openapi::api::batch::v1::CronJob = serde_json::from_value(cj.clone()).unwrap();
}

#[test]
fn list_items_are_injected() {
    let (out, reports) = inject_yaml(&fixture("list.yaml"), &ns(&[]), &config()).unwrap();
    let list = &docs(&out)[0];
    let items = list["items"].as_array().unwrap();
    for item in items {
        let spec = &item["spec"]["template"]["spec"];
        assert_eq!(
            names(&spec["initContainers"]),
            ["linkerd-init", "linkerd-proxy"]
        );
    }
    assert_eq!(
        items[1]["spec"]["template"]["metadata"]["annotations"]["config.linkerd.io/opaque-ports"],
        "3306"
    );
    assert_eq!(
        items[1]["spec"]["template"]["metadata"]["labels"]["linkerd.io/proxy-replicaset"],
        "api-6f7d9"
    );
    assert_eq!(reports.len(), 2);
}

#[test]
fn every_pod_fixture_injects_offline_unless_it_opts_out() {
    for (name, injected) in [
        ("pod-annotated.yaml", true),
        ("pod-plain.yaml", true),
        ("pod-config.yaml", true),
        ("pod-disabled.yaml", false),
        ("pod-host-network.yaml", false),
        ("pod-injected.yaml", false),
    ] {
        let (out, reports) = inject_yaml(&fixture(name), &ns(&[]), &config()).unwrap();
        assert_eq!(
            matches!(reports[0].outcome, ReportOutcome::Injected { .. }),
            injected,
            "{name}: {reports:?}"
        );
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(docs(&out)[0].clone()).unwrap();
        assert_eq!(
            pod.spec
                .unwrap()
                .init_containers
                .unwrap_or_default()
                .iter()
                .any(|c| c.name == "linkerd-proxy"),
            injected || name == "pod-injected.yaml",
            "{name}"
        );
    }
}

#[test]
fn bad_documents_are_named_by_index() {
    let cfg = config();
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
               apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n\
               spec:\n  template:\n    spec:\n      containers: not-a-list\n";
    let err = inject_yaml(bad, &ns(&[]), &cfg).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, InjectError::Document { index: 1, .. }),
        "{msg}"
    );
    assert!(msg.contains("document 1 (deployment/web)"), "{msg}");
    assert!(msg.contains("invalid pod template"), "{msg}");

    let no_template = "kind: Deployment\nmetadata: {name: x}\nspec: {}\n";
    let msg = inject_yaml(no_template, &ns(&[]), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "document 0 (deployment/x): a Deployment needs a pod template at /spec/template"
        ),
        "{msg}"
    );

    let scalar = "just a string\n";
    let msg = inject_yaml(scalar, &ns(&[]), &cfg).unwrap_err().to_string();
    assert!(msg.contains("document 0"), "{msg}");

    let broken = "kind: Pod\nmetadata: {name: [\n";
    let msg = inject_yaml(broken, &ns(&[]), &cfg).unwrap_err().to_string();
    assert!(msg.contains("cannot parse the YAML"), "{msg}");
}
