//! `mesh inject`: the webhook's patch applied offline to multi-document YAML.
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs are injected (their pod template, with the same patch the webhook would send for
//! the pod), `List`s are walked. Documents are read as kubectl reads them (`yaml.rs`: YAML
//! 1.1's octals and booleans); every document that is not injected passes through exactly as
//! written, and one that cannot be read or injected is reported and passed through too, never
//! failing the others.

use crate::{
    config::InjectConfig,
    patch::{self, Options, Outcome, Owner},
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use std::collections::BTreeMap;

/// YAML that could not be read (`parse_yaml`) or written.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot parse the YAML: {0}")]
    Yaml(String),
    #[error("cannot write the YAML: {0}")]
    Write(String),
}

/// What happened to one workload or document (for the summary `mesh inject` prints on
/// stderr).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `deployment/web`, or `document 3` for one that could not be read.
    pub what: String,
    /// The document's index (from 0) and first line (from 1) in the input.
    pub document: usize,
    pub line: usize,
    pub outcome: ReportOutcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReportOutcome {
    Injected {
        warnings: Vec<String>,
    },
    Skipped(patch::SkipReason),
    /// Not YAML kubectl would read (why): passed through as written.
    Unreadable(String),
    /// A workload that cannot be injected (why): passed through as written.
    Failed(String),
}

/// Injects every workload in `input` (one or more YAML documents) and returns the documents
/// as YAML, plus a report per workload and per document that could not be read or injected.
/// `ns_annotations` stands in for the namespace's annotations (`mesh inject` has no cluster to
/// ask). Only a failure to write YAML is an error.
pub fn inject_yaml(
    input: &str,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut out = String::with_capacity(input.len() * 2);
    let mut reports = Vec::new();
    for (index, doc) in crate::yaml::split(input).iter().enumerate() {
        let report = |what: String, outcome| Report {
            what,
            document: index,
            line: doc.line,
            outcome,
        };
        let mut value = match crate::yaml::parse(doc) {
            Ok(v) => v,
            Err(e) => {
                reports.push(report(
                    format!("document {index}"),
                    ReportOutcome::Unreadable(e),
                ));
                out.push_str(&doc.text());
                continue;
            }
        };
        if value.is_null() {
            out.push_str(&doc.text());
            continue;
        }
        if !value.is_object() {
            reports.push(report(
                format!("document {index}"),
                ReportOutcome::Failed("a Kubernetes object must be a YAML mapping".into()),
            ));
            out.push_str(&doc.text());
            continue;
        }
        let mut found = Vec::new();
        let result = inject_value(&mut value, ns_annotations, cfg, &mut found);
        let injected = found
            .iter()
            .any(|r| matches!(r.outcome, ReportOutcome::Injected { .. }));
        reports.extend(found.into_iter().map(|r| report(r.what, r.outcome)));
        match result {
            Err((what, reason)) => {
                reports.push(report(what, ReportOutcome::Failed(reason)));
                out.push_str(&doc.text());
            }
            Ok(()) if !injected => out.push_str(&doc.text()),
            Ok(()) => {
                let yaml = serde_saphyr::to_string(&value)
                    .map_err(|e| InjectError::Write(e.to_string()))?;
                out.push_str(doc.prefix);
                if index > 0 || !doc.marker.is_empty() {
                    out.push_str("---\n");
                }
                out.push_str(&yaml);
            }
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok((out, reports))
}

/// Where a kind keeps its pod template.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects one object in place (recursing into `List` items). Errors name the object.
pub fn inject_value(
    doc: &mut Value,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
    reports: &mut Vec<Report>,
) -> Result<(), (String, String)> {
    let Some(obj) = doc.as_object() else {
        return Err((
            "not a mapping".into(),
            "a Kubernetes object must be a YAML mapping".into(),
        ));
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let what = format!("{}/{name}", kind.to_ascii_lowercase());
    if kind == "List" || (kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array)) {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                inject_value(item, ns_annotations, cfg, reports)
                    .map_err(|(w, r)| (format!("{what} item {i}: {w}"), r))?;
            }
        }
        return Ok(());
    }
    let Some(prefix) = template_pointer(kind) else {
        return Ok(());
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (template, owner) = if prefix.is_empty() {
        // A Pod: its metadata and spec are the "template".
        let meta = doc.get("metadata").cloned();
        let spec = doc.get("spec").cloned();
        let t = serde_json::json!({"metadata": meta, "spec": spec});
        let pod_meta = meta_of(doc).map_err(|e| (what.clone(), e))?;
        (t, Owner::of_pod(&pod_meta))
    } else {
        let t = doc.pointer(prefix).cloned().ok_or_else(|| {
            (
                what.clone(),
                format!("a {kind} needs a pod template at {prefix}"),
            )
        })?;
        (
            t,
            Some(Owner {
                kind: kind.to_string(),
                name: name.clone(),
            }),
        )
    };
    let template: PodTemplateSpec = serde_json::from_value(template)
        .map_err(|e| (what.clone(), format!("invalid pod template: {e}")))?;
    let outcome = patch::template(
        &template,
        prefix,
        namespace.as_deref(),
        owner,
        ns_annotations,
        cfg,
        Options { explicit: true },
    );
    match outcome {
        Outcome::Skip(reason) => reports.push(Report {
            what,
            document: 0,
            line: 0,
            outcome: ReportOutcome::Skipped(reason),
        }),
        Outcome::Inject { patch, warnings } => {
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| (what.clone(), format!("internal: bad patch: {e}")))?;
            json_patch::patch(doc, &patch).map_err(|e| {
                (
                    what.clone(),
                    format!("internal: the patch does not apply: {e}"),
                )
            })?;
            reports.push(Report {
                what,
                document: 0,
                line: 0,
                outcome: ReportOutcome::Injected { warnings },
            });
        }
    }
    Ok(())
}

fn meta_of(
    doc: &Value,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, String> {
    match doc.get("metadata") {
        None => Ok(Default::default()),
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| format!("invalid metadata: {e}")),
    }
}

/// Parses multi-document YAML into JSON values as kubectl reads them (empty documents
/// dropped); any document that cannot be read is an error.
pub fn parse_yaml(input: &str) -> Result<Vec<Value>, InjectError> {
    let mut out = Vec::new();
    for (i, doc) in crate::yaml::split(input).iter().enumerate() {
        let v = crate::yaml::parse(doc)
            .map_err(|e| InjectError::Yaml(format!("document {i} (line {}): {e}", doc.line)))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Writes documents as multi-document YAML.
pub fn to_yaml(docs: &[Value]) -> Result<String, InjectError> {
    serde_saphyr::to_string_multiple(docs).map_err(|e| InjectError::Write(e.to_string()))
}
