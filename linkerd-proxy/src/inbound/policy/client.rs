//! The policy client: one `InboundServerPolicies/WatchPort` stream per inbound port in
//! `LINKERD2_PROXY_INBOUND_PORTS`, each feeding that port's watch. A port starts from the local
//! default; a message that cannot be understood is logged and the previous policy kept; a
//! failed stream reconnects with a jittered backoff, keeping the last policy meanwhile.
//! `INVALID_ARGUMENT` and `FAILED_PRECONDITION` end that port's watch (the request itself is
//! wrong, retrying cannot help), as Linkerd's proxy does.

use super::{DefaultPolicy, Net, Policies, ServerPolicy};
use crate::{backoff::Backoff, metrics::Metrics, tls::CredsRx};
use proto::api::inbound::{PortSpec, inbound_server_policies_client::InboundServerPoliciesClient};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

/// Inbound policy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundPolicyConfig {
    /// `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY` (default `all-unauthenticated`).
    pub default: DefaultPolicy,
    /// `LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS`: what `cluster-*` defaults admit.
    pub cluster_networks: Vec<Net>,
    /// The policy service, when `LINKERD2_PROXY_POLICY_SVC_ADDR` is set.
    pub service: Option<PolicyServiceConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyServiceConfig {
    pub svc_addr: String,
    pub svc_name: Option<String>,
    /// `LINKERD2_PROXY_POLICY_WORKLOAD`: `{"ns":"…","pod":"…"}` (or `ns:pod`).
    pub workload: String,
    /// `LINKERD2_PROXY_INBOUND_PORTS`: the ports whose policy is watched.
    pub ports: Vec<u16>,
}

/// The cluster networks Linkerd assumes when none are configured.
pub fn default_cluster_networks() -> Vec<Net> {
    proto::policy::DEFAULT_CLUSTER_NETWORKS
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl Default for InboundPolicyConfig {
    fn default() -> Self {
        Self {
            default: DefaultPolicy::AllUnauthenticated,
            cluster_networks: default_cluster_networks(),
            service: None,
        }
    }
}

/// The channel to the policy service, when one is configured (shared by the inbound and
/// outbound policy clients: one HTTP/2 connection).
pub fn channel(
    cfg: &InboundPolicyConfig,
    creds: Option<CredsRx>,
) -> Result<Option<Channel>, String> {
    cfg.service
        .as_ref()
        .map(|svc| {
            crate::control::control_channel(
                &svc.svc_addr,
                svc.svc_name.as_deref(),
                creds,
                "LINKERD2_PROXY_POLICY_SVC_NAME",
            )
        })
        .transpose()
}

/// Builds every port's policy watch and starts the streams over `channel` (from [`channel`]).
pub fn start(
    cfg: &InboundPolicyConfig,
    channel: Option<Channel>,
    metrics: Arc<Metrics>,
) -> Policies {
    let (Some(svc), Some(channel)) = (&cfg.service, channel) else {
        return Policies::fixed(cfg.default, &cfg.cluster_networks, &metrics);
    };
    let default = Arc::new(ServerPolicy::default_for(
        cfg.default,
        &cfg.cluster_networks,
        &metrics,
    ));
    let mut ports = HashMap::new();
    let pending = Arc::new(AtomicUsize::new(svc.ports.len()));
    for &port in &svc.ports {
        let (tx, rx) = watch::channel(default.clone());
        let client = InboundServerPoliciesClient::new(channel.clone());
        let spec = PortSpec {
            workload: svc.workload.clone(),
            port: u32::from(port),
        };
        let first = Heard::new(pending.clone());
        // Readiness waits for the first policy, but not forever: a policy service that is
        // down (or not ready itself) must not keep every meshed pod unready.
        tokio::spawn(first.clone().settle_after(FIRST_POLICY_WAIT));
        tokio::spawn(watch_port(client, spec, tx, metrics.clone(), first));
        ports.insert(port, rx);
    }
    Policies::new(ports, default, pending)
}

/// The longest readiness waits for a port's first policy; after it, the default serves on and
/// the proxy reports ready.
pub const FIRST_POLICY_WAIT: Duration = Duration::from_secs(10);

/// Counts a port as settled once: at its first policy, when its watch gives up, or after
/// [`FIRST_POLICY_WAIT`].
#[derive(Clone)]
struct Heard {
    done: Arc<std::sync::atomic::AtomicBool>,
    pending: Arc<AtomicUsize>,
}

impl Heard {
    fn new(pending: Arc<AtomicUsize>) -> Self {
        Self {
            done: Arc::default(),
            pending,
        }
    }

    fn settle(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }

    async fn settle_after(self, wait: Duration) {
        tokio::time::sleep(wait).await;
        self.settle();
    }
}

async fn watch_port(
    mut client: InboundServerPoliciesClient<Channel>,
    spec: PortSpec,
    tx: watch::Sender<Arc<ServerPolicy>>,
    metrics: Arc<Metrics>,
    first: Heard,
) {
    let port = spec.port;
    let mut failures = 0;
    loop {
        match client.watch_port(spec.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(server)) => {
                            failures = 0;
                            match ServerPolicy::from_api(server, &metrics) {
                                Ok(p) => {
                                    debug!(port, kind = %p.kind, name = %p.name, "inbound policy");
                                    tx.send_replace(Arc::new(p));
                                    first.settle();
                                }
                                Err(e) => {
                                    warn!(port, error = %e, "ignoring an invalid inbound policy; keeping the previous one")
                                }
                            }
                        }
                        Ok(None) => {
                            debug!(port, "policy stream ended");
                            break;
                        }
                        Err(status) => {
                            debug!(port, %status, "policy stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                warn!(port, %status, "the policy service refused this port's watch; keeping the default policy");
                first.settle();
                return;
            }
            Err(status) => {
                info!(port, code = ?status.code(), message = status.message(), "policy service unavailable; keeping the current policy");
            }
        }
        tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_port_settles_once_at_its_first_policy_or_after_the_wait() {
        let pending = Arc::new(AtomicUsize::new(2));
        let (a, b) = (Heard::new(pending.clone()), Heard::new(pending.clone()));
        tokio::spawn(a.clone().settle_after(FIRST_POLICY_WAIT));
        tokio::spawn(b.clone().settle_after(FIRST_POLICY_WAIT));
        // `a` hears from the service; settling twice counts once.
        a.settle();
        a.settle();
        assert_eq!(pending.load(Ordering::Acquire), 1);
        tokio::time::sleep(FIRST_POLICY_WAIT - Duration::from_millis(1)).await;
        assert_eq!(
            pending.load(Ordering::Acquire),
            1,
            "b waits the whole bound"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            pending.load(Ordering::Acquire),
            0,
            "b is settled by the timer, a not twice"
        );
        b.settle();
        assert_eq!(pending.load(Ordering::Acquire), 0);
    }
}
