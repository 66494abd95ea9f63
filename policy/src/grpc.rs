//! `io.linkerd.proxy.inbound.InboundServerPolicies` and
//! `io.linkerd.proxy.outbound.OutboundPolicies` over tonic: the only place requests are parsed
//! and errors become `tonic::Status`.

use crate::{
    index::Index,
    metrics::{Api, Metrics, WatcherGuard},
    model::Key,
};
use proto::{
    api::{
        inbound::{self, PortSpec, inbound_server_policies_server},
        outbound::{OutboundPolicy, TrafficSpec, outbound_policies_server, traffic_spec},
    },
    id::is_dns_label,
    net::Authority,
};
use serde::Deserialize;
use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio_stream::{Stream, wrappers::WatchStream};
use tonic::{Request, Response, Status};

/// Both services over one index.
#[derive(Clone, Debug)]
pub struct PolicyGrpc {
    index: Arc<Index>,
    metrics: Arc<Metrics>,
}

/// What an outbound request targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Service(Key, u16),
    Addr(SocketAddr),
}

impl PolicyGrpc {
    pub fn new(index: Arc<Index>, metrics: Arc<Metrics>) -> Self {
        Self { index, metrics }
    }

    pub fn inbound_server(
        &self,
    ) -> inbound_server_policies_server::InboundServerPoliciesServer<Self> {
        inbound_server_policies_server::InboundServerPoliciesServer::new(self.clone())
    }

    pub fn outbound_server(&self) -> outbound_policies_server::OutboundPoliciesServer<Self> {
        outbound_policies_server::OutboundPoliciesServer::new(self.clone())
    }

    fn port_spec(&self, spec: &PortSpec) -> Result<(Key, u16), Status> {
        let wl = parse_workload(&spec.workload)?;
        let port = u16::try_from(spec.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("port {} is out of range", spec.port))
            })?;
        Ok((wl, port))
    }

    fn target(&self, spec: &TrafficSpec) -> Result<(Key, u16), Status> {
        let target = match &spec.target {
            Some(traffic_spec::Target::Authority(a)) => {
                parse_authority(a, &self.index.config().cluster_domain)?
            }
            Some(traffic_spec::Target::Addr(a)) => Target::Addr(
                proto::net::to_socket_addr(a)
                    .map_err(|e| Status::invalid_argument(format!("bad address: {e}")))?,
            ),
            None => return Err(Status::invalid_argument("no target")),
        };
        match target {
            Target::Service(key, port) => Ok((key, port)),
            Target::Addr(addr) => match self.index.service_by_ip(addr.ip()) {
                Some(key) => Ok((key, addr.port())),
                None => Err(Status::not_found(format!(
                    "no service has address {}",
                    addr.ip()
                ))),
            },
        }
    }
}

/// `{"ns": "...", "pod": "..."}` (what the injector writes to `LINKERD2_PROXY_POLICY_WORKLOAD`)
/// or the older `ns:pod`.
pub fn parse_workload(s: &str) -> Result<Key, Status> {
    #[derive(Deserialize)]
    struct Json {
        ns: String,
        #[serde(default)]
        pod: Option<String>,
        #[serde(default)]
        external_workload: Option<String>,
    }
    let bad = |why: &str| Status::invalid_argument(format!("bad workload {s:?}: {why}"));
    let (ns, pod) = if s.trim_start().starts_with('{') {
        let j: Json = serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?;
        match (j.pod, j.external_workload) {
            (Some(pod), None) => (j.ns, pod),
            (None, Some(_)) => return Err(bad("external workloads are not supported")),
            _ => return Err(bad("give exactly one of pod and external_workload")),
        }
    } else {
        let (ns, pod) = s
            .split_once(':')
            .ok_or_else(|| bad("not JSON nor ns:pod"))?;
        (ns.to_string(), pod.to_string())
    };
    if !is_dns_label(&ns) || pod.is_empty() || pod.len() > 253 {
        return Err(bad("not a namespace and a pod name"));
    }
    Ok((ns, pod))
}

/// `<svc>.<ns>.svc.<domain>[:port]` (port 80 by default), or an IP address.
pub fn parse_authority(a: &str, cluster_domain: &str) -> Result<Target, Status> {
    let auth = Authority::parse_with_default(a, 80)
        .map_err(|e| Status::invalid_argument(format!("bad authority {a:?}: {e}")))?;
    let host = auth.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, auth.port)));
    }
    let domain = cluster_domain.trim_matches('.');
    let name = auth
        .host
        .strip_suffix(&format!(".svc.{domain}"))
        .or_else(|| auth.host.strip_suffix(".svc"))
        .ok_or_else(|| {
            Status::not_found(format!("{a:?} is not <service>.<namespace>.svc.{domain}"))
        })?;
    match name.split('.').collect::<Vec<_>>()[..] {
        [svc, ns] if is_dns_label(svc) && is_dns_label(ns) => Ok(Target::Service(
            (ns.to_string(), svc.to_string()),
            auth.port,
        )),
        _ => Err(Status::not_found(format!(
            "{a:?} is not <service>.<namespace>.svc.{domain}"
        ))),
    }
}

