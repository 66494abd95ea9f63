//! Metrics and the admin server (`/metrics`, `/ready`, `/live`).

use crate::ca::Ca;
use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::SystemTime,
};
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

/// Counters shared by the gRPC service, the issuer watcher and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    issued: AtomicU64,
    rejected: [AtomicU64; REASONS.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Metrics {
    pub fn issued(&self) {
        self.issued.fetch_add(1, Relaxed);
    }

    /// Counts a rejection; `reason` should be one of [`REASONS`] (else it counts as
    /// `internal`).
    pub fn rejected(&self, reason: &str) {
        let i = REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS.len() - 1);
        self.rejected[i].fetch_add(1, Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn issued_total(&self) -> u64 {
        self.issued.load(Relaxed)
    }

    pub fn rejected_total(&self, reason: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].load(Relaxed))
    }

    /// Prometheus text exposition.
    pub fn render(&self, ca: &Ca) -> String {
        let mut s = String::with_capacity(2048);
        let _ = writeln!(
            s,
            "# HELP identity_certificates_issued_total Leaf certificates issued.\n\
             # TYPE identity_certificates_issued_total counter\n\
             identity_certificates_issued_total {}",
            self.issued_total()
        );
        s.push_str(
            "# HELP identity_certify_rejections_total Certify requests rejected, by reason.\n\
             # TYPE identity_certify_rejections_total counter\n",
        );
        for (reason, n) in REASONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                s,
                "identity_certify_rejections_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP identity_issuer_reloads_total Issuer changes seen on disk, by result.\n\
             # TYPE identity_issuer_reloads_total counter\n\
             identity_issuer_reloads_total{{result=\"ok\"}} {}\n\
             identity_issuer_reloads_total{{result=\"error\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed)
        );
        if let Some(issuer) = ca.issuer() {
            let expiry = issuer.not_after();
            let ttl = expiry - crate::ca::unix(SystemTime::now());
            let _ = writeln!(
                s,
                "# HELP identity_issuer_expiry_timestamp_seconds When the issuer (or its chain) expires.\n\
                 # TYPE identity_issuer_expiry_timestamp_seconds gauge\n\
                 identity_issuer_expiry_timestamp_seconds {expiry}\n\
                 # HELP issuer_cert_ttl_seconds Seconds until the issuer expires (Linkerd's name).\n\
                 # TYPE issuer_cert_ttl_seconds gauge\n\
                 issuer_cert_ttl_seconds {ttl}"
            );
        }
        s
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
