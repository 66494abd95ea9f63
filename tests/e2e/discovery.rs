//! Service discovery and load balancing: the proxy resolves a logical name through a real
//! `Destination/Get` gRPC stream and balances requests over the endpoints it streams.

use linkerd_tests::{
    assert_eventually,
    client::{self, get_request},
    discovery::{Discovery, Endpoint},
    proxy::TestProxy,
    run,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

const NAME: &str = "web.ns.svc.cluster.local:80";
const URL: &str = "http://web.ns.svc.cluster.local/";

async fn proxy(d: &Discovery) -> TestProxy {
    TestProxy::start(&[
        ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &d.addr.to_string()),
        ("LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT", "500ms"),
    ])
    .await
}

/// `workers` HTTP/1.1 connections sending requests through the proxy's outbound (HTTP proxy)
/// listener back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: &TestProxy, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let mut c = client::http1(proxy.outbound).await;
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = client::send1(&mut c, get_request(URL)).await;
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.lock().unwrap().push(format!(
                            "{} {:?} {}",
                            r.status,
                            r.header("l5d-proxy-error"),
                            r.text()
                        ));
                    }
                }
            }));
        }
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the workers, which must not have failed a request; returns the successes.
    async fn stop_without_failures(self) -> usize {
        let (ok, failed) = self.stop().await;
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        ok
    }

    /// Stops the workers; returns (successes, failures).
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed)
    }
}

/// Endpoints answering after `delays`, a discovery service serving those at `serving` (indexes)
/// for [`NAME`], a proxy using it, and a load of 4 connections through the proxy.
async fn balanced(
    delays: &[Duration],
    serving: &[usize],
) -> (Vec<Endpoint>, Discovery, TestProxy, Load) {
    let mut eps = Vec::new();
    for delay in delays {
        eps.push(Endpoint::start(*delay).await);
    }
    let d = Discovery::start();
    d.set(
        NAME,
        &serving.iter().map(|i| eps[*i].addr).collect::<Vec<_>>(),
    );
    let p = proxy(&d).await;
    let load = Load::start(&p, 4).await;
    (eps, d, p, load)
}

/// Waits until `ep` has served `more` requests beyond what it had.
async fn serves(ep: &Endpoint, more: usize) {
    let target = ep.hits() + more;
    assert_eventually!(ep.hits() >= target, "{} stuck at {}", ep.addr, ep.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_and_removed_under_load_lose_no_request() {
    run(async {
        let (eps, d, _p, load) = balanced(&[Duration::ZERO; 3], &[0]).await;
        serves(&eps[0], 50).await;
        assert_eq!(eps[1].hits() + eps[2].hits(), 0);

        // Scale out: new endpoints take traffic.
        d.set(NAME, &[eps[0].addr, eps[1].addr, eps[2].addr]);
        serves(&eps[1], 50).await;
        serves(&eps[2], 50).await;

        // Scale in: the removed endpoint gets nothing new once the update has arrived.
        d.set(NAME, &[eps[1].addr, eps[2].addr]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let frozen = eps[0].hits();
        serves(&eps[1], 100).await;
        serves(&eps[2], 100).await;
        assert_eq!(
            eps[0].hits(),
            frozen,
            "a removed endpoint still gets requests"
        );

        // Replace everything at once.
        d.set(NAME, &[eps[0].addr]);
        serves(&eps[0], 100).await;

        let ok = load.stop_without_failures().await;
        assert!(ok > 400, "only {ok} requests");
        assert_eq!(
            d.watchers(),
            1,
            "one watch per destination, shared by every connection"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_times_slower_endpoint_gets_under_ten_percent_of_requests() {
    run(async {
        let ms = Duration::from_millis;
        let (eps, _d, p, load) = balanced(&[ms(2), ms(2), ms(20)], &[0, 1, 2]).await;
        assert_eventually!(load.ok() >= 1500, "only {} requests", load.ok());
        let ok = load.stop_without_failures().await;
        let hits: Vec<usize> = eps.iter().map(|e| e.hits()).collect();
        let slow = hits[2] as f64 / ok as f64;
        eprintln!("hits {hits:?} of {ok}: slow share {:.1}%", slow * 100.0);
        assert!(
            slow < 0.10,
            "slow endpoint got {:.1}% ({hits:?})",
            slow * 100.0
        );
        // The fast ones share the rest.
        assert!(hits[0] > ok / 4 && hits[1] > ok / 4, "{hits:?}");
        // Each endpoint's requests carry the labels discovery gave it, as `dst_*`.
        let m = p.metrics().await;
        for e in &eps {
            let pod = format!("pod-{}", e.addr.port());
            let labels = [
                ("direction", "outbound"),
                ("dst_namespace", "test"),
                ("dst_pod", pod.as_str()),
            ];
            assert!(m.sum("request_total", &labels) > 0.0, "{pod}: {}", m.text);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_goes_on_when_the_destination_service_dies() {
    run(async {
        let (eps, mut d, _p, load) = balanced(&[Duration::ZERO; 2], &[0, 1]).await;
        serves(&eps[0], 20).await;
        serves(&eps[1], 20).await;
        d.kill();
        // Longer than the fail-fast timeout and several reconnect attempts.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        serves(&eps[0], 100).await;
        serves(&eps[1], 100).await;
        let ok = load.stop_without_failures().await;
        assert!(ok > 200);
    })
    .await
}

#[tokio::test]
async fn a_service_with_no_endpoints_fails_fast_with_503() {
    run(async {
        let d = Discovery::start();
        d.set(NAME, &[]);
        let p = proxy(&d).await;
        let start = tokio::time::Instant::now();
        let r = client::get(p.outbound, URL).await;
        assert_eq!(r.status, 503, "{}", r.text());
        let err = r.header("l5d-proxy-error").unwrap_or_default().to_string();
        assert!(err.contains("no endpoints"), "{err}");
        // The fail-fast timeout (500 ms), not a hang.
        assert!(start.elapsed() < Duration::from_secs(5));

        // Endpoints appearing while a request waits are used at once.
        let ep = Endpoint::start(Duration::ZERO).await;
        let waiting = tokio::spawn({
            let outbound = p.outbound;
            async move { client::get(outbound, URL).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.set(NAME, &[ep.addr]);
        let r = waiting.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ep.hits(), 1);
    })
    .await
}
