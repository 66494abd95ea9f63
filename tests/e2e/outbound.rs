//! Outbound policy: a policy service (real gRPC) gives the client-side proxy the routes of a
//! service: weighted splits, retries within a budget, timeouts, failure accrual and fault
//! injection, applied per request. The split and retry tests run over real mTLS (each backend
//! app behind its own proxy, certified by the identity service).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use linkerd_proxy::{
    config::{
        ENV_DESTINATION_SVC_ADDR, ENV_INBOUND_FORWARD_ADDR, ENV_POLICY_SVC_ADDR,
        ENV_POLICY_WORKLOAD, ENV_STATIC_ENDPOINTS,
    },
    http::L5D_PROXY_ERROR,
};
use linkerd_tests::{
    assert_eventually, client,
    discovery::Discovery,
    mesh::{IdentityService, identity, leaf_policy, meshed_endpoint},
    metrics::Metrics,
    outbound::{
        OutboundPolicyServer, consecutive_failures, header, http_policy, path_prefix, route, split,
        with_fault, with_retries, with_timeout,
    },
    proxy::TestProxy,
    run,
};
use linkerd2_proxy_api::outbound::{OutboundPolicy, http_route};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::net::TcpListener;

const WORKLOAD: &str = r#"{"ns":"shop","pod":"client-0"}"#;
const WEB: &str = "web.shop.svc.cluster.local:80";
const WEB_V1: &str = "web-v1.shop.svc.cluster.local:80";
const WEB_V2: &str = "web-v2.shop.svc.cluster.local:80";
const URL: &str = "http://web.shop.svc.cluster.local/";

/// What an app does with a request.
#[derive(Clone, Default)]
struct Behaviour {
    /// Every `n`th request (1-based) fails with 503; 0: never.
    fail_every: u64,
    /// Every request fails with 500 while set.
    broken: Arc<AtomicBool>,
    delay: Duration,
}

