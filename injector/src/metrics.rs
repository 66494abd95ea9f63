//! Counters for the webhook, rendered as Prometheus text on the admin port.

use crate::{admission::Handled, patch::SkipReason};
use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Shared by the webhook connections and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    injected: AtomicU64,
    skipped: [AtomicU64; SkipReason::LABELS.len()],
    failed: AtomicU64,
    bad_requests: AtomicU64,
}

impl Metrics {
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn handled(&self, h: &Handled) {
        match h {
            Handled::Injected => {
                self.injected.fetch_add(1, Relaxed);
            }
            Handled::Skipped(r) => {
                let label = r.label();
                if let Some(i) = SkipReason::LABELS.iter().position(|l| *l == label) {
                    self.skipped[i].fetch_add(1, Relaxed);
                }
            }
            Handled::Failed(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// A body that was not a usable AdmissionReview (400/413).
    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Relaxed);
    }

    pub fn injected_total(&self) -> u64 {
        self.injected.load(Relaxed)
    }

    pub fn skipped_total(&self, reason: &str) -> u64 {
        SkipReason::LABELS
            .iter()
            .position(|l| *l == reason)
            .map_or(0, |i| self.skipped[i].load(Relaxed))
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.load(Relaxed)
    }

    pub fn bad_requests_total(&self) -> u64 {
        self.bad_requests.load(Relaxed)
    }

    /// Prometheus text exposition (Linkerd's injector metric names).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(1024);
        let _ = writeln!(
            s,
            "# HELP proxy_inject_admission_requests_total AdmissionReviews received.\n\
             # TYPE proxy_inject_admission_requests_total counter\n\
             proxy_inject_admission_requests_total {}\n\
             # HELP proxy_inject_admission_responses_total Pods admitted, by whether and why injection was skipped.\n\
             # TYPE proxy_inject_admission_responses_total counter\n\
             proxy_inject_admission_responses_total{{skip=\"false\",reason=\"\"}} {}",
            self.requests.load(Relaxed),
            self.injected_total(),
        );
        for (label, n) in SkipReason::LABELS.iter().zip(&self.skipped) {
            let _ = writeln!(
                s,
                "proxy_inject_admission_responses_total{{skip=\"true\",reason=\"{label}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP proxy_inject_admission_failures_total Pods admitted unchanged because injection failed.\n\
             # TYPE proxy_inject_admission_failures_total counter\n\
             proxy_inject_admission_failures_total {}\n\
             # HELP proxy_inject_bad_requests_total Requests that were not a usable AdmissionReview.\n\
             # TYPE proxy_inject_bad_requests_total counter\n\
             proxy_inject_bad_requests_total {}",
            self.failed_total(),
            self.bad_requests_total(),
        );
        s
    }
}
