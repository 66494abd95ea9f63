//! The discovery client: one `io.linkerd.proxy.destination.Destination/Get` stream per logical
//! name, turned into a [`Resolution`] watch that a balancer follows.
//!
//! Names under the discovery suffixes (`LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES`, default
//! `svc.cluster.local.`) are resolved here; anything else, and IP addresses, skip discovery. A
//! watch starts `Pending`; `Add`/`Remove` updates keep the endpoint set, `no_endpoints{exists:
//! true}` empties it, and `no_endpoints{exists: false}` (or `NOT_FOUND`/`INVALID_ARGUMENT`) makes
//! it `Unknown` so the caller falls back to the original destination or DNS. When the stream
//! fails the last known endpoints stay in use while it reconnects with a jittered backoff; the
//! first message of a new stream replaces the set. The task ends when the balancer (the watch's
//! last receiver) is dropped.

use crate::{
    backoff::Backoff,
    control::control_channel,
    resolve::{Endpoint, Resolution, Resolve},
    tls::CredsRx,
};
use proto::api::destination::{
    GetDestination, Update, WeightedAddr, destination_client::DestinationClient, update,
};
use std::{collections::HashMap, net::SocketAddr, sync::Arc};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, warn};

/// Where the destination service is and which names it answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationConfig {
    /// `host:port` of the destination service.
    pub svc_addr: String,
    /// Its identity: the connection is mTLS unless `svc_addr` is a loopback address.
    pub svc_name: Option<String>,
    /// `LINKERD2_PROXY_DESTINATION_CONTEXT`, copied into every request.
    pub context: String,
    /// Host suffixes (lower case, no leading or trailing dot; empty = every name).
    pub suffixes: Vec<String>,
}

impl DestinationConfig {
    /// Whether `authority` (`host:port`) is resolved through discovery.
    pub fn covers(&self, authority: &str) -> bool {
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h,
            None => authority,
        };
        let host = host.trim_end_matches('.');
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return false;
        }
        self.suffixes.iter().any(|s| {
            s.is_empty()
                || host == s
                || (host.len() > s.len()
                    && host.ends_with(s.as_str())
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.')
        })
    }
}

/// Resolves names through the destination service.
#[derive(Clone, Debug)]
pub(crate) struct DestinationResolve {
    cfg: Arc<DestinationConfig>,
    channel: Channel,
}

impl DestinationResolve {
    /// Builds the client; the connection is made lazily, on the first watch.
    pub(crate) fn new(cfg: DestinationConfig, creds: Option<CredsRx>) -> Result<Self, String> {
        let channel = channel(&cfg, creds)?;
        Ok(Self {
            cfg: Arc::new(cfg),
            channel,
        })
    }
}

impl Resolve for DestinationResolve {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Resolution>> {
        if !self.cfg.covers(authority) {
            return None;
        }
        let (tx, rx) = watch::channel(Resolution::Pending);
        let client = DestinationClient::new(self.channel.clone());
        let req = GetDestination {
            scheme: "k8s".into(),
            path: authority.to_string(),
            context_token: self.cfg.context.clone(),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = watch_loop(client, req, &tx) => {}
            }
        });
        Some(rx)
    }
}

