//! Counters for the webhook (prometheus-client, `linkerd_control::metrics`), rendered as
//! Prometheus text on the admin port.

use crate::{admission::Handled, patch::SkipReason};
use linkerd_control::metrics::{self as m, Counter, EncodeLabelSet, Family, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    skip: &'static str,
    reason: &'static str,
}

/// Shared by the webhook connections and the admin server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Counter,
    injected: Counter,
    /// By [`SkipReason::LABELS`], resolved once.
    skipped: Vec<Counter>,
    failed: Counter,
    bad_requests: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests: Counter = m::new_counter(
            &mut registry,
            "proxy_inject_admission_requests_total",
            "AdmissionReviews received.",
        );
        let responses: Family<ResponseLabels, Counter> = m::new_counter(
            &mut registry,
            "proxy_inject_admission_responses_total",
            "Pods admitted, by whether and why injection was skipped.",
        );
        let failed: Counter = m::new_counter(
            &mut registry,
            "proxy_inject_admission_failures_total",
            "Pods admitted unchanged because injection failed.",
        );
        let bad_requests: Counter = m::new_counter(
            &mut registry,
            "proxy_inject_bad_requests_total",
            "Requests that were not a usable AdmissionReview.",
        );
        let response = |skip, reason| {
            responses
                .get_or_create(&ResponseLabels { skip, reason })
                .clone()
        };
        Self {
            registry,
            requests,
            injected: response("false", ""),
            skipped: SkipReason::LABELS
                .iter()
                .map(|reason| response("true", reason))
                .collect(),
            failed,
            bad_requests,
        }
    }
}

impl Metrics {
    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn handled(&self, h: &Handled) {
        match h {
            Handled::Injected => {
                self.injected.inc();
            }
            Handled::Skipped(r) => {
                let label = r.label();
                if let Some(i) = SkipReason::LABELS.iter().position(|l| *l == label) {
                    self.skipped[i].inc();
                }
            }
            Handled::Failed(_) => {
                self.failed.inc();
            }
        }
    }

    /// A body that was not a usable AdmissionReview (400/413).
    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn injected_total(&self) -> u64 {
        self.injected.get()
    }

    pub fn skipped_total(&self, reason: &str) -> u64 {
        SkipReason::LABELS
            .iter()
            .position(|l| *l == reason)
            .map_or(0, |i| self.skipped[i].get())
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.get()
    }

    pub fn bad_requests_total(&self) -> u64 {
        self.bad_requests.get()
    }

    /// Prometheus text exposition (Linkerd's injector metric names).
    pub fn render(&self) -> String {
        m::encode(&[&self.registry])
    }
}
