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
        let (_, name) = super::metadata_name(rl.metadata, "ratelimit");
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
