//! `io.linkerd.proxy.destination.Destination` over tonic: `Get` and `GetProfile`. The only
//! place domain values become proto messages and errors become `tonic::Status`.

use crate::{
    index::{Diff, EndpointMap, Index, Snapshot},
    metrics::{Api, Metrics, WatcherGuard},
    model::{Endpoint, ProtocolHint, ServiceKey},
};
use prost::Message;
use proto::{
    api::{
        destination::{
            self as api, AddrSet, DestinationProfile, GetDestination, NoEndpoints, RetryBudget,
            Update, WeightedAddr, WeightedAddrSet, destination_server, http2_client_params,
            protocol_hint, tls_identity, update,
        },
        net::TcpAddress,
    },
    id::is_dns_label,
    net::Authority,
};
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    ops::Bound,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio_stream::{Stream, wrappers::WatchStream};
use tonic::{Request, Response, Status};

/// The size an `Add` message is cut at. A large set goes out in pieces, produced only as
/// fast as the client reads them (each piece is one allocation, freed once h2 has written it:
/// see [`crate::get`]).
pub const MESSAGE_BYTES: usize = 3 * 1024;

/// Addresses per `Remove` message (about 5 KB).
pub const REMOVE_CHUNK: usize = 400;

/// The tonic service.
#[derive(Clone, Debug)]
pub struct DestinationGrpc {
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    cluster_domain: Arc<str>,
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `<svc>.<ns>.svc.<domain>:<port>`, or `<hostname>.<svc>.<ns>.svc.<domain>:<port>`
    /// (one pod of a headless service).
    Service {
        key: ServiceKey,
        port: u16,
        hostname: Option<String>,
    },
    /// `IP:port`.
    Addr(SocketAddr),
}

impl DestinationGrpc {
    pub fn new(index: Arc<Index>, metrics: Arc<Metrics>, cluster_domain: &str) -> Self {
        Self {
            index,
            metrics,
            cluster_domain: cluster_domain.trim_matches('.').into(),
        }
    }

    /// Wraps the service for hyper (or `tonic::transport::Server::add_service`).
    pub fn into_server(self) -> destination_server::DestinationServer<Self> {
        destination_server::DestinationServer::new(self)
    }
}

/// Parses a `GetDestination.path`; the port defaults to 80, as in Linkerd.
pub fn parse_target(path: &str, cluster_domain: &str) -> Result<Target, Status> {
    let auth = Authority::parse_with_default(path, 80)
        .map_err(|e| Status::invalid_argument(format!("bad path {path:?}: {e}")))?;
    let host = auth.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, auth.port)));
    }
    let suffix = format!(".svc.{}", cluster_domain.trim_matches('.'));
    let not_svc = || {
        Status::invalid_argument(format!(
            "{path:?} is not <service>.<namespace>{suffix}[:port]"
        ))
    };
    let name = auth.host.strip_suffix(&suffix).ok_or_else(not_svc)?;
    let labels: Vec<&str> = name.split('.').collect();
    if !labels.iter().all(|l| is_dns_label(l)) {
        return Err(not_svc());
    }
    let (hostname, svc, ns) = match labels[..] {
        [svc, ns] => (None, svc, ns),
        [host, svc, ns] => (Some(host.to_string()), svc, ns),
        _ => return Err(not_svc()),
    };
    Ok(Target::Service {
        key: ServiceKey::new(ns, svc),
        port: auth.port,
        hostname,
    })
}

#[tonic::async_trait]
impl destination_server::Destination for DestinationGrpc {
    type GetStream = EndpointStream;
    type GetProfileStream = ProfileStream;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<EndpointStream>, Status> {
        self.get_stream(req.into_inner()).map(Response::new)
    }

