//! Policies from the policy service, as the proxy converts them: the input decoded (prost) as
//! an inbound `Server` and as an `OutboundPolicy`; what converts is asked a few decisions on
//! fixed connections and requests (authorization, rate limit, route and backend selection,
//! header edits, retry budget).

#![no_main]

use http::{HeaderValue, Method, Request, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use linkerd_proxy::{
    http::matching::RouteRequest,
    inbound::policy::{HttpDecision, ServerPolicy},
    metrics::{Metrics, Tls},
    outbound::policy::{Decision, OutboundPolicy},
};
use prost::Message;
use proto::api::{inbound, outbound};
use std::{net::IpAddr, sync::Arc};

const CLIENT_ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn clients() -> [(IpAddr, Tls); 4] {
    [
        ([127, 0, 0, 1].into(), Tls::None("loopback")),
        (
            [10, 1, 2, 3].into(),
            Tls::Established {
                peer_id: Some(Arc::from(CLIENT_ID)),
            },
        ),
        ([192, 168, 7, 9].into(), Tls::Established { peer_id: None }),
        (
            "fd00::7".parse().expect("an address"),
            Tls::None("no_tls_from_remote"),
        ),
    ]
}

/// Requests with the authority the proxy would match on.
fn requests() -> Vec<(Option<&'static str>, Request<()>)> {
    let req = |method: Method, target: &str, headers: &[(&'static str, &'static str)]| {
        let mut r = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            r = r.header(*name, HeaderValue::from_static(value));
        }
        r.body(()).expect("a valid request")
    };
    vec![
        (
            Some("web.emojivoto.svc.cluster.local"),
            req(Method::GET, "/", &[]),
        ),
        (
            Some("web:8080"),
            req(
                Method::POST,
                "/api/vote?choice=doughnut&x=1",
                &[("x-canary", "true")],
            ),
        ),
        (None, req(Method::GET, "/ready", &[])),
        (Some("[fd00::1]:99999"), req(Method::PUT, "/api/", &[])),
        (
            Some("10.0.0.1:8080"),
            req(
                Method::POST,
                "/emojivoto.v1.VotingService/Vote",
                &[("content-type", "application/grpc"), ("x-user", "alice")],
            ),
        ),
    ]
}

fn inbound_decisions(policy: &ServerPolicy) {
    let _ = policy.requires_http();
    for (ip, tls) in clients() {
        let _ = policy.authorize_tcp(ip, &tls);
        for (host, req) in requests() {
            let decision = policy.authorize_http(ip, &tls, &RouteRequest::new(&req, host));
            if decision == HttpDecision::Allow
                && let Some(rl) = &policy.rate_limit
            {
                let _ = rl.admit(&tls);
            }
        }
    }
}

fn outbound_decisions(policy: &OutboundPolicy) {
    let _ = policy.is_http();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        for (host, req) in requests() {
            let route_req = RouteRequest::new(&req, host);
            let Some(rule) = policy.select(version, &route_req) else {
                continue;
            };
            match rule.decide() {
                Decision::Forward(rule, i) => {
                    let mut h = req.headers().clone();
                    rule.edit_request(i, &mut h);
                    rule.edit_response(i, &mut h);
                }
                Decision::Redirect(rule, redirect) => {
                    for scheme in [None, Some("https")] {
                        let _ = redirect.location(rule, &route_req, scheme);
                    }
                }
                Decision::Fail(_) | Decision::NoRoute => {}
            }
            if let Some(i) = rule.pick_backend() {
                assert!(
                    i < rule.backends.len(),
                    "backend {i} of {}",
                    rule.backends.len()
                );
            }
            if let Some(retry) = &rule.retry {
                let _ = retry.retryable(StatusCode::SERVICE_UNAVAILABLE, None);
                let _ = retry.retryable(StatusCode::OK, Some(14));
                retry.budget.deposit();
                let _ = retry.budget.withdraw();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let metrics = Metrics::new();
    if let Ok(server) = inbound::Server::decode(data)
        && let Ok(policy) = ServerPolicy::from_api(server, &metrics)
    {
        inbound_decisions(&policy);
    }
    if let Ok(p) = outbound::OutboundPolicy::decode(data)
        && let Ok(policy) = OutboundPolicy::from_api(p, &metrics)
    {
        outbound_decisions(&policy);
    }
    // Rendering the counters the policies registered must work too.
    let mut text = String::new();
    metrics.encode(&mut text);
});
