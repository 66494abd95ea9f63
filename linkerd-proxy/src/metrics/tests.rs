use super::*;
use std::time::Duration;

#[test]
fn encodes_linkerd_families() {
    let m = Metrics::new();
    let key = HttpKey {
        direction: Direction::Outbound,
        authority: "web.local:80".into(),
        target_addr: "127.0.0.1:8080".parse().unwrap(),
        tls: Tls::None("not_provided_by_service_discovery"),
        dst_labels: None,
    };
    let s = m.http(key.clone());
    s.request();
    s.request();
    let ok = ResponseClass {
        status: Some(200),
        grpc_status: None,
        error: None,
    };
    s.response(ok.clone(), Duration::from_micros(1500));
    s.response(ok, Duration::from_millis(7));
    let failed = ResponseClass {
        status: Some(502),
        grpc_status: None,
        error: Some("connect"),
    };
    m.http(key).response(failed, Duration::from_millis(60_000));
    let t = m.tcp(TcpKey {
        direction: Direction::Inbound,
        peer: Peer::Src,
        target_addr: "127.0.0.1:8080".parse().unwrap(),
        tls: Tls::None("no_tls_from_remote"),
        dst_labels: None,
    });
    t.open_total.fetch_add(3, Ordering::Relaxed);
    t.close_total.fetch_add(1, Ordering::Relaxed);
    t.bytes.read.fetch_add(10, Ordering::Relaxed);

    // An endpoint from discovery: its labels follow the TLS labels.
    let labelled = HttpKey {
        direction: Direction::Outbound,
        authority: "web.ns.svc.cluster.local:80".into(),
        target_addr: "10.0.0.9:8080".parse().unwrap(),
        tls: Tls::Established {
            peer_id: Some("web.ns.serviceaccount.identity.linkerd.cluster.local".into()),
        },
        dst_labels: Some("dst_namespace=\"ns\",dst_pod=\"web-1\"".into()),
    };
    m.http(labelled).request();

    let mut out = String::new();
    m.encode(&mut out);
    assert!(
        out.contains("request_total{direction=\"outbound\",authority=\"web.ns.svc.cluster.local:80\",target_addr=\"10.0.0.9:8080\",tls=\"true\",server_id=\"web.ns.serviceaccount.identity.linkerd.cluster.local\",dst_namespace=\"ns\",dst_pod=\"web-1\"} 1"),
        "{out}"
    );
    let labels = "direction=\"outbound\",authority=\"web.local:80\",target_addr=\"127.0.0.1:8080\",tls=\"no_identity\",no_tls_reason=\"not_provided_by_service_discovery\"";
    assert!(
        out.contains(&format!("request_total{{{labels}}} 2")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "response_total{{{labels},status_code=\"200\",classification=\"success\"}} 2"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("response_total{{{labels},status_code=\"502\",classification=\"failure\",error=\"connect\"}} 1")), "{out}");
    // 1.5 ms lands in le=2, 7 ms in le=10; cumulative.
    assert!(
        out.contains(&format!(
            "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"1\"}} 0"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"2\"}} 1"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "response_latency_ms_bucket{{{labels},status_code=\"200\",le=\"10\"}} 2"
        )),
        "{out}"
    );
    // 60 s is past the last bound: only +Inf counts it.
    assert!(out.contains(&format!("response_latency_ms_bucket{{{labels},status_code=\"502\",error=\"connect\",le=\"50000\"}} 0")), "{out}");
    assert!(out.contains(&format!("response_latency_ms_bucket{{{labels},status_code=\"502\",error=\"connect\",le=\"+Inf\"}} 1")), "{out}");
    assert!(out.contains("tcp_open_connections{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:8080\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 2"), "{out}");
    assert!(
        out.contains("tcp_read_bytes_total{direction=\"inbound\""),
        "{out}"
    );
    assert!(out.contains("process_resident_memory_bytes "), "{out}");
    assert!(out.contains("process_cpu_seconds_total "), "{out}");
}

#[test]
fn grpc_failures_are_failures() {
    let c = ResponseClass {
        status: Some(200),
        grpc_status: Some(14),
        error: None,
    };
    assert!(!c.is_success());
    let c = ResponseClass {
        status: Some(200),
        grpc_status: Some(0),
        error: None,
    };
    assert!(c.is_success());
    let c = ResponseClass {
        status: None,
        grpc_status: None,
        error: Some("stream"),
    };
    assert!(!c.is_success());
}