/// Streams `Get` forever, reconnecting with backoff.
async fn watch_loop(
    mut client: DestinationClient<Channel>,
    req: GetDestination,
    tx: &watch::Sender<Resolution>,
) {
    let mut failures = 0;
    loop {
        match client.get(req.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                let mut set = EndpointSet::default();
                let mut first = true;
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            if first {
                                // A new stream's first message is the whole state.
                                set.clear();
                                first = false;
                                failures = 0;
                            }
                            let res = set.apply(update);
                            tx.send_if_modified(|cur| {
                                let changed = *cur != res;
                                *cur = res;
                                changed
                            });
                        }
                        Ok(None) => {
                            debug!(path = %req.path, "destination stream ended");
                            break;
                        }
                        Err(status) => {
                            debug!(path = %req.path, %status, "destination stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) => match status.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                    debug!(path = %req.path, %status, "not a known destination");
                    tx.send_if_modified(|cur| {
                        let changed = *cur != Resolution::Unknown;
                        *cur = Resolution::Unknown;
                        changed
                    });
                }
                _ => {
                    warn!(path = %req.path, %status, "destination service unavailable; keeping the last known endpoints");
                }
            },
        }
        tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// The endpoints one stream has told us about.
#[derive(Debug, Default)]
struct EndpointSet {
    endpoints: HashMap<SocketAddr, Endpoint>,
}

impl EndpointSet {
    fn clear(&mut self) {
        self.endpoints.clear();
    }

    fn apply(&mut self, update: Update) -> Resolution {
        match update.update {
            Some(update::Update::Add(set)) => {
                for wa in &set.addrs {
                    if let Some(ep) = endpoint_of(wa, &set.metric_labels) {
                        self.endpoints.insert(ep.addr, ep);
                    }
                }
            }
            Some(update::Update::Remove(set)) => {
                for a in set.addrs {
                    if let Ok(addr) = proto::net::to_socket_addr(&a) {
                        self.endpoints.remove(&addr);
                    }
                }
            }
            Some(update::Update::NoEndpoints(ne)) => {
                self.endpoints.clear();
                if !ne.exists {
                    return Resolution::Unknown;
                }
            }
            None => {}
        }
        let mut eps: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        // A stable order, so an unchanged set compares equal.
        eps.sort_by_key(|e| e.addr);
        Resolution::Ready(eps.into())
    }
}

/// An endpoint from discovery; `set_labels` are the labels of the update it came in.
fn endpoint_of(wa: &WeightedAddr, set_labels: &HashMap<String, String>) -> Option<Endpoint> {
    use proto::api::destination::tls_identity::Strategy;
    let addr = proto::net::to_socket_addr(wa.addr.as_ref()?).ok()?;
    let identity = wa
        .tls_identity
        .as_ref()
        .and_then(|t| t.strategy.as_ref())
        .and_then(|s| match s {
            Strategy::DnsLikeIdentity(d) => Some(Arc::from(d.name.as_str())),
            // SPIFFE identities are not used between our proxies (certificates carry the DNS
            // name too); such an endpoint is dialled in plaintext.
            Strategy::UriLikeIdentity(_) => None,
        });
    Some(Endpoint {
        addr,
        identity,
        labels: dst_labels(set_labels, &wa.metric_labels),
    })
}

/// The outbound metrics' `dst_*` labels, as linkerd2-proxy renders them: the set's labels and
/// the address's (which win), keys sorted and prefixed `dst_`. A key that is not a valid
/// Prometheus label name has its other characters replaced with `_`.
fn dst_labels(set: &HashMap<String, String>, addr: &HashMap<String, String>) -> Option<Arc<str>> {
    let mut all: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for (k, v) in set.iter().chain(addr) {
        all.insert(k, v);
    }
    if all.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (k, v) in all {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str("dst_");
        out.extend(k.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        }));
        out.push_str("=\"");
        out.push_str(&crate::metrics::escape(v));
        out.push('"');
    }
    Some(Arc::from(out))
}

