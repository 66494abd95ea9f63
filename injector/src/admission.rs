//! AdmissionReview v1 in, AdmissionReview v1 out (kube's admission types).
//!
//! Pod creation is never blocked: a pod that cannot be injected (bad object, failed namespace
//! lookup, bad patch) is admitted unchanged, with a warning for the client and a log line,
//! which is what `failurePolicy: Ignore` would do anyway, minus the API server's timeout.

use crate::{
    config::InjectConfig,
    patch::{self, Options, Outcome},
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use std::collections::BTreeMap;

/// At most this much body is read (as Linkerd's injector does).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// Why a request body is not a usable AdmissionReview (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

/// What happened to one request, for metrics and logs.
#[derive(Clone, Debug, PartialEq)]
pub enum Handled {
    Injected,
    Skipped(patch::SkipReason),
    /// Admitted unchanged because something went wrong; the message says what.
    Failed(String),
}

/// Decodes the body and checks that it carries a request with a uid.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, DecodeError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let req: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| DecodeError::NoRequest)?;
    if req.uid.trim().is_empty() {
        return Err(DecodeError::NoUid);
    }
    Ok(req)
}

/// The namespace a request is for (the object's own metadata often lacks it on CREATE).
pub fn namespace(req: &AdmissionRequest<DynamicObject>) -> Option<&str> {
    req.namespace.as_deref().filter(|n| !n.is_empty())
}

/// Decides and builds the response. Always admits.
pub fn handle(
    req: &AdmissionRequest<DynamicObject>,
    ns_annotations: Result<&BTreeMap<String, String>, String>,
    cfg: &InjectConfig,
) -> (AdmissionResponse, Handled) {
    let rsp = AdmissionResponse::from(req);
    let fail = |rsp: AdmissionResponse, msg: String| {
        let mut rsp = rsp;
        rsp.warnings = Some(vec![format!("linkerd-proxy-injector: not injected: {msg}")]);
        (rsp, Handled::Failed(msg))
    };
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        let what = format!("kind {}", req.kind.kind);
        return (rsp, Handled::Skipped(patch::SkipReason::Unsupported(what)));
    }
    if req.operation != Operation::Create {
        let what = format!("operation {:?}", req.operation);
        return (rsp, Handled::Skipped(patch::SkipReason::Unsupported(what)));
    }
    let Some(obj) = &req.object else {
        return fail(rsp, "the request has no object".into());
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return fail(rsp, format!("the object is not a valid Pod: {e}")),
    };
    let ns_annotations = match ns_annotations {
        Ok(a) => a,
        Err(e) => return fail(rsp, e),
    };
    match patch::pod(
        &pod,
        namespace(req),
        ns_annotations,
        cfg,
        Options::default(),
    ) {
        Outcome::Skip(reason) => (rsp, Handled::Skipped(reason)),
        Outcome::Inject { patch, warnings } => {
            let patch: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(e) => return fail(rsp, format!("internal: bad patch: {e}")),
            };
            match rsp.clone().with_patch(patch) {
                Ok(mut r) => {
                    if !warnings.is_empty() {
                        r.warnings = Some(warnings);
                    }
                    (r, Handled::Injected)
                }
                Err(e) => fail(rsp, format!("internal: cannot serialize the patch: {e}")),
            }
        }
    }
}

/// The response body: the same AdmissionReview kind and version, with `response` set and
/// the patch as a base64 string (Go's encoding of `[]byte`, which the API server expects;
/// kube-core would serialize the bytes as an array of numbers).
pub fn encode(rsp: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let patch = rsp.patch.clone();
    let mut review = rsp.into_review();
    if review.types.api_version.is_empty() {
        review.types.api_version = "admission.k8s.io/v1".into();
        review.types.kind = "AdmissionReview".into();
    }
    let mut value = serde_json::to_value(&review)?;
    if let (Some(patch), Some(r)) = (patch, value.get_mut("response")) {
        r["patch"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&value)
}