#[tonic::async_trait]
impl inbound_server_policies_server::InboundServerPolicies for PolicyGrpc {
    type WatchPortStream = PolicyStream<inbound::Server>;

    async fn get_port(&self, req: Request<PortSpec>) -> Result<Response<inbound::Server>, Status> {
        let result = self.port_spec(req.get_ref()).and_then(|(wl, port)| {
            self.index
                .inbound(&wl, port)
                .ok_or_else(|| unknown_workload(&wl))
        });
        self.metrics.lookup(Api::InboundGet, result.as_ref().err());
        result.map(Response::new)
    }

    async fn watch_port(
        &self,
        req: Request<PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let result = self.port_spec(req.get_ref()).and_then(|(wl, port)| {
            let rx = self
                .index
                .watch_inbound(&wl, port)
                .ok_or_else(|| unknown_workload(&wl))?;
            Ok(PolicyStream {
                rx: WatchStream::new(rx),
                done: false,
                guard: self.metrics.watcher(Api::InboundWatch),
            })
        });
        self.metrics
            .lookup(Api::InboundWatch, result.as_ref().err());
        if let Err(e) = &result {
            tracing::debug!(workload = %req.get_ref().workload, error = %e.message(), "WatchPort refused");
        }
        result.map(Response::new)
    }
}

fn unknown_workload(wl: &Key) -> Status {
    Status::not_found(format!("workload {}/{} is not known", wl.0, wl.1))
}

#[tonic::async_trait]
impl outbound_policies_server::OutboundPolicies for PolicyGrpc {
    type WatchStream = PolicyStream<OutboundPolicy>;

    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status> {
        let result = self.target(req.get_ref()).and_then(|(key, port)| {
            self.index
                .outbound(&key, port)
                .ok_or_else(|| unknown_service(&key))
        });
        self.metrics.lookup(Api::OutboundGet, result.as_ref().err());
        result.map(Response::new)
    }

    async fn watch(
        &self,
        req: Request<TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let result = self.target(req.get_ref()).and_then(|(key, port)| {
            let rx = self
                .index
                .watch_outbound(&key, port)
                .ok_or_else(|| unknown_service(&key))?;
            Ok(PolicyStream {
                rx: WatchStream::new(rx),
                done: false,
                guard: self.metrics.watcher(Api::OutboundWatch),
            })
        });
        self.metrics
            .lookup(Api::OutboundWatch, result.as_ref().err());
        result.map(Response::new)
    }
}

fn unknown_service(key: &Key) -> Status {
    Status::not_found(format!("service {}/{} is not known", key.0, key.1))
}

// === impl PolicyStream ===

/// A watch stream: the current message first, then each change; `NOT_FOUND` (and the end)
/// when the workload or service goes away; the end when the server shuts down.
#[derive(Debug)]
pub struct PolicyStream<T> {
    rx: WatchStream<Option<Arc<T>>>,
    done: bool,
    guard: WatcherGuard,
}

impl<T: Clone + Send + Sync + 'static> Stream for PolicyStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.rx).poll_next(cx) {
            Poll::Ready(Some(Some(v))) => {
                self.guard.sent();
                Poll::Ready(Some(Ok((*v).clone())))
            }
            Poll::Ready(Some(None)) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::not_found("the target no longer exists"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads() {
        let k = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            parse_workload(r#"{"ns":"emojivoto","pod":"web-0"}"#).unwrap(),
            k("emojivoto", "web-0")
        );
        assert_eq!(
            parse_workload("emojivoto:web-0").unwrap(),
            k("emojivoto", "web-0")
        );
        for bad in [
            "",
            "web",
            r#"{"ns":"x"}"#,
            r#"{"ns":"x","external_workload":"e"}"#,
            "Bad_NS:p",
            "{",
        ] {
            assert_eq!(
                parse_workload(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn authorities() {
        let t = parse_authority("web.emojivoto.svc.cluster.local:8080", "cluster.local").unwrap();
        assert_eq!(t, Target::Service(("emojivoto".into(), "web".into()), 8080));
        let t = parse_authority("web.emojivoto.svc.cluster.local", "cluster.local").unwrap();
        assert_eq!(t, Target::Service(("emojivoto".into(), "web".into()), 80));
        assert_eq!(
            parse_authority("10.0.0.1:80", "cluster.local").unwrap(),
            Target::Addr("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_authority("example.com:443", "cluster.local")
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
    }
}