    async fn get_profile(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<ProfileStream>, Status> {
        let path = req.into_inner().path;
        let result = parse_target(&path, &self.cluster_domain).map(|t| self.profile(t));
        self.metrics.lookup(Api::Profile, result.as_ref().err());
        result.map(Response::new)
    }
}

impl DestinationGrpc {
    /// A `Get`: the watch of a service port, or why there is none.
    pub fn get_stream(&self, req: GetDestination) -> Result<EndpointStream, Status> {
        let path = req.path;
        let result = match parse_target(&path, &self.cluster_domain) {
            Ok(Target::Service {
                key,
                port,
                hostname,
            }) => match self.index.watch(&key, port) {
                Some(rx) => Ok(EndpointStream::new(
                    rx,
                    &key,
                    hostname,
                    self.metrics.watcher(Api::Get, &key),
                )),
                // Linkerd's controller answers NOT_FOUND too: the client retries with
                // backoff, and picks the service up once it exists.
                None => Err(Status::not_found(format!("service {key} is not known"))),
            },
            Ok(Target::Addr(_)) => Err(Status::invalid_argument(
                "Get takes a service name, not an IP address",
            )),
            Err(e) => Err(e),
        };
        self.metrics.lookup(Api::Get, result.as_ref().err());
        match &result {
            Ok(_) => tracing::debug!(%path, "Get"),
            Err(e) => tracing::debug!(%path, error = %e.message(), "Get refused"),
        }
        result
    }

    fn profile(&self, target: Target) -> ProfileStream {
        let (key, port) = match target {
            Target::Service { key, port, .. } => (key, port),
            Target::Addr(addr) => match self.index.service_by_cluster_ip(addr.ip()) {
                Some(key) => (key, addr.port()),
                None => {
                    // A pod address: an endpoint profile, or an empty one if unknown.
                    let profile = match self.index.endpoint_at(addr) {
                        Some((_, ep, opaque)) => DestinationProfile {
                            endpoint: Some(weighted_addr(&ep)),
                            opaque_protocol: opaque,
                            retry_budget: Some(default_retry_budget()),
                            ..Default::default()
                        },
                        None => DestinationProfile::default(),
                    };
                    return ProfileStream::fixed(profile, self.index.hold(), self.metrics.clone());
                }
            },
        };
        let rx = self.index.watch_profile(&key, port);
        let guard = self.metrics.watcher(Api::Profile, &key);
        let fqn = key.fqdn(&self.cluster_domain);
        ProfileStream::watching(rx, fqn, guard)
    }
}

// === impl EndpointStream ===

/// A `Get` response stream: diffs computed from the shared topic as the client reads.
#[derive(Debug)]
pub struct EndpointStream {
    rx: WatchStream<Arc<Snapshot>>,
    /// The last snapshot fully sent (what the client has).
    last: Option<Arc<Snapshot>>,
    queue: VecDeque<Work>,
    set_labels: HashMap<String, String>,
    hostname: Option<String>,
    guard: WatcherGuard,
}

/// Messages still to produce for the current snapshot.
#[derive(Debug)]
enum Work {
    /// Every endpoint of a map, from a cursor on.
    AddAll(Arc<EndpointMap>, Option<SocketAddr>),
    Remove(Arc<Diff>, usize),
    Add(Arc<Diff>, usize),
    NoEndpoints(bool),
}

impl EndpointStream {
    fn new(
        rx: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        key: &ServiceKey,
        hostname: Option<String>,
        guard: WatcherGuard,
    ) -> Self {
        let set_labels = HashMap::from([
            ("service".to_string(), key.name.clone()),
            ("namespace".to_string(), key.namespace.clone()),
        ]);
        Self {
            rx: WatchStream::new(rx),
            last: None,
            queue: VecDeque::new(),
            set_labels,
            hostname,
            guard,
        }
    }

    fn wanted(&self, ep: &Endpoint) -> bool {
        self.hostname.is_none() || ep.hostname == self.hostname
    }

    fn is_empty(&self, s: &Snapshot) -> bool {
        match &self.hostname {
            None => s.endpoints.is_empty(),
            Some(_) => !s.endpoints.values().any(|e| self.wanted(e)),
        }
    }

    /// Queues what the client needs to go from `last` to `next`.
    fn plan(&mut self, next: Arc<Snapshot>) {
        let empty = self.is_empty(&next);
        match self.last.take() {
            None if empty => self.queue.push_back(Work::NoEndpoints(next.exists)),
            None => self
                .queue
                .push_back(Work::AddAll(next.endpoints.clone(), None)),
            Some(last) => {
                let diff = if last.version + 1 == next.version {
                    next.diff.clone()
                } else {
                    // Fell behind (or the topic was recreated): diff what it has.
                    Arc::new(Diff::between(&last.endpoints, &next.endpoints))
                };
                self.queue.push_back(Work::Remove(diff.clone(), 0));
                self.queue.push_back(Work::Add(diff, 0));
                if empty && last.exists != next.exists {
                    self.queue.push_back(Work::NoEndpoints(next.exists));
                }
            }
        }
        self.last = Some(next);
    }