/// An HTTP/1.1 app that answers `<name> <request body>`, counting what it served.
struct App {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(name: &'static str, b: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let (h, seen, b) = (h.clone(), seen.clone(), b.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, seen, b) = (h.clone(), seen.clone(), b.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|c| c.to_bytes());
                            let body = body.unwrap_or_default();
                            tokio::time::sleep(b.delay).await;
                            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                            let status = if b.broken.load(Ordering::SeqCst) {
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else if b.fail_every > 0 && n % b.fail_every == 0 {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                h.fetch_add(1, Ordering::SeqCst);
                                StatusCode::OK
                            };
                            let mut text = format!("{name} ").into_bytes();
                            text.extend_from_slice(&body);
                            let mut rsp = Response::new(Full::new(Bytes::from(text)));
                            *rsp.status_mut() = status;
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A policy service whose policy for [`WEB`] is `policy`, and a client proxy (certified by
/// `ids` if given) that asks it for outbound policies and resolves names from `endpoints`
/// (`MESH_PROXY_STATIC_ENDPOINTS`), with an (empty) destination service so that
/// `*.svc.cluster.local` names are in discovery's scope.
async fn routed(
    ids: Option<&IdentityService>,
    policy: OutboundPolicy,
    endpoints: &str,
) -> (OutboundPolicyServer, Discovery, TestProxy) {
    let policies = OutboundPolicyServer::start().await;
    policies.set(WEB, policy);
    let discovery = Discovery::start();
    let (p, d) = (policies.addr.to_string(), discovery.addr.to_string());
    let env = [
        (ENV_POLICY_SVC_ADDR, p.as_str()),
        (ENV_POLICY_WORKLOAD, WORKLOAD),
        (ENV_DESTINATION_SVC_ADDR, d.as_str()),
        (ENV_STATIC_ENDPOINTS, endpoints),
    ];
    let client = match ids {
        Some(ids) => ids.proxy(&identity("client"), &env).await,
        None => TestProxy::start(&env).await,
    };
    (policies, discovery, client)
}

/// The policy for [`WEB`]: one route, `web`, with `rules`; no failure accrual.
fn web_routes(rules: Vec<http_route::Rule>) -> OutboundPolicy {
    http_policy(WEB, vec![route("web", rules)], None)
}

/// `app` behind its own proxy, certified as `sa`: the endpoint entry naming it meshed.
async fn meshed(ids: &IdentityService, name: &str, sa: &str, app: &App) -> (TestProxy, String) {
    let id = identity(sa);
    let fwd = app.addr.to_string();
    let proxy = ids.proxy(&id, &[(ENV_INBOUND_FORWARD_ADDR, &fwd)]).await;
    let ep = meshed_endpoint(name, proxy.inbound, &id);
    (proxy, ep)
}

/// One reply: status, body, `l5d-proxy-error`, and whether the body ends with the request's
/// own body (the app echoes it).
type Reply = (u16, String, String, bool);

/// Sends `n` POSTs (each with its own body) over `conns` concurrent HTTP/1.1 connections to the
/// proxy's outbound listener.
async fn send(proxy: &TestProxy, n: usize, conns: usize, url: &str) -> Vec<Reply> {
    let per = n / conns;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, url) = (proxy.outbound, url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = client::http1(addr).await;
            let mut out = Vec::with_capacity(per);
            for i in 0..per {
                let body = format!("c{c}-r{i}");
                let req = client::request(http::Method::POST, &url, client::full(body.clone()));
                let rsp = client::send1(&mut conn, req).await;
                let text = rsp.text();
                let echoed = text.ends_with(&format!(" {body}"));
                out.push((
                    rsp.status.as_u16(),
                    text,
                    rsp.header(L5D_PROXY_ERROR).unwrap_or_default().to_string(),
                    echoed,
                ));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.expect("sender task"));
    }
    all
}

fn count(replies: &[Reply], f: impl Fn(&Reply) -> bool) -> usize {
    replies.iter().filter(|r| f(r)).count()
}

/// Asserts that `part` of `total` replies falls in `expected` (a share, 0 to 1); prints it.
fn assert_share(what: &str, part: usize, total: usize, expected: std::ops::RangeInclusive<f64>) {
    let share = part as f64 / total as f64;
    eprintln!("{what}: {:.1}% ({part} of {total})", share * 100.0);
    assert!(
        expected.contains(&share),
        "{what}: {:.1}% ({part} of {total}), expected {:.1}%..={:.1}%",
        share * 100.0,
        expected.start() * 100.0,
        expected.end() * 100.0
    );
}

fn route_counter(m: &Metrics, name: &str) -> f64 {
    m.sum(name, &[("route_name", "web")])
}

fn policy() -> linkerd_identity::ca::LeafPolicy {
    leaf_policy(Duration::from_secs(3600), Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_lands_within_a_few_percent_of_90_10_and_updates_apply_at_once() {
    run(async {
        let ids = IdentityService::start(policy()).await;
        let (v1, v2) = (
            App::start("v1", Behaviour::default()).await,
            App::start("v2", Behaviour::default()).await,
        );
        let (_p1, ep1) = meshed(&ids, WEB_V1, "web-v1", &v1).await;
        let (_p2, ep2) = meshed(&ids, WEB_V2, "web-v2", &v2).await;
        // The parent service itself resolves to v1 only: a 90/10 outcome needs the policy.
        let ep_parent = ep1.replacen(WEB_V1, WEB, 1);
        let eps = format!("{ep1};{ep2};{ep_parent}");
        let (policies, _discovery, client) = routed(
            Some(&ids),
            web_routes(vec![split(&[(WEB_V1, 90), (WEB_V2, 10)])]),
            &eps,
        )
        .await;

        let replies = send(&client, 2000, 4, URL).await;
        let ok = count(&replies, |r| r.0 == 200);
        assert_eq!(ok, 2000, "{:?}", replies.iter().find(|r| r.0 != 200));
        let to_v2 = count(&replies, |r| r.1.starts_with("v2 "));
        assert_share("to v2", to_v2, 2000, 0.075..=0.125);
        // Bodies arrive intact through the split and the mTLS hop.
        assert_eq!(count(&replies, |r| r.3), 2000);
        assert_eq!(v1.hits() + v2.hits(), 2000);
        let m = client.metrics().await;
        assert!(
            m.sum(
                "response_total",
                &[("authority", "web.shop.svc.cluster.local"), ("tls", "true")]
            ) >= 2000.0,
            "{}",
            m.text
        );

        // All traffic to v2 now: the next requests on the same connections follow.
        policies.set(WEB, web_routes(vec![split(&[(WEB_V2, 1)])]));
        let mut conn = client::http1(client.outbound).await;
        assert_eventually!({
            let rsp = client::send1(&mut conn, client::get_request(URL)).await;
            rsp.text().starts_with("v2 ")
        });
        let replies = send(&client, 100, 2, URL).await;
        assert_eq!(count(&replies, |r| r.1.starts_with("v2 ")), 100);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_route_requests_by_header_and_path_and_unmatched_get_404() {
    run(async {
        let (v1, v2) = (
            App::start("v1", Behaviour::default()).await,
            App::start("v2", Behaviour::default()).await,
        );
        let eps = format!("{WEB_V1}={};{WEB_V2}={}", v1.addr, v2.addr);
        let (_policies, _discovery, client) = routed(
            None,
            web_routes(vec![
                path_prefix(split(&[(WEB_V1, 1)]), "/api"),
                header(
                    path_prefix(split(&[(WEB_V2, 1)]), "/api"),
                    "x-canary",
                    "yes",
                ),
            ]),
            &eps,
        )
        .await;
        let api = format!("{URL}api/items");
        let rsp = client::get(client.outbound, &api).await;
        assert_eq!((rsp.status.as_u16(), rsp.text()), (200, "v1 ".to_string()));
        let mut req = client::get_request(&api);
        req.headers_mut()
            .insert("x-canary", http::HeaderValue::from_static("yes"));
        let mut conn = client::http1(client.outbound).await;
        let rsp = client::send1(&mut conn, req).await;
        assert_eq!((rsp.status.as_u16(), rsp.text()), (200, "v2 ".to_string()));
        // `/apix` is not under the `/api` prefix.
        let rsp = client::get(client.outbound, &format!("{URL}apix")).await;
        assert_eq!(rsp.status, 404, "{}", rsp.text());
        assert!(
            rsp.header(L5D_PROXY_ERROR)
                .is_some_and(|e| e.contains("no route"))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_backend_that_fails_a_fifth_of_requests() {
    run(async {
        let ids = IdentityService::start(policy()).await;
        let flaky = App::start(
            "flaky",
            Behaviour {
                fail_every: 5,
                ..Behaviour::default()
            },
        )
        .await;
        let (_p, ep) = meshed(&ids, WEB, "web", &flaky).await;
        let (_policies, _discovery, client) = routed(
            Some(&ids),
            web_routes(vec![with_retries(split(&[(WEB, 1)]), 2)]),
            &ep,
        )
        .await;

        let replies = send(&client, 500, 2, URL).await;
        let failed: Vec<_> = replies.iter().filter(|r| r.0 != 200).collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed.first()
        );
        // Each reply carries its own request's body: the retried POSTs were replayed whole.
        assert_eq!(count(&replies, |r| r.3), 500);
        let m = client.metrics().await;
        let retries = route_counter(&m, "outbound_http_route_retry_requests_total");
        // One request in five failed once: about 125 retries for 500 requests.
        assert!(
            (100.0..=160.0).contains(&retries),
            "{retries} retries\n{}",
            m.text
        );
        // Every retried request finally succeeded (some after two retries); every request is
        // in Linkerd's route families, labelled with the route's and parent's metadata.
        let successes = route_counter(&m, "outbound_http_route_retry_successes_total");
        assert!(
            successes >= retries / 2.0 && successes <= retries,
            "{}",
            m.text
        );
        let labels = [
            ("route_name", "web"),
            ("route_kind", "HTTPRoute"),
            ("http_status", "200"),
        ];
        assert_eq!(
            m.sum("outbound_http_route_request_statuses_total", &labels),
            500.0,
            "{}",
            m.text
        );
        assert_eq!(
            route_counter(&m, "outbound_http_route_request_duration_seconds_count"),
            500.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retries_multiplying_load_on_a_failing_backend() {
    run(async {
        let broken = Behaviour::default();
        broken.broken.store(true, Ordering::SeqCst);
        let app = App::start("down", broken).await;
        let (_policies, _discovery, client) = routed(
            None,
            web_routes(vec![with_retries(split(&[(WEB, 1)]), 3)]),
            &format!("{WEB}={}", app.addr),
        )
        .await;
        let replies = send(&client, 400, 2, URL).await;
        assert_eq!(count(&replies, |r| r.0 == 500), 400);
        let m = client.metrics().await;
        let retries = route_counter(&m, "outbound_http_route_retry_requests_total");
        let overflow = route_counter(&m, "outbound_http_route_retry_overflow_total");
        // Without a budget: 3 × 400 = 1,200 retries. With it: 20% of the requests plus 10/s
        // over the 10 s window.
        assert!(
            retries <= 0.2 * 400.0 + 100.0,
            "{retries} retries\n{}",
            m.text
        );
        assert!(retries >= 80.0, "{retries} retries\n{}", m.text);
        assert!(overflow >= 200.0, "{overflow} overflows\n{}", m.text);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_accrual_ejects_a_failing_endpoint_and_readmits_it_when_it_recovers() {
    run(async {
        let good = App::start("good", Behaviour::default()).await;
        let sick = Behaviour::default();
        sick.broken.store(true, Ordering::SeqCst);
        let bad = App::start("bad", sick.clone()).await;
        let accrual =
            consecutive_failures(3, Duration::from_millis(500), Duration::from_millis(500));
        let eps = format!("{WEB}={}|{}", good.addr, bad.addr);
        let (_policies, _discovery, client) = routed(
            None,
            http_policy(
                WEB,
                vec![route("web", vec![split(&[(WEB, 1)])])],
                Some(accrual),
            ),
            &eps,
        )
        .await;

        // A fast 500 looks cheap to the latency balancer: without accrual the failing
        // endpoint would take most requests. Ejected after 3 failures and probed once per
        // backoff, it sees a handful.
        let started = tokio::time::Instant::now();
        let replies = send(&client, 600, 2, URL).await;
        let secs = started.elapsed().as_secs_f64();
        let failed = count(&replies, |r| r.0 == 500);
        let probes_allowed = 3.0 + 2.0 * (secs / 0.5 + 1.0);
        eprintln!("{failed} of 600 failed in {secs:.2}s");
        assert!(
            (failed as f64) <= probes_allowed,
            "{failed} failures in {secs:.2}s (at most {probes_allowed:.0} expected)"
        );
        assert!(failed >= 3, "the failing endpoint was never tried");

        // Recovered: readmitted after its next probe, and it serves again.
        sick.broken.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = bad.hits();
        assert_eventually!({
            let _ = send(&client, 50, 1, URL).await;
            bad.hits() > before + 5
        });
        let replies = send(&client, 200, 2, URL).await;
        assert_eq!(count(&replies, |r| r.0 == 200), 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_hits_the_route_timeout_with_a_504() {
    run(async {
        let slow = App::start(
            "slow",
            Behaviour {
                delay: Duration::from_secs(3),
                ..Behaviour::default()
            },
        )
        .await;
        let (_policies, _discovery, client) = routed(
            None,
            web_routes(vec![with_timeout(
                split(&[(WEB, 1)]),
                Duration::from_millis(200),
            )]),
            &format!("{WEB}={}", slow.addr),
        )
        .await;
        let started = tokio::time::Instant::now();
        let rsp = client::get(client.outbound, URL).await;
        assert_eq!(rsp.status, 504, "{}", rsp.text());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            rsp.header(L5D_PROXY_ERROR)
                .is_some_and(|e| e.contains("timed out")),
            "{:?}",
            rsp.headers
        );
        // gRPC callers get DEADLINE_EXCEEDED.
        let mut req = client::request(http::Method::POST, URL, client::empty());
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("header"));
        let mut conn = client::http1(client.outbound).await;
        let rsp = client::send1(&mut conn, req).await;
        assert_eq!(rsp.header("grpc-status"), Some("4"), "{:?}", rsp.headers);
        let m = client.metrics().await;
        assert!(
            route_counter(&m, "outbound_http_route_timeouts_total") >= 2.0,
            "{}",
            m.text
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_fails_the_configured_share_without_reaching_the_backend() {
    run(async {
        let app = App::start("app", Behaviour::default()).await;
        let (_policies, _discovery, client) = routed(
            None,
            web_routes(vec![with_fault(split(&[(WEB, 1)]), 503, 1, 4)]),
            &format!("{WEB}={}", app.addr),
        )
        .await;
        let replies = send(&client, 800, 2, URL).await;
        let injected = count(&replies, |r| r.0 == 503 && r.2.contains("injected"));
        let ok = count(&replies, |r| r.0 == 200);
        assert_eq!(injected + ok, 800);
        assert_share("injected", injected, 800, 0.19..=0.31);
        // Injected failures never reach the app.
        assert_eq!(app.hits(), ok);
        let m = client.metrics().await;
        assert_eq!(
            route_counter(&m, "outbound_http_route_faults_injected_total"),
            injected as f64
        );
    })
    .await;
}