/// A lazily connected channel: plaintext to a loopback address, otherwise mTLS with our
/// certificate, expecting `svc_name`.
fn channel(cfg: &DestinationConfig, creds: Option<CredsRx>) -> Result<Channel, String> {
    control_channel(
        &cfg.svc_addr,
        cfg.svc_name.as_deref(),
        creds,
        "LINKERD2_PROXY_DESTINATION_SVC_NAME",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::{
        destination::{AddrSet, NoEndpoints, TlsIdentity, WeightedAddrSet, tls_identity},
        net::TcpAddress,
    };

    fn cfg(suffixes: &[&str]) -> DestinationConfig {
        DestinationConfig {
            svc_addr: "127.0.0.1:8086".into(),
            svc_name: None,
            context: String::new(),
            suffixes: suffixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn suffixes_select_names_ips_never() {
        let c = cfg(&["svc.cluster.local"]);
        assert!(c.covers("web.ns.svc.cluster.local:80"));
        assert!(c.covers("web.ns.svc.cluster.local.:80"));
        assert!(!c.covers("web.ns.svc.cluster.localx:80"));
        assert!(!c.covers("example.com:443"));
        assert!(!c.covers("10.0.0.1:80"));
        assert!(!c.covers("[::1]:80"));
        let all = cfg(&[""]);
        assert!(all.covers("anything.local:80"));
        assert!(!all.covers("10.0.0.1:80"));
    }

    fn wa(last: u8, id: Option<&str>) -> WeightedAddr {
        WeightedAddr {
            addr: Some(proto::net::to_tcp_address(SocketAddr::from((
                [10, 0, 0, last],
                8080,
            )))),
            weight: 10000,
            tls_identity: id.map(|n| TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity { name: n.into() },
                )),
                server_name: None,
            }),
            ..Default::default()
        }
    }

    fn add(addrs: Vec<WeightedAddr>) -> Update {
        Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs,
                ..Default::default()
            })),
        }
    }

    fn remove(last: &[u8]) -> Update {
        let addrs: Vec<TcpAddress> = last
            .iter()
            .map(|l| proto::net::to_tcp_address(SocketAddr::from(([10, 0, 0, *l], 8080))))
            .collect();
        Update {
            update: Some(update::Update::Remove(AddrSet { addrs })),
        }
    }

    fn addrs(r: &Resolution) -> Vec<(u8, Option<String>)> {
        match r {
            Resolution::Ready(eps) => eps
                .iter()
                .map(|e| match e.addr.ip() {
                    std::net::IpAddr::V4(v) => {
                        (v.octets()[3], e.identity.as_deref().map(String::from))
                    }
                    std::net::IpAddr::V6(_) => unreachable!(),
                })
                .collect(),
            other => panic!("not ready: {other:?}"),
        }
    }

    #[test]
    fn discovery_labels_become_dst_labels() {
        let set: HashMap<String, String> = [
            ("service".to_string(), "web".to_string()),
            ("namespace".to_string(), "ns".to_string()),
        ]
        .into();
        let mut a = wa(1, None);
        a.metric_labels = [
            ("pod".to_string(), "web-7f9c-x2".to_string()),
            ("namespace".to_string(), "addr-wins".to_string()),
            ("deployment".to_string(), "web".to_string()),
            ("zone.locality".to_string(), "a \"b\"\nc\\".to_string()),
        ]
        .into();
        let ep = endpoint_of(&a, &set).unwrap();
        assert_eq!(
            ep.labels.as_deref(),
            Some(
                "dst_deployment=\"web\",dst_namespace=\"addr-wins\",dst_pod=\"web-7f9c-x2\",\
                 dst_service=\"web\",dst_zone_locality=\"a \\\"b\\\"\\nc\\\\\""
            )
        );
        assert_eq!(
            endpoint_of(&wa(2, None), &HashMap::new()).unwrap().labels,
            None
        );
    }

    #[test]
    fn updates_build_the_endpoint_set() {
        let mut set = EndpointSet::default();
        let r = set.apply(add(vec![
            wa(
                1,
                Some("a.ns.serviceaccount.identity.linkerd.cluster.local"),
            ),
            wa(2, None),
        ]));
        assert_eq!(
            addrs(&r),
            vec![
                (
                    1,
                    Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into())
                ),
                (2, None)
            ]
        );
        let r = set.apply(remove(&[1]));
        assert_eq!(addrs(&r), vec![(2, None)]);
        // Duplicates are tolerated.
        let r = set.apply(add(vec![wa(2, None), wa(3, None)]));
        assert_eq!(addrs(&r), vec![(2, None), (3, None)]);
        let r = set.apply(Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: true })),
        });
        assert_eq!(r, Resolution::Ready(Arc::from(Vec::new())));
        let r = set.apply(Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
        });
        assert_eq!(r, Resolution::Unknown);
    }
}
