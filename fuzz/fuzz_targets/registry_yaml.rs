//! The registry file (the input as UTF-8 text), as the destination service and the policy
//! service read it. What the policy service accepts is turned into the policies it would
//! serve, for every workload and service port the file names, and each of those must be a
//! policy the proxy accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd_destination::IdentityConfig;
use linkerd_policy::{inbound, model::ClusterConfig, model::State, outbound, resources::Port};
use linkerd_proxy::metrics::Metrics;
use std::collections::BTreeSet;

/// Bounds the work per input: a file with thousands of ports is not more interesting.
const MAX_PORTS: usize = 16;
const MAX_OBJECTS: usize = 16;

fn ports(state: &State) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = [80, 8080].into();
    for wl in state.workloads.values() {
        ports.extend(wl.named_ports.values());
        ports.extend(wl.probes.keys());
    }
    for srv in state.servers.values() {
        if let Port::Number(n) = srv.spec.port {
            ports.insert(n);
        }
    }
    for svc in state.services.values() {
        ports.extend(&svc.ports);
        ports.extend(&svc.opaque_ports);
    }
    ports.into_iter().take(MAX_PORTS).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = linkerd_destination::registry::parse(text, &IdentityConfig::default());

    let cfg = ClusterConfig::default();
    let Ok(state) = linkerd_policy::registry::parse(text, &cfg) else {
        return;
    };
    let metrics = Metrics::new();
    let ports = ports(&state);
    for key in state.workloads.keys().take(MAX_OBJECTS) {
        for &port in &ports {
            let server = inbound::server(&state, &cfg, key, port).expect("a known workload");
            if let Err(e) =
                linkerd_proxy::inbound::policy::ServerPolicy::from_api(server.clone(), &metrics)
            {
                panic!("the proxy refuses the policy service's {server:?}: {e}");
            }
        }
    }
    for key in state.services.keys().take(MAX_OBJECTS) {
        for &port in &ports {
            let policy = outbound::policy(&state, &cfg, key, port).expect("a known service");
            if let Err(e) =
                linkerd_proxy::outbound::policy::OutboundPolicy::from_api(policy.clone(), &metrics)
            {
                panic!("the proxy refuses the policy service's {policy:?}: {e}");
            }
        }
    }
});
