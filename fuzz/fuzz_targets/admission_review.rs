//! An AdmissionReview body as the injector's webhook receives it: decoded, then handled as the
//! webhook does (the pod decision and its JSON Patch) for a namespace that enables injection
//! and one that says nothing. A patch the injector returns must apply to the pod it was made
//! for, leave a valid Pod, and be final: the patched pod is not injected again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd_injector::{
    admission,
    config::InjectConfig,
    patch::{self, Options, Outcome, SkipReason},
};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIBfuzz\n-----END CERTIFICATE-----\n";

fn config() -> &'static InjectConfig {
    static CFG: OnceLock<InjectConfig> = OnceLock::new();
    CFG.get_or_init(|| InjectConfig::new(ANCHORS))
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = admission::decode(data) else {
        return;
    };
    let cfg = config();
    let enabled = BTreeMap::from([("linkerd.io/inject".to_string(), "enabled".to_string())]);
    for ns in [BTreeMap::new(), enabled] {
        let (rsp, _) = admission::handle(&req, Ok(&ns), cfg);
        assert!(rsp.allowed, "the injector never blocks a pod");
        let _ = admission::encode(rsp).expect("a response always encodes");

        // The pure patch on the pod, as `handle` makes it, applied.
        let Some(obj) = &req.object else { continue };
        let Ok(mut pod_json) = serde_json::to_value(obj) else {
            continue;
        };
        let Ok(pod) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod_json.clone())
        else {
            continue;
        };
        let ns_name = admission::namespace(&req);
        let Outcome::Inject { patch: ops, .. } =
            patch::pod(&pod, ns_name, &ns, cfg, Options::default())
        else {
            continue;
        };
        let ops: json_patch::Patch =
            serde_json::from_value(ops).expect("the injector's patch is RFC 6902");
        if let Err(e) = json_patch::patch(&mut pod_json, &ops) {
            panic!("the patch does not apply to its pod: {e}");
        }
        let patched: k8s_openapi::api::core::v1::Pod = match serde_json::from_value(pod_json) {
            Ok(p) => p,
            Err(e) => panic!("the patched pod is not a Pod: {e}"),
        };
        match patch::pod(&patched, ns_name, &ns, cfg, Options::default()) {
            Outcome::Skip(SkipReason::AlreadyInjected) => {}
            other => panic!("a patched pod is injected again: {other:?}"),
        }
    }
});
