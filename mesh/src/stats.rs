//! From two scrapes of a sidecar to the numbers shown (the [`schema`](crate::schema) types),
//! and the rolling window `mesh up` keeps so that rates do not flicker.

use crate::metrics::{Scrape, Snapshot, TcpSnapshot, histogram_quantile};
use crate::schema::{Route, Sidecar, Tcp, TcpTraffic, Traffic, Workload};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The window rates and percentiles are computed over, as `linkerd viz stat`'s is about.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How much a cumulative counter grew; a counter that went down was reset (its sidecar
/// restarted), and then all of its value is new.
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

fn count(v: f64) -> u64 {
    // Counters are whole numbers written as floats.
    v.max(0.0).round() as u64
}

fn per_second(v: f64, secs: f64) -> f64 {
    if secs > 0.0 { v / secs } else { 0.0 }
}

pub fn traffic(before: &Snapshot, after: &Snapshot, secs: f64) -> Traffic {
    let responses = increase(before.responses, after.responses);
    let successes = increase(before.successes, after.successes);
    let denied = increase(before.denied, after.denied);
    let failed = increase(before.failed, after.failed);
    let tls = increase(before.tls_responses, after.tls_responses);
    let buckets = after
        .buckets
        .iter()
        .map(|(le, c)| {
            (
                *le,
                increase(before.buckets.get(le).copied().unwrap_or(0.0), *c),
            )
        })
        .collect();
    let share = |n: f64| (responses > 0.0).then(|| n / responses);
    Traffic {
        requests: count(responses),
        rps: per_second(responses, secs),
        success_rate: share(successes),
        denied: count(denied),
        failed: count(failed),
        p50_ms: histogram_quantile(0.5, &buckets),
        p99_ms: histogram_quantile(0.99, &buckets),
        mtls_rate: share(tls),
    }
}

fn tcp(before: Option<&TcpSnapshot>, after: Option<&TcpSnapshot>, secs: f64) -> Tcp {
    let zero = TcpSnapshot::default();
    let (b, a) = (before.unwrap_or(&zero), after.unwrap_or(&zero));
    let opened = increase(b.opened, a.opened);
    let read = increase(b.read_bytes, a.read_bytes);
    let write = increase(b.write_bytes, a.write_bytes);
    Tcp {
        opened: count(opened),
        open: count(a.open),
        read_bytes: count(read),
        write_bytes: count(write),
        connections_per_second: per_second(opened, secs),
        read_bytes_per_second: per_second(read, secs),
        write_bytes_per_second: per_second(write, secs),
    }
}

/// What is known of a workload besides its metrics: a [`Workload`] with no traffic and no
/// sidecar RSS (but its PSS, where `mesh up` read it). [`workload`] adds the numbers.
pub type Info = Workload;

/// A workload between two scrapes of its sidecar, `secs` apart.
pub fn workload(info: Info, before: &Scrape, after: &Scrape, secs: f64) -> Workload {
    let inbound = traffic(
        &before.direction("inbound"),
        &after.direction("inbound"),
        secs,
    );
    let prev = before.by_authority("outbound");
    let mut outbound = Vec::new();
    for (authority, now) in after.by_authority("outbound") {
        let then = prev.get(&authority).cloned().unwrap_or_default();
        let t = traffic(&then, &now, secs);
        if t.requests == 0 {
            continue;
        }
        // Retries are counted per route parent, the Service's name: the authority's first label.
        let parent = authority.split(['.', ':']).next().unwrap_or_default();
        let retries = match after.retries.get(parent) {
            Some(a) => count(increase(
                before.retries.get(parent).copied().unwrap_or(0.0),
                *a,
            )),
            None => 0,
        };
        outbound.push(Route {
            authority,
            traffic: t,
            retries,
        });
    }
    let tcp = TcpTraffic {
        inbound: tcp(before.tcp.get("inbound"), after.tcp.get("inbound"), secs),
        outbound: tcp(before.tcp.get("outbound"), after.tcp.get("outbound"), secs),
    };
    Workload {
        inbound,
        outbound,
        tcp,
        sidecar: Sidecar {
            rss_bytes: after.rss_bytes.map(count),
            pss_bytes: info.sidecar.pss_bytes,
        },
        ..info
    }
}

