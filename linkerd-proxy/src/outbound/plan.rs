//! Deciding where an outbound request goes, before anything is sent: the destination's policy
//! (its route, a fault or redirect that answers at once, a backend drawn by weight), and an
//! endpoint of that backend.

use super::{
    http::{Dst, Http},
    policy::{BackendTarget, Decision, Filter, PolicyWatch, Rule},
};
use crate::{
    balance::{Accrual, Target, target_for},
    http::{ProxyError, matching::RouteRequest},
    lock,
    metrics::RouteCounters,
};
use http::{HeaderValue, Request, uri};
use hyper::body::Incoming;
use std::sync::Arc;

/// Where a request routed by an outbound policy goes.
#[derive(Debug)]
pub(crate) struct Plan {
    pub rule: Arc<Rule>,
    pub backend: usize,
    pub accrual: Option<Accrual>,
}

impl Plan {
    /// Each attempt's own timeout: the backend's, else the retry's.
    pub(crate) fn attempt_timeout(&self) -> Option<std::time::Duration> {
        self.rule.backends[self.backend]
            .timeout
            .or(self.rule.retry.as_ref()?.timeout)
    }
}

impl Http {
    /// The outbound policy's plan for a request: `None` when its destination has no policy
    /// (or an opaque one); an error when the policy answers it (no route, an injected fault,
    /// a redirect).
    pub(super) async fn plan(
        &self,
        req: &mut Request<Incoming>,
        authority: &HeaderValue,
        grpc: bool,
    ) -> Result<Option<Plan>, ProxyError> {
        if !self.shared.policies.is_enabled() {
            return Ok(None);
        }
        let Some(watch) = self.policy_watch(req, authority) else {
            return Ok(None);
        };
        let Some(policy) = watch.current().await.filter(|p| p.is_http()) else {
            return Ok(None);
        };
        let host = authority.to_str().ok().filter(|h| !h.is_empty());
        let Some(rule) = policy.select(req.version(), &RouteRequest::new(req, host)) else {
            return Err(ProxyError::NoRoute);
        };
        RouteCounters::inc(&rule.counters.requests);
        match rule.decide() {
            Decision::Forward(rule, backend) => {
                rule.edit_request(backend, req.headers_mut());
                if let Some(r) = &rule.retry {
                    r.budget.deposit();
                }
                Ok(Some(Plan {
                    rule: rule.clone(),
                    backend,
                    accrual: policy.accrual,
                }))
            }
            Decision::NoRoute => Err(ProxyError::NoRoute),
            Decision::Redirect(rule, r) => {
                let view = RouteRequest::new(req, host);
                match r.location(rule, &view, req.uri().scheme_str()) {
                    Some(location) => Err(ProxyError::Redirect {
                        status: r.status,
                        location,
                    }),
                    None => Err(ProxyError::Unsupported("the redirect has no host to go to")),
                }
            }
            Decision::Fail(f) => {
                RouteCounters::inc(&rule.counters.faults_injected);
                Err(match f {
                    Filter::Fail {
                        status,
                        grpc: code,
                        message,
                        ..
                    } => ProxyError::Injected {
                        status: *status,
                        grpc: code.or(grpc.then_some(14)),
                        message: message.clone(),
                    },
                    _ => {
                        ProxyError::Unsupported("the route has a filter this proxy does not apply")
                    }
                })
            }
        }
    }

    /// The policy watch for a request's destination: its name when discovery covers it,
    /// otherwise (transparent mode) the address the application dialled.
    fn policy_watch(
        &self,
        req: &Request<Incoming>,
        authority: &HeaderValue,
    ) -> Option<Arc<PolicyWatch>> {
        let https = req.uri().scheme() == Some(&uri::Scheme::HTTPS);
        {
            // The connection's last authority, already looked up: one lock.
            let last = lock(&self.last);
            if let Some(d) = last.as_ref()
                && d.authority == *authority
                && let Some(policy) = &d.policy
            {
                return policy.clone();
            }
        }
        self.destination(authority, self.default_port(https));
        let mut last = lock(&self.last);
        let d = last.as_mut()?;
        let covered = d
            .name
            .as_deref()
            .filter(|n| self.shared.discovery.as_ref().is_some_and(|c| c.covers(n)));
        let policy = match (covered, self.dst) {
            (Some(name), _) => self.shared.policies.get(name),
            (None, Dst::OrigDst(addr)) => self.shared.policies.get(&addr.to_string()),
            (None, Dst::Proxy) => None,
        };
        d.policy = Some(policy.clone());
        policy
    }

    /// An endpoint of the plan's backend.
    pub(super) async fn backend_target(&self, plan: &Plan) -> Result<Target, ProxyError> {
        let backend = &plan.rule.backends[plan.backend];
        match &backend.target {
            BackendTarget::Forward(ep) => Ok(Target::Direct(ep.clone())),
            BackendTarget::Balancer(path) => {
                let balancer = backend
                    .balancer
                    .get_or_init(|| self.shared.balancers.get(path));
                let fallback = match self.dst {
                    Dst::OrigDst(addr) => Some(addr),
                    Dst::Proxy => None,
                };
                Ok(target_for(balancer.as_deref(), path, fallback).await?)
            }
        }
    }
}
