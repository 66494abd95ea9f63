//! `mesh inject`: the webhook's patch applied offline to multi-document YAML.
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs are injected (their pod template, with the same patch the webhook would send for
//! the pod), `List`s are walked, and every other document passes through unchanged.

use crate::{
    config::InjectConfig,
    patch::{self, Options, Outcome, Owner},
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use std::collections::BTreeMap;

/// A document that could not be read or injected; `index` counts from 0 in input order.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot parse the YAML: {0}")]
    Yaml(String),
    #[error("document {index} ({what}): {reason}")]
    Document {
        index: usize,
        what: String,
        reason: String,
    },
    #[error("cannot write the YAML: {0}")]
    Write(String),
}

/// What happened to one workload (for the summary `mesh inject` prints on stderr).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `deployment/web`.
    pub what: String,
    pub outcome: ReportOutcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReportOutcome {
    Injected { warnings: Vec<String> },
    Skipped(patch::SkipReason),
}

/// Injects every workload in `input` (one or more YAML documents) and returns the documents
/// as YAML, plus a report per workload. `ns_annotations` stands in for the namespace's
/// annotations (`mesh inject` has no cluster to ask).
pub fn inject_yaml(
    input: &str,
    ns_annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(input).map_err(|e| InjectError::Yaml(e.to_string()))?;
    let mut out = Vec::with_capacity(docs.len());
    let mut reports = Vec::new();
    for (index, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        inject_value(&mut doc, ns_annotations, cfg, &mut reports).map_err(|(what, reason)| {
            InjectError::Document {
                index,
                what,
                reason,
            }
        })?;
        out.push(doc);
    }
    let yaml =
        serde_saphyr::to_string_multiple(&out).map_err(|e| InjectError::Write(e.to_string()))?;
    Ok((yaml, reports))
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

/// Parses multi-document YAML into JSON values (empty documents dropped).
pub fn parse_yaml(input: &str) -> Result<Vec<Value>, InjectError> {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(input).map_err(|e| InjectError::Yaml(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Writes documents as multi-document YAML.
pub fn to_yaml(docs: &[Value]) -> Result<String, InjectError> {
    serde_saphyr::to_string_multiple(docs).map_err(|e| InjectError::Write(e.to_string()))
}
