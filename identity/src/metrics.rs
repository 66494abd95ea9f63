//! Metrics (prometheus-client, `linkerd_control::metrics`) and the admin server (`/metrics`,
//! `/ready`, `/live`).

use crate::ca::Ca;
use linkerd_control::metrics::{
    self as m, Counter, EncodeLabelSet, Family, Gauge, Outcomes, Registry,
};
use std::{sync::Arc, time::SystemTime};
use tokio::{net::TcpListener, sync::watch};

/// Every rejection reason label (see the README's error table).
pub const REASONS: &[&str] = &[
    "empty_field",
    "bad_identity",
    "no_issuer",
    "csr_malformed",
    "csr_key_type",
    "csr_signature",
    "csr_name_mismatch",
    "unauthenticated",
    "auth_unavailable",
    "identity_mismatch",
    "issuer_expired",
    "internal",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Counters shared by the gRPC service, the issuer watcher and the admin server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    issued: Counter,
    /// By [`REASONS`], resolved once.
    rejected: Vec<Counter>,
    reloads: Outcomes,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let issued: Counter = m::new_counter(
            &mut registry,
            "identity_certificates_issued_total",
            "Leaf certificates issued.",
        );
        let rejected: Family<ReasonLabels, Counter> = m::new_counter(
            &mut registry,
            "identity_certify_rejections_total",
            "Certify requests rejected, by reason.",
        );
        let reloads = Outcomes::default();
        reloads.register(
            &mut registry,
            "identity_issuer_reloads_total",
            "Issuer changes seen on disk, by result.",
        );
        Self {
            registry,
            issued,
            rejected: REASONS
                .iter()
                .map(|&reason| rejected.get_or_create(&ReasonLabels { reason }).clone())
                .collect(),
            reloads,
        }
    }
}

impl Metrics {
    pub fn issued(&self) {
        self.issued.inc();
    }

    /// Counts a rejection; `reason` should be one of [`REASONS`] (else it counts as
    /// `internal`).
    pub fn rejected(&self, reason: &str) {
        let i = REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS.len() - 1);
        self.rejected[i].inc();
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok);
    }

    pub fn issued_total(&self) -> u64 {
        self.issued.get()
    }

    pub fn rejected_total(&self, reason: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].get())
    }

    /// Prometheus text exposition. The issuer's gauges appear once an issuer is loaded.
    pub fn render(&self, ca: &Ca) -> String {
        let mut issuer = Registry::default();
        if let Some(i) = ca.issuer() {
            let expiry = i.not_after();
            let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
                let g = Gauge::<i64>::default();
                g.set(v);
                m::gauge(registry, name, help, g);
            };
            gauge(
                &mut issuer,
                "identity_issuer_expiry_timestamp_seconds",
                "When the issuer (or its chain) expires.",
                expiry,
            );
            gauge(
                &mut issuer,
                "issuer_cert_ttl_seconds",
                "Seconds until the issuer expires (Linkerd's name).",
                expiry - crate::ca::unix(SystemTime::now()),
            );
        }
        m::encode(&[&self.registry, &issuer])
    }
}

/// Serves `/metrics`, `/ready` and `/live` until `shutdown` turns true.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    ca: Arc<Ca>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let issuer = ca.clone();
    let ready = move || issuer.issuer().map(drop).ok_or("no issuer loaded");
    linkerd_control::serve_admin(listener, shutdown, move || metrics.render(&ca), ready).await
}
