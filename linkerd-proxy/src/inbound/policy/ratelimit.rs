//! Local rate limiting of an inbound server's HTTP requests (Linkerd's
//! `HTTPLocalRateLimitPolicy`): a total budget for the server, a budget per client identity
//! (unauthenticated clients share one), and overrides for named identities. Each budget is a
//! token bucket refilled continuously up to one second's worth of requests.

use crate::metrics::Tls;
use proto::api::inbound::HttpLocalRateLimit;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimit {
    pub name: Arc<str>,
    total: Option<Bucket>,
    /// The per-identity limit, and each identity's bucket (created on its first request).
    identity: Option<u32>,
    per_identity: Mutex<HashMap<Arc<str>, Arc<Bucket>>>,
    /// Identity → its own limit (instead of `identity`).
    overrides: HashMap<String, u32>,
    /// Requests refused (answered 429 / `RESOURCE_EXHAUSTED`).
    pub limited: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Bucket {
    rps: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rps: u32) -> Self {
        let rps = f64::from(rps);
        Self {
            rps,
            state: Mutex::new((rps, Instant::now())),
        }
    }

    fn take(&self) -> bool {
        let mut s = crate::lock(&self.state);
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rps;
        s.0 = (s.0 + refill).min(self.rps);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The key unauthenticated clients share.
const UNAUTHENTICATED: &str = "";

impl RateLimit {
    pub fn from_api(rl: HttpLocalRateLimit, limited: Arc<AtomicU64>) -> Result<Self, String> {
        let (_, name) = crate::http::matching::metadata_name(rl.metadata, "ratelimit");
        let mut overrides = HashMap::new();
        for o in rl.overrides {
            let rps = o
                .limit
                .ok_or("a rate limit override has no limit")?
                .requests_per_second;
            for id in o.clients.map(|c| c.identities).unwrap_or_default() {
                overrides.insert(id.name, rps);
            }
        }
        Ok(Self {
            name,
            total: rl.total.map(|l| Bucket::new(l.requests_per_second)),
            identity: rl.identity.map(|l| l.requests_per_second),
            per_identity: Mutex::default(),
            overrides,
            limited,
        })
    }

    /// Whether a request from a client with this TLS state is within every limit.
    pub fn admit(&self, tls: &Tls) -> bool {
        let id = match tls {
            Tls::Established { peer_id: Some(id) } => id.as_ref(),
            _ => UNAUTHENTICATED,
        };
        let per_client = match self.overrides.get(id) {
            Some(rps) => Some(*rps),
            None => self.identity,
        };
        let ok = per_client.is_none_or(|rps| {
            let bucket = {
                let mut map = crate::lock(&self.per_identity);
                match map.get(id) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(Bucket::new(rps));
                        map.insert(Arc::from(id), b.clone());
                        b
                    }
                }
            };
            bucket.take()
        }) && self.total.as_ref().is_none_or(Bucket::take);
        if !ok {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::inbound::{
        Identity,
        http_local_rate_limit::{Limit, Override, r#override::ClientIdentities},
    };
    use std::time::Duration;

    fn tls(id: &str) -> Tls {
        Tls::Established {
            peer_id: Some(Arc::from(id)),
        }
    }

    fn limit(rps: u32) -> Option<Limit> {
        Some(Limit {
            requests_per_second: rps,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn total_identity_and_override_budgets_refill_over_time() {
        let rl = RateLimit::from_api(
            HttpLocalRateLimit {
                metadata: None,
                total: limit(10),
                identity: limit(3),
                overrides: vec![Override {
                    limit: limit(6),
                    clients: Some(ClientIdentities {
                        identities: vec![Identity { name: "vip".into() }],
                    }),
                }],
            },
            Arc::default(),
        )
        .unwrap();
        let admitted = |who: &str, n: usize| (0..n).filter(|_| rl.admit(&tls(who))).count();
        assert_eq!(admitted("a", 5), 3, "3/s per identity");
        assert_eq!(admitted("b", 5), 3, "each identity has its own budget");
        assert_eq!(
            admitted("vip", 10),
            4,
            "the override (6/s) but only 4 left of the total"
        );
        assert_eq!(admitted("c", 5), 0, "the total (10/s) is spent");
        assert_eq!(rl.limited.load(Ordering::Relaxed), 2 + 2 + 6 + 5);
        // Half a second refills half of each budget (a: 1.5, the total: 5).
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(admitted("a", 5), 1);
        // Unauthenticated clients share one identity budget, whatever their reason.
        let n = (0..5)
            .filter(|_| rl.admit(&Tls::None("no_identity")))
            .count();
        assert_eq!(n, 3);
        let n = (0..5).filter(|_| rl.admit(&Tls::None("not_tls"))).count();
        assert_eq!(n, 0, "the shared budget is spent");
    }
}

/// Properties over any arrival pattern (in paused time): no budget admits more than its rate
/// allows over any stretch of time, and each client's decisions depend only on its own
/// requests and its own limit.
#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;
    use proto::api::inbound::{
        Identity,
        http_local_rate_limit::{Limit, Override, r#override::ClientIdentities},
    };
    use std::time::Duration;

    /// The clients: three ways of being unauthenticated (one shared budget), and three
    /// identities, the last of which has an override when there is one.
    const CLIENTS: usize = 6;
    const VIP: usize = 5;

    const VIP_ID: &str = "vip.ns.serviceaccount.identity.linkerd.cluster.local";

    fn tls(client: usize) -> Tls {
        let id = |name: &str| Tls::Established {
            peer_id: Some(Arc::from(name)),
        };
        match client {
            0 => Tls::None("no_tls_from_remote"),
            1 => Tls::None("loopback"),
            2 => Tls::Established { peer_id: None },
            3 => id("a.ns.serviceaccount.identity.linkerd.cluster.local"),
            4 => id("b.ns.serviceaccount.identity.linkerd.cluster.local"),
            _ => id(VIP_ID),
        }
    }

    /// The budget a client's requests count against (the unauthenticated share one).
    fn budget_of(client: usize) -> usize {
        if client <= 2 { 0 } else { client }
    }

    fn limiter(total: Option<u32>, identity: Option<u32>, vip: Option<u32>) -> RateLimit {
        let limit = |rps: Option<u32>| {
            rps.map(|requests_per_second| Limit {
                requests_per_second,
            })
        };
        let overrides = vip.map(|rps| Override {
            limit: limit(Some(rps)),
            clients: Some(ClientIdentities {
                identities: vec![Identity {
                    name: VIP_ID.into(),
                }],
            }),
        });
        RateLimit::from_api(
            HttpLocalRateLimit {
                metadata: None,
                total: limit(total),
                identity: limit(identity),
                overrides: overrides.into_iter().collect(),
            },
            Arc::default(),
        )
        .unwrap()
    }

    /// Requests: (milliseconds since the previous one, client). Bursts are likely.
    fn arrivals() -> impl Strategy<Value = Vec<(u32, usize)>> {
        let gap = prop_oneof![4 => Just(0u32), 4 => 0u32..200, 1 => 200u32..3_000];
        proptest::collection::vec((gap, 0..CLIENTS), 0..150)
    }

    /// Feeds `arrivals` to each limiter in turn at the same instants; returns, per arrival, its
    /// time (ms) and each limiter's decision.
    fn run(
        limiters: &[RateLimit],
        arrivals: &[(u32, usize)],
        feeds: impl Fn(usize, usize) -> bool,
    ) -> Vec<(u64, Vec<Option<bool>>)> {
        crate::paused_runtime().block_on(async {
            let mut now = 0u64;
            let mut out = Vec::new();
            for &(gap, client) in arrivals {
                tokio::time::advance(Duration::from_millis(u64::from(gap))).await;
                now += u64::from(gap);
                let tls = tls(client);
                let decisions = limiters
                    .iter()
                    .enumerate()
                    .map(|(i, rl)| feeds(i, client).then(|| rl.admit(&tls)))
                    .collect();
                out.push((now, decisions));
            }
            out
        })
    }

    /// Over every stretch [t_i, t_j] between two arrivals (ms), at most `rps` per second plus one
    /// second's worth (each bucket starts full and holds at most one second).
    fn within_rate(admitted: &[(u64, bool)], rps: u32) -> Result<(), TestCaseError> {
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut n = 0u64;
            for &(end, ok) in &admitted[i..] {
                n += u64::from(ok);
                let bound = f64::from(rps) * (1.0 + (end - start) as f64 / 1000.0);
                prop_assert!(
                    n as f64 <= bound + 1e-6,
                    "{n} admitted in [{start} ms, {end} ms] at {rps}/s"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn admitted_requests_never_exceed_the_rate_in_any_window(
            total in proptest::option::of(0u32..20),
            identity in proptest::option::of(0u32..8),
            vip in proptest::option::of(0u32..12),
            arrivals in arrivals(),
        ) {
            let rl = limiter(total, identity, vip);
            let decisions = run(std::slice::from_ref(&rl), &arrivals, |_, _| true);
            let all: Vec<(u64, bool)> =
                decisions.iter().map(|(t, d)| (*t, d[0] == Some(true))).collect();
            if let Some(rps) = total {
                within_rate(&all, rps)?;
            }
            for budget in [0, 3, 4, VIP] {
                let rps = if budget == VIP { vip.or(identity) } else { identity };
                let Some(rps) = rps else { continue };
                let mine: Vec<(u64, bool)> = arrivals
                    .iter()
                    .zip(&all)
                    .filter(|((_, c), _)| budget_of(*c) == budget)
                    .map(|(_, a)| *a)
                    .collect();
                within_rate(&mine, rps)?;
            }
            let refused = all.iter().filter(|(_, ok)| !ok).count() as u64;
            prop_assert_eq!(rl.limited.load(Ordering::Relaxed), refused);
            if total == Some(0) {
                prop_assert_eq!(refused, arrivals.len() as u64, "a zero total admits nothing");
            }
        }

        #[test]
        fn each_identity_has_its_own_budget(
            identity in 0u32..8,
            arrivals in arrivals(),
        ) {
            // One limiter for everyone, and one per budget that sees only that budget's
            // clients: each client's decisions are the same in both.
            let mut limiters = vec![limiter(None, Some(identity), None)];
            limiters.extend((0..CLIENTS).map(|_| limiter(None, Some(identity), None)));
            let decisions = run(&limiters, &arrivals, |i, client| {
                i == 0 || i - 1 == budget_of(client)
            });
            for ((_, client), (t, d)) in arrivals.iter().zip(&decisions) {
                let alone = d[1 + budget_of(*client)];
                prop_assert_eq!(d[0], alone, "client {} at {} ms", client, t);
            }
        }

        #[test]
        fn an_override_applies_to_its_identity_only(
            identity in proptest::option::of(0u32..8),
            vip in 0u32..12,
            arrivals in arrivals(),
        ) {
            // With the override, the other clients are limited as without it, and the vip as
            // if the per-identity limit were its override.
            let limiters = [
                limiter(None, identity, Some(vip)),
                limiter(None, identity, None),
                limiter(None, Some(vip), None),
            ];
            let decisions = run(&limiters, &arrivals, |i, client| match i {
                0 => true,
                1 => client != VIP,
                _ => client == VIP,
            });
            for ((_, client), (t, d)) in arrivals.iter().zip(&decisions) {
                let expected = if *client == VIP { d[2] } else { d[1] };
                prop_assert_eq!(d[0], expected, "client {} at {} ms", client, t);
            }
        }
    }
}
