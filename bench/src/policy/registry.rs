//! The registry file the policy scenarios' destination and policy services both read.

use std::{collections::BTreeMap, net::SocketAddr};

use super::{
    AUTHN_NAME, AUTHZ_NAME, CLIENT_POD, LIMITED_AUTHZ, LIMITED_SERVER, NAMESPACE, RATE_LIMIT,
    SERVER_NAME, Server,
};
use crate::mesh::{CLIENT_ID, SERVER_ID};

/// The registry both services read: a Service per case on port 80 whose endpoints are the
/// server proxies' inbound listeners, and the policy sections. `upstream_port` is the port the
/// server proxies deliver to, which is the port their inbound policy is for.
pub fn registry_yaml(inbound: &BTreeMap<Server, SocketAddr>, upstream_port: u16) -> String {
    let endpoint = |s: Server| {
        let addr = inbound
            .get(&s)
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        format!(
            "      - {{ip: {}, port: {}, identity: {SERVER_ID}, labels: {{pod: {}, app: {}}}}}\n",
            addr.ip(),
            addr.port(),
            s.pod(),
            s.app()
        )
    };
    let services: [(&str, Server); 10] = [
        ("open", Server::Open),
        ("route", Server::Open),
        ("authz", Server::Authz),
        ("route-authz", Server::Authz),
        ("split", Server::Open),
        ("split-a", Server::Open),
        ("split-b", Server::B),
        ("accrual", Server::Open),
        ("fault", Server::Open),
        ("limited", Server::Limited),
    ];
    let mut out = String::from("services:\n");
    for (name, server) in services {
        out.push_str(&format!(
            "  - name: {name}\n    namespace: {NAMESPACE}\n    ports: [80]\n    endpoints:\n"
        ));
        out.push_str(&endpoint(server));
    }
    let retry = "annotations: {retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\"}";
    out.push_str(&format!(
        "workloads:
  - {{name: {CLIENT_POD}, namespace: {NAMESPACE}, serviceAccount: client, labels: {{app: client}}}}
serviceAnnotations:
  - name: accrual
    namespace: {NAMESPACE}
    annotations: {{balancer.linkerd.io/failure-accrual: consecutive}}
servers:
  - name: {SERVER_NAME}
    namespace: {NAMESPACE}
    spec: {{podSelector: {{matchLabels: {{app: {authz_app}}}}}, port: {upstream_port}}}
  - name: {LIMITED_SERVER}
    namespace: {NAMESPACE}
    spec: {{podSelector: {{matchLabels: {{app: {limited_app}}}}}, port: {upstream_port}}}
meshTLSAuthentications:
  - name: {AUTHN_NAME}
    namespace: {NAMESPACE}
    spec: {{identities: [{CLIENT_ID}]}}
authorizationPolicies:
  - name: {AUTHZ_NAME}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {SERVER_NAME}}}
      requiredAuthenticationRefs:
        - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: {AUTHN_NAME}}}
  - name: {LIMITED_AUTHZ}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {LIMITED_SERVER}}}
      requiredAuthenticationRefs:
        - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: {AUTHN_NAME}}}
httpLocalRateLimitPolicies:
  - name: {RATE_LIMIT}
    namespace: {NAMESPACE}
    spec:
      targetRef: {{group: policy.linkerd.io, kind: Server, name: {LIMITED_SERVER}}}
      total: {{requestsPerSecond: 1000000}}
      identity: {{requestsPerSecond: 1000000}}
httpRoutes:
  - name: bench-retry
    namespace: {NAMESPACE}
    {retry}
    spec:
      parentRefs: [{{kind: Service, name: route, port: 80}}]
      rules: [{{timeouts: {{request: 5s}}}}]
  - name: bench-retry-authz
    namespace: {NAMESPACE}
    {retry}
    spec:
      parentRefs: [{{kind: Service, name: route-authz, port: 80}}]
      rules: [{{timeouts: {{request: 5s}}}}]
  - name: bench-split
    namespace: {NAMESPACE}
    spec:
      parentRefs: [{{kind: Service, name: split, port: 80}}]
      rules:
        - backendRefs:
            - {{name: split-a, port: 80, weight: 90}}
            - {{name: split-b, port: 80, weight: 10}}
  - name: bench-fault0
    namespace: {NAMESPACE}
    spec:
      parentRefs: [{{kind: Service, name: fault, port: 80}}]
      rules:
        - filters: [{{type: FailureInjector, failureInjector: {{status: 503, percent: 0}}}}]
",
        authz_app = Server::Authz.app(),
        limited_app = Server::Limited.app(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Case;

    #[test]
    fn registry_names_every_case_service() {
        let inbound = Server::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16))))
            .collect();
        let y = registry_yaml(&inbound, 8080);
        for c in Case::ALL {
            assert!(
                y.contains(&format!("  - name: {}\n", c.service())),
                "{}",
                c.service()
            );
        }
        assert!(y.contains("port: 8080}"));
        assert!(y.contains("{ip: 127.0.0.1, port: 5001, identity: server.bench"));
    }
}
