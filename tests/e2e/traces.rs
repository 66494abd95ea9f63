//! Distributed tracing and access logs, end to end: two sidecars over mTLS (A, the client's
//! outbound side; B, the server's inbound side) export spans to an independent OTLP receiver
//! (`tests/python/otlp_receiver.py`: Python's grpcio with the `opentelemetry-proto` package),
//! which prints each span it receives as a JSON line.
//!
//! Skipped without a python3 that imports `grpc` and `opentelemetry.proto`, unless
//! MESH_REQUIRE_NETNS=1 (CI) makes that a failure. On Debian: `apt-get install python3-grpcio`
//! and `pip install --no-deps opentelemetry-proto==1.26.0` (the last release whose messages
//! load with Debian's protobuf 4).

use linkerd_proxy::config::{
    ENV_ACCESS_LOG, ENV_INBOUND_FORWARD_ADDR, ENV_STATIC_ENDPOINTS, ENV_TRACE_COLLECTOR_SVC_ADDR,
    ENV_TRACE_SAMPLE_RATIO, ENV_TRACE_SERVICE_NAME,
};
use linkerd_tests::{
    assert_eventually,
    client::{self, Reply},
    mesh::{self, IdentityService, identity, leaf_policy, meshed_endpoint},
    proxy::{ProxyProcess, TestProxy},
    run,
    server::TestServer,
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const WEB: &str = "web.test:80";
const GRPC: &str = "grpc.test:80";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SPAN_KIND_SERVER: i64 = 2;
const SPAN_KIND_CLIENT: i64 = 3;

/// The receiver process and the spans it printed.
struct Receiver {
    _child: Child,
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Starts the receiver in `mode` (`ok`, `slow <secs>`, `fail`); `None` when Python lacks
    /// the modules (the test is skipped).
    async fn start(args: &[&str]) -> Option<Self> {
        let py = find_python().await?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/otlp_receiver.py");
        let mut child = Command::new(py)
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the receiver starts")
            .unwrap()
            .expect("a PORT line");
        let port: u16 = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("a JSON span");
                sink.lock().unwrap().push(v);
            }
        });
        Some(Self {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            spans,
        })
    }

    fn of_trace(&self, trace: &str) -> Vec<Value> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s["trace_id"] == trace)
            .cloned()
            .collect()
    }

    fn count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

