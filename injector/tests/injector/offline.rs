//! `mesh inject`'s library half: workloads in multi-document YAML.

use crate::support::*;
use linkerd_injector::{
    SkipReason,
    workload::{ReportOutcome, inject_yaml},
    yaml,
};
use serde_json::Value;

fn docs(text: &str) -> Vec<Value> {
    yaml::split(text)
        .iter()
        .map(|d| yaml::parse(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
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
fn documents_that_cannot_be_read_or_injected_are_reported_and_passed_through() {
    let cfg = config();
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n\
                 spec:\n  template:\n    spec:\n      containers: not-a-list\n---\n\
                 kind: Pod\nmetadata: {name: [\n---\n\
                 kind: Deployment\nmetadata: {name: x}\nspec: {}\n---\n\
                 just a string\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n\
                 spec: {containers: [{name: app, image: nginx}]}\n";
    let (out, reports) = inject_yaml(input, &ns(&[]), &cfg).unwrap();
    let failed = |what: &str| {
        reports
            .iter()
            .find(|r| r.what == what)
            .unwrap_or_else(|| panic!("no report for {what}: {reports:?}"))
    };
    let web = failed("deployment/web");
    assert_eq!((web.document, web.line), (1, 4));
    assert!(
        matches!(&web.outcome, ReportOutcome::Failed(e) if e.contains("invalid pod template")),
        "{reports:?}"
    );
    let broken = failed("document 2");
    assert_eq!(broken.line, 12);
    assert!(
        matches!(broken.outcome, ReportOutcome::Unreadable(_)),
        "{reports:?}"
    );
    assert!(matches!(
        &failed("deployment/x").outcome,
        ReportOutcome::Failed(e) if e.contains("a Deployment needs a pod template at /spec/template")
    ));
    assert!(matches!(
        &failed("document 4").outcome,
        ReportOutcome::Failed(e) if e.contains("must be a YAML mapping")
    ));
    assert!(matches!(
        failed("pod/ok").outcome,
        ReportOutcome::Injected { .. }
    ));
    // Everything but the injected pod is passed through exactly as written.
    let written: Vec<String> = yaml::split(input).iter().map(|d| d.text()).collect();
    for (i, text) in written.iter().enumerate().take(5) {
        assert!(out.contains(text.as_str()), "document {i} changed:\n{out}");
    }
    let pod = yaml::parse(yaml::split(&out).last().unwrap()).unwrap();
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["linkerd-init", "linkerd-proxy"]
    );
}

#[test]
fn yaml_1_1_octals_are_read_as_kubectl_reads_them() {
    // podinfo's cronjob-backup-daily.yaml: `defaultMode: 0755` is 493 to kubectl.
    let input = fixture("real/podinfo/deploy/bases/database/cronjob-backup-daily.yaml");
    let (out, reports) = inject_yaml(&input, &ns(&[]), &config()).unwrap();
    assert!(
        matches!(reports[0].outcome, ReportOutcome::Injected { .. }),
        "{reports:?}"
    );
    let cj = &docs(&out)[0];
    let volumes = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"];
    let scripts = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "scripts")
        .unwrap();
    assert_eq!(scripts["configMap"]["defaultMode"], 493);
    let _: k8s_openapi::api::batch::v1::CronJob = serde_json::from_value(cj.clone()).unwrap();
}

/// Every manifest of the real projects under fixtures/real (see its README) is accepted: each
/// document read, each workload injected (the output's schema validation is
/// mesh/tests/k8s_validate.rs).
#[test]
fn every_manifest_of_real_projects_is_accepted() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
    let mut files = Vec::new();
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 40, "{files:?}");
    let mut injected = 0;
    for f in &files {
        let input = std::fs::read_to_string(f).unwrap();
        let (out, reports) = inject_yaml(&input, &ns(&[]), &config()).unwrap();
        for r in &reports {
            assert!(
                matches!(r.outcome, ReportOutcome::Injected { .. }),
                "{}: {r:?}",
                f.display()
            );
            injected += 1;
        }
        // As many documents out as in, and injecting again changes nothing.
        assert_eq!(docs(&out).len(), docs(&input).len(), "{}", f.display());
        let (again, _) = inject_yaml(&out, &ns(&[]), &config()).unwrap();
        assert_eq!(docs(&again), docs(&out), "{}", f.display());
    }
    assert!(injected >= 25, "{injected} workloads");
}
