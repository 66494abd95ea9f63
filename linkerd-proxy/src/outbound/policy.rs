//! Outbound policy: how requests to a logical service are routed, split, retried, timed out and
//! cut off, as Linkerd's policy controller describes it through
//! `io.linkerd.proxy.outbound.OutboundPolicies`.
//!
//! [`OutboundPolicies`] keeps one `Watch` stream per destination (a `host:port` that service
//! discovery covers, or the original destination address), created on first use and dropped
//! when nobody used it for the discovery idle timeout. A request reads the destination's
//! current [`OutboundPolicy`], so an update applies to the next request without touching
//! established connections.
//!
//! ```text
//! request ─► policy of its destination? ─ none ──────────────► balancer of the destination
//!                      └ routes ─► rule (matches) ─► filters (fault: answer now)
//!                                    └► backend by weight ─► its balancer ─► attempt
//!                                         ▲ retry (status/gRPC code, budget, backoff) ┘
//! ```

pub(crate) mod budget;
mod convert;
mod model;
#[cfg(test)]
mod tests;

#[cfg(test)]
use convert::DEFAULT_MAX_REQUEST_BYTES;
pub use model::*;

use crate::{
    idle::{IdleMap, Touched},
    metrics::Metrics,
};
use proto::api::outbound::{
    TrafficSpec, outbound_policies_client::OutboundPoliciesClient, traffic_spec,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

/// How long the first request to a destination waits for its policy before going on without
/// one (the policy service is down or slow).
pub const FIRST_POLICY_WAIT: Duration = Duration::from_secs(1);

/// A destination's policy as known so far.
#[derive(Clone, Debug)]
pub enum PolicyState {
    /// The policy service has not answered yet.
    Pending,
    /// It answered that it has no policy for this destination (or cannot be asked).
    None,
    Ready(Arc<OutboundPolicy>),
}

/// One destination's policy watch.
#[derive(Debug)]
pub struct PolicyWatch {
    rx: watch::Receiver<PolicyState>,
    used: AtomicBool,
}

impl PolicyWatch {
    /// A watch that never changes (tests, and destinations without a policy service).
    pub fn fixed(state: PolicyState) -> Self {
        let (_, rx) = watch::channel(state);
        Self {
            rx,
            used: AtomicBool::new(true),
        }
    }

    /// The policy now; the first request waits up to [`FIRST_POLICY_WAIT`] for it.
    pub async fn current(&self) -> Option<Arc<OutboundPolicy>> {
        self.used.store(true, Ordering::Relaxed);
        let state = self.rx.borrow().clone();
        match state {
            PolicyState::Ready(p) => Some(p),
            PolicyState::None => None,
            PolicyState::Pending => {
                let mut rx = self.rx.clone();
                let arrived = tokio::time::timeout(
                    FIRST_POLICY_WAIT,
                    rx.wait_for(|s| !matches!(s, PolicyState::Pending)),
                )
                .await;
                match arrived {
                    Ok(Ok(s)) => match &*s {
                        PolicyState::Ready(p) => Some(p.clone()),
                        _ => None,
                    },
                    _ => None,
                }
            }
        }
    }
}

/// The policy service client for outbound policies, with one watch per destination.
pub struct OutboundPolicies {
    client: Option<(OutboundPoliciesClient<Channel>, String)>,
    metrics: Arc<Metrics>,
    map: Arc<IdleMap<PolicyWatch>>,
}

impl Touched for PolicyWatch {
    fn touched(&self) -> &AtomicBool {
        &self.used
    }
}

impl std::fmt::Debug for OutboundPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundPolicies")
            .field("enabled", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl OutboundPolicies {
    /// No policy service: no destination has a policy.
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self {
            client: None,
            metrics,
            map: Arc::default(),
        }
    }

    /// Outbound policies from the policy service (`LINKERD2_PROXY_POLICY_SVC_*`) over
    /// `channel` (shared with the inbound policy client), asked on behalf of `workload`.
    pub fn new(channel: Channel, workload: String, metrics: Arc<Metrics>) -> Self {
        Self {
            client: Some((OutboundPoliciesClient::new(channel), workload)),
            metrics,
            map: Arc::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.client.is_some()
    }

    /// The watch of a destination: a `host:port` name, or an `ip:port` address. `None` when
    /// there is no policy service.
    pub fn get(&self, target: &str) -> Option<Arc<PolicyWatch>> {
        let (client, workload) = self.client.as_ref()?;
        self.map.get_or_insert_with(target, || {
            let (tx, rx) = watch::channel(PolicyState::Pending);
            let spec = TrafficSpec {
                source_workload: workload.clone(),
                target: Some(match target.parse::<std::net::SocketAddr>() {
                    Ok(addr) => traffic_spec::Target::Addr(proto::net::to_tcp_address(addr)),
                    Err(_) => traffic_spec::Target::Authority(target.to_string()),
                }),
            };
            tokio::spawn(watch_loop(
                client.clone(),
                spec,
                tx,
                self.metrics.clone(),
                target.to_string(),
            ));
            Some(PolicyWatch {
                rx,
                used: AtomicBool::new(true),
            })
        })
    }

    /// Drops watches that nobody holds and nobody used since the previous sweep; each stream
    /// ends when its receiver is gone.
    pub fn sweep(&self) -> usize {
        crate::idle::Sweep::sweep(&*self.map)
    }

    /// Sweeps every `idle / 2` while the cache lives.
    pub async fn evict_idle(self: Arc<Self>, idle: Duration) {
        let map = Arc::downgrade(&self.map);
        drop(self);
        crate::idle::evict_idle(&map, idle).await;
    }
}

/// The first reconnect try whose wait reaches [`Backoff::RECONNECT`]'s maximum (100 ms × 2⁷).
const SLOWEST: u32 = 7;

/// Follows one destination's policy until nobody holds its watch. An answer that cannot be
/// understood keeps the previous policy; `NOT_FOUND` / `INVALID_ARGUMENT` mean no policy (asked
/// again slowly, the service may appear); a broken stream reconnects with a jittered backoff.
async fn watch_loop(
    mut client: OutboundPoliciesClient<Channel>,
    spec: TrafficSpec,
    tx: watch::Sender<PolicyState>,
    metrics: Arc<Metrics>,
    target: String,
) {
    let mut failures = 0;
    loop {
        let stream = tokio::select! {
            r = client.watch(spec.clone()) => r,
            _ = tx.closed() => return,
        };
        match stream {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = tx.closed() => return,
                    };
                    match msg {
                        Ok(Some(p)) => {
                            failures = 0;
                            match OutboundPolicy::from_api(p, &metrics) {
                                Ok(p) => {
                                    debug!(%target, parent = %p.parent, "outbound policy");
                                    tx.send_replace(PolicyState::Ready(Arc::new(p)));
                                }
                                Err(e) => {
                                    warn!(%target, error = %e, "ignoring an invalid outbound policy; keeping the previous one");
                                    if matches!(*tx.borrow(), PolicyState::Pending) {
                                        tx.send_replace(PolicyState::None);
                                    }
                                }
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                debug!(%target, %status, "no outbound policy");
                tx.send_replace(PolicyState::None);
                // Asked again at the slowest pace: the service may appear.
                failures = failures.max(SLOWEST);
            }
            Err(status) => {
                info!(%target, code = ?status.code(), message = status.message(), "policy service unavailable; keeping the current outbound policy");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Backoff::RECONNECT.delay(failures)) => {}
            _ = tx.closed() => return,
        }
        failures = failures.saturating_add(1);
    }
}