async fn find_python() -> Option<String> {
    let modules = "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc";
    let mut why = Vec::new();
    for py in ["python3", "/usr/bin/python3"] {
        match Command::new(py).args(["-c", modules]).output().await {
            Ok(out) if out.status.success() => return Some(py.to_string()),
            Ok(out) => why.push(format!(
                "{py}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => why.push(format!("{py}: {e}")),
        }
    }
    assert!(
        std::env::var("MESH_REQUIRE_NETNS").as_deref() != Ok("1"),
        "python3 with grpc and opentelemetry-proto is required (MESH_REQUIRE_NETNS=1): {why:?}"
    );
    eprintln!("SKIPPED: no python3 with grpc and opentelemetry-proto ({why:?})");
    None
}

/// A: the client's sidecar; B: the server's, in front of `app`; both tracing to `collector`.
struct Pair {
    _svc: IdentityService,
    a: TestProxy,
    b: TestProxy,
    a_id: String,
}

async fn pair(app: SocketAddr, dst: &str, collector: SocketAddr, ratio: &str) -> Pair {
    let svc = IdentityService::start(leaf_policy(
        Duration::from_secs(3600),
        Duration::from_secs(20),
    ))
    .await;
    let (a_id, b_id) = (identity("traced-client"), identity("traced-server"));
    let collector = collector.to_string();
    let app = app.to_string();
    let b = svc
        .proxy(
            &b_id,
            &[
                (ENV_INBOUND_FORWARD_ADDR, &app),
                (ENV_TRACE_COLLECTOR_SVC_ADDR, &collector),
                (ENV_TRACE_SERVICE_NAME, "server"),
            ],
        )
        .await;
    let endpoints = meshed_endpoint(dst, b.inbound, &b_id);
    let a = svc
        .proxy(
            &a_id,
            &[
                (ENV_STATIC_ENDPOINTS, &endpoints),
                (ENV_TRACE_COLLECTOR_SVC_ADDR, &collector),
                (ENV_TRACE_SERVICE_NAME, "client"),
                (ENV_TRACE_SAMPLE_RATIO, ratio),
            ],
        )
        .await;
    Pair {
        _svc: svc,
        a,
        b,
        a_id,
    }
}

fn str_attr<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attrs"][key].as_str().unwrap_or("")
}

/// The trace's client span (A's) and server span (B's), once both arrived; checks how they
/// hang together and returns them.
async fn client_and_server(rx: &Receiver, trace: &str) -> (Value, Value) {
    let mut found;
    assert_eventually!({
        let spans = rx.of_trace(trace);
        let client = spans
            .iter()
            .find(|s| s["kind"] == SPAN_KIND_CLIENT)
            .cloned();
        let server = spans
            .iter()
            .find(|s| s["kind"] == SPAN_KIND_SERVER)
            .cloned();
        found = client.zip(server);
        found.is_some()
    });
    let (client, server) = found.unwrap();
    assert_eq!(client["resource"]["service.name"], "client", "{client}");
    assert_eq!(server["resource"]["service.name"], "server", "{server}");
    assert_eq!(str_attr(&client, "direction"), "outbound");
    assert_eq!(str_attr(&server, "direction"), "inbound");
    // B's span is the child of A's: A forwarded its own span id.
    assert_eq!(server["parent_span_id"], client["span_id"], "{server}");
    assert_ne!(client["span_id"], server["span_id"]);
    (client, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_through_two_sidecars_is_one_trace() {
    run(async {
        let Some(rx) = Receiver::start(&["ok"]).await else {
            return;
        };
        let app = TestServer::start().await;
        let p = pair(app.addr(), WEB, rx.addr, "0").await;
        let traceparent = format!("00-{TRACE}-{PARENT}-01");

        // HTTP/1.1, carried between the sidecars over HTTP/2 and mTLS.
        let mut h1 = client::http1(p.a.outbound).await;
        let mut req = client::request(
            http::Method::POST,
            &format!("http://{WEB}/echo?q=1"),
            client::full("traced"),
        );
        req.headers_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        req.headers_mut()
            .insert("tracestate", "vendor=opaque".parse().unwrap());
        let rsp = client::send1(&mut h1, req).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let (client, server) = client_and_server(&rx, TRACE).await;
        assert_eq!(client["parent_span_id"], PARENT, "{client}");
        // The app's parent is B's span; the flags and tracestate pass through.
        let seen = rsp.header("x-req-traceparent").unwrap();
        let server_span = server["span_id"].as_str().unwrap();
        assert_eq!(seen, format!("00-{TRACE}-{server_span}-01"));
        assert_eq!(rsp.header("x-req-tracestate"), Some("vendor=opaque"));
        for s in [&client, &server] {
            assert_eq!(str_attr(s, "http.request.method"), "POST");
            assert_eq!(str_attr(s, "url.path"), "/echo");
            assert_eq!(str_attr(s, "url.query"), "q=1");
            assert_eq!(str_attr(s, "server.address"), "web.test");
            assert_eq!(s["attrs"]["server.port"], 80);
            assert_eq!(s["attrs"]["http.response.status_code"], 200);
            assert!(s["end"].as_u64().unwrap() >= s["start"].as_u64().unwrap());
            // The parent came from another process.
            assert_eq!(s["flags"].as_u64().unwrap() & 0x301, 0x301, "{s}");
        }
        assert_eq!(str_attr(&client, "network.protocol.version"), "1.1");
        // Each side names the other's verified identity.
        assert_eq!(str_attr(&server, "mesh.peer.identity"), p.a_id);
        assert!(str_attr(&client, "mesh.peer.identity").starts_with("traced-server."));
        // Client and server span start within the client span.
        let (cs, ce) = (
            client["start"].as_u64().unwrap(),
            client["end"].as_u64().unwrap(),
        );
        let ss = server["start"].as_u64().unwrap();
        assert!(cs <= ss && ss <= ce, "{client} {server}");

        // HTTP/2.
        let trace2 = "11111111111111111111111111111111";
        let mut h2 = client::http2(p.a.outbound).await;
        let mut req = client::request(
            http::Method::GET,
            &format!("http://{WEB}/echo"),
            client::empty(),
        );
        req.headers_mut().insert(
            "traceparent",
            format!("00-{trace2}-{PARENT}-01").parse().unwrap(),
        );
        let rsp = client::send2(&mut h2, req).await;
        assert_eq!(rsp.status, 200);
        let (client, _) = client_and_server(&rx, trace2).await;
        assert_eq!(str_attr(&client, "network.protocol.version"), "2");

        // An application error is the span's status, not the proxy's.
        let trace3 = "33333333333333333333333333333333";
        let mut req = client::request(
            http::Method::GET,
            &format!("http://{WEB}/status/503"),
            client::empty(),
        );
        req.headers_mut().insert(
            "traceparent",
            format!("00-{trace3}-{PARENT}-01").parse().unwrap(),
        );
        assert_eq!(client::send1(&mut h1, req).await.status, 503);
        let (client, server) = client_and_server(&rx, trace3).await;
        for s in [&client, &server] {
            assert_eq!(s["status"], 2, "STATUS_CODE_ERROR: {s}");
            assert_eq!(str_attr(s, "error.type"), "503");
        }

        let m = p.a.metrics().await;
        assert!(
            m.sum("proxy_trace_spans_exported_total", &[]) >= 3.0,
            "{}",
            m.text
        );
        let m = p.b.metrics().await;
        assert!(
            m.sum("proxy_trace_spans_exported_total", &[]) >= 3.0,
            "{}",
            m.text
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_traced() {
    run(async {
        let Some(rx) = Receiver::start(&["ok"]).await else {
            return;
        };
        let (server, _task) = mesh::serve_client_id_echo().await;
        let p = pair(server, GRPC, rx.addr, "0").await;
        let mut grpc = linkerd_tests::grpc::client_via(p.a.outbound, GRPC).await;
        let trace = "22222222222222222222222222222222";
        let mut req = tonic::Request::new(linkerd_tests::grpc::get_destination("web:80"));
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-{PARENT}-01").parse().unwrap(),
        );
        let err = grpc.get_profile(req).await.expect_err("GetProfile fails");
        assert_eq!(err.code(), tonic::Code::NotFound);
        let (client, server) = client_and_server(&rx, trace).await;
        for s in [&client, &server] {
            assert_eq!(
                str_attr(s, "url.path"),
                "/io.linkerd.proxy.destination.Destination/GetProfile"
            );
            assert_eq!(s["attrs"]["rpc.grpc.status_code"], 5, "{s}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_contexts_are_continued_in_b3() {
    run(async {
        let Some(rx) = Receiver::start(&["ok"]).await else {
            return;
        };
        let app = TestServer::start().await;
        let p = pair(app.addr(), WEB, rx.addr, "0").await;

        // Several headers, with a 64-bit trace id.
        let short = "a3ce929d0e0e4736";
        let rsp = b3_request(
            p.a.outbound,
            &[
                ("x-b3-traceid", short),
                ("x-b3-spanid", PARENT),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
        let long = format!("0000000000000000{short}");
        let (client, server) = client_and_server(&rx, &long).await;
        assert_eq!(client["parent_span_id"], PARENT);
        assert_eq!(rsp.header("x-req-x-b3-traceid"), Some(short));
        assert_eq!(rsp.header("x-req-x-b3-spanid"), server["span_id"].as_str());
        assert_eq!(rsp.header("x-req-x-b3-sampled"), Some("1"));
        assert_eq!(rsp.header("x-req-traceparent"), None, "the format is kept");

        // One header.
        let trace = "44444444444444444444444444444444";
        let rsp = b3_request(p.a.outbound, &[("b3", &format!("{trace}-{PARENT}-1"))]).await;
        let (_, server) = client_and_server(&rx, trace).await;
        let server_span = server["span_id"].as_str().unwrap();
        let b3 = rsp.header("x-req-b3").unwrap();
        assert!(b3.starts_with(&format!("{trace}-{server_span}-1-")), "{b3}");
    })
    .await
}

async fn b3_request(outbound: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let mut h1 = client::http1(outbound).await;
    let mut req = client::request(
        http::Method::GET,
        &format!("http://{WEB}/echo"),
        client::empty(),
    );
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let rsp = client::send1(&mut h1, req).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    rsp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_start_at_the_edge_only_when_sampling_is_on() {
    run(async {
        let Some(rx) = Receiver::start(&["ok"]).await else {
            return;
        };
        let app = TestServer::start().await;
        // Off (the default): no context in, nothing recorded, nothing added.
        let off = pair(app.addr(), WEB, rx.addr, "0").await;
        let unsampled = format!("00-{TRACE}-{PARENT}-00");
        for _ in 0..5 {
            let rsp = client::get(off.a.outbound, &format!("http://{WEB}/echo")).await;
            assert_eq!(rsp.status, 200);
            assert_eq!(rsp.header("x-req-traceparent"), None);
        }
        // A context that says "not sampled" passes untouched and records nothing.
        let mut h1 = client::http1(off.a.outbound).await;
        let mut req = client::request(
            http::Method::GET,
            &format!("http://{WEB}/echo"),
            client::empty(),
        );
        req.headers_mut()
            .insert("traceparent", unsampled.parse().unwrap());
        let rsp = client::send1(&mut h1, req).await;
        assert_eq!(rsp.header("x-req-traceparent"), Some(unsampled.as_str()));

        // On (ratio 1): A starts the trace; B continues it.
        let on = pair(app.addr(), WEB, rx.addr, "1").await;
        let rsp = client::get(on.a.outbound, &format!("http://{WEB}/echo")).await;
        let seen = rsp
            .header("x-req-traceparent")
            .expect("a started trace")
            .to_string();
        let trace = seen.split('-').nth(1).unwrap().to_string();
        let (client, _) = client_and_server(&rx, &trace).await;
        assert_eq!(client["parent_span_id"], "", "a root span: {client}");
        // Exports are batched each second: by now, the unsampled requests would have arrived.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rx.count(), 2, "{:?}", rx.spans.lock().unwrap());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_slow_costs_requests_nothing() {
    run(async {
        let Some(slow) = Receiver::start(&["slow", "30"]).await else {
            return;
        };
        let app = TestServer::start().await;
        // Nothing listens here.
        let down = linkerd_tests::client::free_addr();
        for (collector, what) in [(down, "down"), (slow.addr, "slow")] {
            let p = pair(app.addr(), WEB, collector, "1").await;
            let mut h2 = client::http2(p.a.outbound).await;
            for i in 0..2000 {
                let req = client::request(
                    http::Method::GET,
                    &format!("http://{WEB}/echo"),
                    client::empty(),
                );
                let rsp = client::send2(&mut h2, req).await;
                assert_eq!(rsp.status, 200, "collector {what}, request {i}");
            }
            // Down: every span is counted as dropped, at once (buffer full) or when its export
            // failed. Slow: the exporter waits on its first call while the buffer fills.
            assert_eventually!({
                let m = p.a.metrics().await;
                let dropped = m.sum("proxy_trace_spans_dropped_total", &[]);
                match what {
                    "down" => dropped == 2000.0,
                    _ => {
                        m.sum(
                            "proxy_trace_spans_dropped_total",
                            &[("reason", "buffer_full")],
                        ) > 0.0
                    }
                }
            });
            let m = p.a.metrics().await;
            assert_eq!(
                m.sum("proxy_trace_spans_exported_total", &[]),
                0.0,
                "{what}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_parse_in_both_formats() {
    run(async {
        let app = TestServer::start().await;
        let app_addr = app.addr().to_string();
        for format in ["json", "apache"] {
            let proxy = ProxyProcess::spawn(
                crate::PROXY_BIN,
                &[
                    (ENV_INBOUND_FORWARD_ADDR, &app_addr),
                    (ENV_ACCESS_LOG, format),
                ],
            )
            .await;
            let mut h1 = client::http1(proxy.inbound).await;
            let mut req = client::request(http::Method::POST, "/echo?x=1", client::full("hello"));
            req.headers_mut()
                .insert("host", "web.test".parse().unwrap());
            req.headers_mut()
                .insert("user-agent", "curl/8.5".parse().unwrap());
            req.headers_mut().insert(
                "traceparent",
                format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
            );
            let rsp = client::send1(&mut h1, req).await;
            assert_eq!(rsp.status, 200);
            let mut line;
            assert_eventually!({
                line = proxy
                    .stderr()
                    .lines()
                    .find(|l| l.contains("/echo?x=1"))
                    .unwrap_or("")
                    .to_string();
                !line.is_empty()
            });
            if format == "json" {
                let v: Value = serde_json::from_str(&line).expect(&line);
                assert_eq!(v["method"], "POST");
                assert_eq!(v["uri"], "/echo?x=1");
                assert_eq!(v["status"], 200);
                assert_eq!(v["version"], "HTTP/1.1");
                assert_eq!(v["host"], "web.test");
                assert_eq!(v["user_agent"], "curl/8.5");
                assert_eq!(v["request_bytes"], "5");
                assert_eq!(v["response_bytes"], "5");
                assert_eq!(v["client.id"], "-");
                assert_eq!(v["trace_id"], TRACE);
                let total: u64 = v["total_ns"].as_str().unwrap().parse().unwrap();
                let processing: u64 = v["processing_ns"].as_str().unwrap().parse().unwrap();
                assert!(processing <= total && total > 0, "{line}");
                assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
                assert!(v["client.addr"].as_str().unwrap().starts_with("127.0.0.1:"));
            } else {
                // `<addr> <id> - [<time>] "<method> <uri> <version>" <status>`
                let (head, rest) = line.split_once(" - [").expect(&line);
                assert!(
                    head.starts_with("127.0.0.1:") && head.ends_with(" -"),
                    "{line}"
                );
                let (time, request) = rest.split_once("] ").expect(&line);
                assert!(time.ends_with('Z') && time.contains('T'), "{line}");
                assert_eq!(request, "\"POST /echo?x=1 HTTP/1.1\" 200");
            }
        }
    })
    .await
}