/// Scrapes of every sidecar, taken about once a second, kept for [`WINDOW`]: the numbers are
/// always between the oldest and the newest, so a 10% canary reads 10% every second instead
/// of 0% or 50% by chance.
#[derive(Debug, Default)]
pub struct Rolling {
    samples: VecDeque<(Instant, Vec<Option<Scrape>>)>,
}

impl Rolling {
    pub fn push(&mut self, at: Instant, scrapes: Vec<Option<Scrape>>) {
        self.samples.push_back((at, scrapes));
        // Keep the newest sample at least WINDOW old as the base, drop those before it.
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
    }

    /// The oldest and newest scrapes of sidecar `i`, and the seconds between them.
    /// Without a newest scrape (the sidecar did not answer), `None`; a sidecar that answered
    /// only lately is measured from its first answer.
    pub fn span(&self, i: usize) -> Option<(&Scrape, &Scrape, f64)> {
        let (t1, last) = self.samples.back()?;
        let last = last.get(i)?.as_ref()?;
        let (t0, first) = self
            .samples
            .iter()
            .find_map(|(t, s)| Some((t, s.get(i)?.as_ref()?)))?;
        Some((first, last, t1.duration_since(*t0).as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(requests: u64, ok: u64, retries: u64, opened: u64) -> Scrape {
        let text = format!(
            r#"response_total{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="b",status_code="200"}} {ok}
response_total{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",tls="true",server_id="b",status_code="503"}} {}
response_latency_ms_bucket{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",status_code="200",le="1"}} {ok}
response_latency_ms_bucket{{direction="outbound",authority="backend.demo.svc.cluster.local:8080",status_code="200",le="+Inf"}} {requests}
outbound_http_route_retry_requests_total{{parent_name="backend",route_name="canary"}} {retries}
tcp_open_total{{direction="outbound",peer="src",target_addr="127.0.0.10:4140"}} {opened}
tcp_read_bytes_total{{direction="outbound",peer="src",target_addr="127.0.0.10:4140"}} {}
"#,
            requests - ok,
            opened * 100
        );
        Scrape::parse(&text)
    }

    #[test]
    fn a_window_counts_what_happened_between_two_scrapes() {
        let info = Info {
            name: "frontend".into(),
            ..Info::default()
        };
        let w = workload(info, &scrape(10, 10, 0, 1), &scrape(30, 28, 3, 5), 2.0);
        let r = &w.outbound[0];
        assert_eq!(r.authority, "backend.demo.svc.cluster.local:8080");
        assert_eq!(r.traffic.requests, 20);
        assert_eq!(r.traffic.rps, 10.0);
        assert_eq!(r.traffic.failed, 2);
        assert_eq!(r.traffic.success_rate, Some(0.9));
        assert_eq!(r.traffic.mtls_rate, Some(1.0));
        assert_eq!(r.retries, 3);
        assert_eq!(w.tcp.outbound.opened, 4);
        assert_eq!(w.tcp.outbound.read_bytes, 400);
        assert_eq!(w.tcp.outbound.read_bytes_per_second, 200.0);
        assert_eq!(w.inbound.requests, 0);
        assert_eq!(w.inbound.success_rate, None);
        // A sidecar that restarted: its counters start again from zero.
        let w = workload(
            Info::default(),
            &scrape(100, 100, 0, 9),
            &scrape(5, 5, 0, 1),
            1.0,
        );
        assert_eq!(w.outbound[0].traffic.requests, 5);
    }

    #[test]
    fn the_rolling_window_keeps_ten_seconds() {
        let t0 = Instant::now();
        let mut r = Rolling::default();
        for s in 0..=15u64 {
            r.push(
                t0 + Duration::from_secs(s),
                vec![Some(scrape(10 * s + 10, 10 * s + 10, 0, 0))],
            );
        }
        let (first, last, secs) = r.span(0).unwrap();
        assert_eq!(secs, 10.0);
        let t = traffic(
            &first.direction("outbound"),
            &last.direction("outbound"),
            secs,
        );
        assert_eq!(t.requests, 100);
        assert_eq!(t.rps, 10.0);
        // A sidecar that could not be read has no span.
        r.push(t0 + Duration::from_secs(16), vec![None]);
        assert!(r.span(0).is_none());
    }
}