    /// The next message from the queue, if any.
    fn next_update(&mut self) -> Option<Update> {
        while let Some(work) = self.queue.pop_front() {
            let (update, rest) = match work {
                Work::NoEndpoints(exists) => {
                    (update::Update::NoEndpoints(NoEndpoints { exists }), None)
                }
                Work::AddAll(map, from) => {
                    let lower = from.map_or(Bound::Unbounded, Bound::Excluded);
                    let mut iter = map.range((lower, Bound::Unbounded));
                    let mut addrs = Vec::new();
                    let mut bytes = 0;
                    let mut more = None;
                    while let Some((addr, ep)) = iter.next() {
                        if self.wanted(ep) {
                            let wa = weighted_addr(ep);
                            bytes += wa.encoded_len() + 4;
                            addrs.push(wa);
                            if bytes >= MESSAGE_BYTES {
                                more = iter.next().map(|_| *addr);
                                break;
                            }
                        }
                    }
                    let rest = more.map(|cursor| Work::AddAll(map.clone(), Some(cursor)));
                    if addrs.is_empty() {
                        continue;
                    }
                    (self.add(addrs), rest)
                }
                Work::Add(diff, at) => {
                    let mut addrs = Vec::new();
                    let mut bytes = 0;
                    let mut next = at;
                    while let Some(e) = diff.add.get(next)
                        && bytes < MESSAGE_BYTES
                    {
                        next += 1;
                        if self.wanted(e) {
                            let wa = weighted_addr(e);
                            bytes += wa.encoded_len() + 4;
                            addrs.push(wa);
                        }
                    }
                    let rest = (next < diff.add.len()).then(|| Work::Add(diff.clone(), next));
                    if addrs.is_empty() {
                        if let Some(r) = rest {
                            self.queue.push_front(r);
                        }
                        continue;
                    }
                    (self.add(addrs), rest)
                }
                Work::Remove(diff, at) => {
                    let eps = &diff.remove[at.min(diff.remove.len())..];
                    let take = eps.len().min(REMOVE_CHUNK);
                    let addrs: Vec<TcpAddress> = eps[..take]
                        .iter()
                        .filter(|e| self.wanted(e))
                        .map(|e| TcpAddress::from(e.addr))
                        .collect();
                    let rest = (take < eps.len()).then(|| Work::Remove(diff.clone(), at + take));
                    if addrs.is_empty() {
                        if let Some(r) = rest {
                            self.queue.push_front(r);
                        }
                        continue;
                    }
                    (update::Update::Remove(AddrSet { addrs }), rest)
                }
            };
            if let Some(r) = rest {
                self.queue.push_front(r);
            }
            return Some(Update {
                update: Some(update),
            });
        }
        None
    }

    fn add(&self, addrs: Vec<WeightedAddr>) -> update::Update {
        update::Update::Add(WeightedAddrSet {
            addrs,
            metric_labels: self.set_labels.clone(),
        })
    }

