use super::*;
use crate::resolve::{Endpoints, StaticResolve};
use std::collections::HashMap;

fn ep(i: u8) -> Endpoint {
    Endpoint {
        labels: None,
        addr: SocketAddr::from(([127, 0, 0, i], 80)),
        identity: None,
    }
}

fn ready(ids: &[u8]) -> Resolution {
    Resolution::Ready(ids.iter().map(|i| ep(*i)).collect::<Endpoints>())
}

fn cfg() -> BalanceConfig {
    BalanceConfig::default()
}

/// Sends `n` requests one after another; endpoint `i` takes `rtt(i)` to answer.
async fn run(b: &Balancer, n: usize, mut rtt: impl FnMut(u8) -> Duration) -> HashMap<u8, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let p = b.pick().await.expect("an endpoint");
        let id = match p.endpoint.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        tokio::time::advance(rtt(id)).await;
        p.complete();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn a_ten_times_slower_endpoint_gets_under_ten_percent() {
    let (_tx, rx) = watch::channel(ready(&[1, 2, 3]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let counts = run(&b, 3000, |i| {
        if i == 3 {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(1)
        }
    })
    .await;
    let slow = counts.get(&3).copied().unwrap_or(0);
    assert!(
        slow * 10 < 3000,
        "slow endpoint got {slow} of 3000: {counts:?}"
    );
    // Both fast endpoints share the rest.
    assert!(counts[&1] > 1000 && counts[&2] > 1000, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn equal_endpoints_share_evenly() {
    let (_tx, rx) = watch::channel(ready(&[1, 2, 3, 4]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let counts = run(&b, 4000, |_| Duration::from_millis(2)).await;
    for i in 1..=4 {
        let c = counts[&i];
        assert!((600..=1400).contains(&c), "{counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_steer_new_picks_away() {
    let (_tx, rx) = watch::channel(ready(&[1, 2]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    // Hold many requests on whichever endpoint comes first; the other must then win every pick
    // (same estimate, fewer in flight).
    let first = b.pick().await.unwrap();
    let busy = first.endpoint.clone();
    let mut held = vec![first];
    for _ in 0..5 {
        let p = b.pick().await.unwrap();
        if p.endpoint == busy {
            held.push(p);
        }
    }
    let other = b.pick().await.unwrap();
    assert_ne!(other.endpoint, busy);
    let pending: u32 = held.len() as u32;
    let load = b
        .lock()
        .slots
        .iter()
        .find(|s| s.endpoint == busy)
        .unwrap()
        .load
        .clone();
    assert_eq!(load.pending(), pending);
    drop(held);
    assert_eq!(load.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpoint_is_backed_off_then_retried() {
    let (_tx, rx) = watch::channel(ready(&[1, 2]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let p = b.pick().await.unwrap();
    let bad = p.endpoint.clone();
    p.connect_failed();
    drop(p);
    for _ in 0..50 {
        assert_ne!(b.pick().await.unwrap().endpoint, bad);
    }
    // The first backoff is at most backoff_min.
    tokio::time::advance(cfg().backoff_min).await;
    let mut seen_bad = false;
    for _ in 0..200 {
        let p = b.pick().await.unwrap();
        seen_bad |= p.endpoint == bad;
        // Keep the good one busy so the retried one gets picked.
        std::mem::forget(p);
    }
    assert!(seen_bad, "the backed-off endpoint never came back");
}

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_down_requests_wait_then_fail_fast() {
    let (_tx, rx) = watch::channel(ready(&[1]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    // Fail it repeatedly so its backoff (exponential, capped at 10 s) outlasts the fail-fast
    // timeout; a pick in between may itself time out while the endpoint is backed off.
    let mut failures = 0;
    while failures < 8 {
        if let Ok(p) = b.pick().await {
            p.connect_failed();
            failures += 1;
        }
    }
    let start = Instant::now();
    let err = b.pick().await.unwrap_err();
    assert_eq!(
        err,
        BalanceError::Unavailable("svc:80".into(), cfg().failfast)
    );
    assert_eq!(start.elapsed(), cfg().failfast);
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_waits_for_an_update() {
    let (tx, rx) = watch::channel(ready(&[]));
    let b = Arc::new(Balancer::new("svc:80".into(), rx, cfg()));
    let b2 = b.clone();
    let waiter = tokio::spawn(async move { b2.pick().await.map(|p| p.endpoint.clone()) });
    tokio::time::advance(Duration::from_millis(300)).await;
    tx.send(ready(&[7])).unwrap();
    assert_eq!(waiter.await.unwrap(), Ok(ep(7)));
    // With none again, a request fails after the fail-fast timeout with a clear error.
    tx.send(ready(&[])).unwrap();
    let err = b.pick().await.unwrap_err();
    assert!(matches!(err, BalanceError::Unavailable(..)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn pending_discovery_falls_back_after_the_timeout_unknown_at_once() {
    let (tx, rx) = watch::channel(Resolution::Pending);
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let start = Instant::now();
    assert_eq!(
        b.pick().await.unwrap_err(),
        BalanceError::Unknown("svc:80".into())
    );
    assert_eq!(start.elapsed(), cfg().failfast);
    tx.send(Resolution::Unknown).unwrap();
    let start = Instant::now();
    assert_eq!(
        b.pick().await.unwrap_err(),
        BalanceError::Unknown("svc:80".into())
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn updates_keep_the_load_of_endpoints_that_stay() {
    let (tx, rx) = watch::channel(ready(&[1, 2]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let held = b.pick().await.unwrap();
    let kept = held.endpoint.clone();
    let id = match kept.addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!(),
    };
    tx.send(ready(&[id, 9])).unwrap();
    // The update is applied on the next pick; the held request still counts on `kept`, so the
    // new endpoint wins.
    let p = b.pick().await.unwrap();
    assert_eq!(p.endpoint, ep(9));
    let removed = if id == 1 { ep(2) } else { ep(1) };
    for _ in 0..50 {
        assert_ne!(b.pick().await.unwrap().endpoint, removed);
    }
}

#[tokio::test(start_paused = true)]
async fn balancers_are_shared_and_evicted_when_idle() {
    let resolve = Arc::new(StaticResolve::new(&[(
        "web.local:80".into(),
        vec![("127.0.0.2:8080".parse().unwrap(), None)],
    )]));
    let all = Balancers::new(resolve, cfg());
    assert!(all.get("other:80").is_none());
    let a = all.get("WEB.local:80").unwrap();
    let b = all.get("web.local:80").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    drop((a, b));
    // Used since the last sweep: kept once, then evicted.
    assert_eq!(all.sweep(), 0);
    assert_eq!(all.sweep(), 1);
    assert!(all.is_empty());
    // A held balancer is never evicted.
    let held = all.get("web.local:80").unwrap();
    all.sweep();
    all.sweep();
    assert_eq!(all.len(), 1);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn target_for_falls_back_when_discovery_does_not_know_the_name() {
    let (_tx, rx) = watch::channel(Resolution::Unknown);
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let orig: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let t = target_for(Some(&b), "svc:80", Some(orig)).await.unwrap();
    assert_eq!(t.endpoint().addr, orig);
    let t = target_for(None, "127.0.0.5:81", None).await.unwrap();
    assert_eq!(t.endpoint().addr, "127.0.0.5:81".parse().unwrap());
    let (_tx, rx) = watch::channel(ready(&[]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    let err = target_for(Some(&b), "svc:80", Some(orig))
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::NoEndpoints(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_is_probed_at_once() {
    let (tx, rx) = watch::channel(ready(&[1, 2]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    run(&b, 200, |_| Duration::from_millis(2)).await;
    tx.send(ready(&[1, 2, 3])).unwrap();
    let counts = run(&b, 20, |_| Duration::from_millis(2)).await;
    assert!(counts.get(&3).copied().unwrap_or(0) >= 1, "{counts:?}");
    // Measured as fast as the others, it then takes its share.
    let counts = run(&b, 600, |_| Duration::from_millis(2)).await;
    assert!(counts[&3] > 100, "{counts:?}");
}

/// The first response of a new endpoint usually paid for connecting and the TLS handshake: it
/// must not make the endpoint look slow for the length of the decay.
#[tokio::test(start_paused = true)]
async fn a_slow_first_response_is_not_held_against_an_endpoint() {
    let (tx, rx) = watch::channel(ready(&[1]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    run(&b, 100, |_| Duration::from_millis(2)).await;
    tx.send(ready(&[1, 2])).unwrap();
    let mut first = true;
    let counts = run(&b, 40, |id| {
        if id == 2 && std::mem::take(&mut first) {
            // Connect + handshake on the first request only.
            Duration::from_millis(8)
        } else {
            Duration::from_millis(2)
        }
    })
    .await;
    // Within 40 requests (80 ms, far less than the 10 s decay) the new endpoint, as fast as
    // the old one after its first response, takes a real share.
    assert!(counts.get(&2).copied().unwrap_or(0) >= 10, "{counts:?}");
}

fn id_of(p: &Picked) -> u8 {
    match p.endpoint.addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn failure_accrual_ejects_probes_with_growing_backoff_and_readmits() {
    use crate::backoff::Backoff;
    let accrual = Accrual {
        max_failures: 3,
        backoff: Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(8),
            jitter: 0.0,
        },
    };
    let (_tx, rx) = watch::channel(ready(&[1, 2]));
    let b = Balancer::new("svc:80".into(), rx, cfg());
    // Endpoint 2 fails every response; endpoint 1 succeeds.
    let mut sent_to_2 = 0;
    async fn send(b: &Balancer, accrual: &Accrual) -> u8 {
        let p = b.pick().await.expect("an endpoint");
        let id = id_of(&p);
        p.complete();
        p.accrue(id != 2, accrual);
        id
    }
    // Until three failures in a row, endpoint 2 is still picked.
    while sent_to_2 < 3 {
        if send(&b, &accrual).await == 2 {
            sent_to_2 += 1;
        }
    }
    // Ejected for 1 s: nothing goes to it.
    for _ in 0..100 {
        assert_eq!(send(&b, &accrual).await, 1);
    }
    // After the backoff, one probe; it fails and the endpoint is out for 2 s.
    tokio::time::advance(Duration::from_millis(1001)).await;
    let mut probes = 0;
    for _ in 0..200 {
        if send(&b, &accrual).await == 2 {
            probes += 1;
        }
    }
    assert_eq!(probes, 1, "one probe per backoff");
    tokio::time::advance(Duration::from_millis(1500)).await;
    for _ in 0..100 {
        assert_eq!(
            send(&b, &accrual).await,
            1,
            "still out: the second backoff is 2 s"
        );
    }
    // Recovered: the next probe succeeds and the endpoint takes traffic again.
    tokio::time::advance(Duration::from_millis(600)).await;
    let mut served = 0;
    for _ in 0..200 {
        let p = b.pick().await.expect("an endpoint");
        if id_of(&p) == 2 {
            served += 1;
        }
        p.complete();
        p.accrue(true, &accrual);
    }
    assert!(served > 20, "readmitted endpoint served {served} of 200");
}