    /// The next message, when there is one; `None` once the index is closed.
    pub fn poll_update(&mut self, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        loop {
            if let Some(u) = self.next_update() {
                self.guard.sent();
                return Poll::Ready(Some(u));
            }
            // Only look for a newer snapshot once the current one is fully sent.
            match ready!(Pin::new(&mut self.rx).poll_next(cx)) {
                Some(next) => self.plan(next),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// For tonic (`Destination::get`; the server itself answers `Get` through
/// [`crate::get::Routes`]).
impl Stream for EndpointStream {
    type Item = Result<Update, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_update(cx).map(|u| u.map(Ok))
    }
}

// === impl ProfileStream ===

/// A `GetProfile` response stream: the profile of a service port, re-sent when it changes.
#[derive(Debug)]
pub struct ProfileStream {
    rx: Option<WatchStream<Arc<Snapshot>>>,
    fqn: String,
    first: Option<DestinationProfile>,
    last: Option<DestinationProfile>,
    guard: Option<WatcherGuard>,
    metrics: Option<Arc<Metrics>>,
}

impl ProfileStream {
    fn watching(
        rx: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        fqn: String,
        guard: WatcherGuard,
    ) -> Self {
        Self {
            rx: Some(WatchStream::new(rx)),
            fqn,
            first: None,
            last: None,
            guard: Some(guard),
            metrics: None,
        }
    }

    /// One profile, then nothing until the index closes (the stream stays open, as a proxy
    /// expects).
    fn fixed(
        profile: DestinationProfile,
        hold: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            rx: Some(WatchStream::from_changes(hold)),
            fqn: String::new(),
            first: Some(profile),
            last: None,
            guard: None,
            metrics: Some(metrics),
        }
    }

    fn profile(&self, s: &Snapshot) -> DestinationProfile {
        // A service that does not declare the port gets an empty profile, as in Linkerd:
        // the proxy then relies on the policy API.
        if !s.exists || !s.declared {
            return DestinationProfile::default();
        }
        DestinationProfile {
            fully_qualified_name: self.fqn.clone(),
            opaque_protocol: s.opaque,
            retry_budget: Some(default_retry_budget()),
            ..Default::default()
        }
    }
}

impl Stream for ProfileStream {
    type Item = Result<DestinationProfile, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(p) = self.first.take() {
            if let Some(m) = &self.metrics {
                m.profile_sent();
            }
            return Poll::Ready(Some(Ok(p)));
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(None);
            };
            let Some(snapshot) = ready!(Pin::new(rx).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            if self.guard.is_none() {
                // A fixed profile: nothing more to send.
                continue;
            }
            let p = self.profile(&snapshot);
            if self.last.as_ref() == Some(&p) {
                continue;
            }
            self.last = Some(p.clone());
            if let Some(g) = &self.guard {
                g.sent();
            }
            return Poll::Ready(Some(Ok(p)));
        }
    }
}

// === conversions ===

/// Linkerd's default: 20% extra load from retries, at least 10/s, over a 10 s window.
pub fn default_retry_budget() -> RetryBudget {
    RetryBudget {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl: Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        }),
    }
}

/// One endpoint on the wire.
pub fn weighted_addr(ep: &Endpoint) -> WeightedAddr {
    let meshed = ep.hint != ProtocolHint::Unknown;
    WeightedAddr {
        addr: Some(TcpAddress::from(ep.addr)),
        weight: ep.weight,
        metric_labels: ep
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tls_identity: ep.identity.as_ref().map(|id| {
            let name = tls_identity::DnsLikeIdentity {
                name: id.as_str().to_string(),
            };
            api::TlsIdentity {
                server_name: Some(name.clone()),
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(name)),
            }
        }),
        protocol_hint: protocol_hint(ep.hint),
        authority_override: None,
        http2: meshed.then(http2_params),
        resource_ref: None,
    }
}

fn protocol_hint(hint: ProtocolHint) -> Option<api::ProtocolHint> {
    use protocol_hint::Protocol;
    match hint {
        ProtocolHint::Unknown => None,
        ProtocolHint::H2 => Some(api::ProtocolHint {
            protocol: Some(Protocol::H2(protocol_hint::H2 {})),
            opaque_transport: None,
        }),
        ProtocolHint::Opaque { inbound_port } => Some(api::ProtocolHint {
            protocol: Some(Protocol::Opaque(protocol_hint::Opaque {})),
            opaque_transport: Some(protocol_hint::OpaqueTransport {
                inbound_port: u32::from(inbound_port),
            }),
        }),
    }
}

/// Linkerd's Helm defaults for meshed HTTP/2: keepalive every 10 s, 3 s timeout, also idle.
fn http2_params() -> api::Http2ClientParams {
    let d = |d: Duration| prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    };
    api::Http2ClientParams {
        keep_alive: Some(http2_client_params::KeepAlive {
            interval: Some(d(Duration::from_secs(10))),
            timeout: Some(d(Duration::from_secs(3))),
            while_idle: true,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
