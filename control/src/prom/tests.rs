use super::*;

#[test]
fn families_samples_and_labels() {
    let s = Scrape::parse(
        "# HELP request_total Requests, by \\\\direction\\n.\n\
         # TYPE request_total counter\n\
         request_total{direction=\"inbound\",authority=\"a\\\"b,c\"} 3\n\
         request_total{direction=\"outbound\",} 4 1700000000000\n\
         process_threads 7\n\
         # TYPE response_latency_ms histogram\n\
         response_latency_ms_bucket{le=\"+Inf\"} 1.5\n\
         response_latency_ms_count 1\n\
         # EOF\n",
    )
    .unwrap();
    assert_eq!(s.samples.len(), 5);
    let f = s.family("request_total").unwrap();
    assert_eq!(f.kind, "counter");
    assert_eq!(f.help.as_deref(), Some("Requests, by \\direction\n."));
    assert_eq!(f.samples, [0, 1]);
    assert_eq!(s.samples[0].labels["authority"], "a\"b,c");
    assert_eq!(s.samples[1].timestamp, Some(1_700_000_000_000));
    assert_eq!(s.sum("request_total", &[]), 7.0);
    assert_eq!(
        s.value("request_total", &[("direction", "outbound")]),
        Some(4.0)
    );
    assert_eq!(s.value("process_threads", &[]), Some(7.0));
    assert_eq!(s.family("response_latency_ms").unwrap().samples, [3, 4]);
    assert_eq!(s.samples[3].label("le"), Some("+Inf"));
    assert!(s.declares("response_latency_ms"));
    assert!(!s.declares("process_threads"));
}

#[test]
fn prometheus_client_counters_belong_to_their_family() {
    // prometheus-client's 0.0.4 text names the family with `_total`; its OpenMetrics text
    // without.
    for text in [
        "# TYPE a_total counter\na_total 1\n",
        "# TYPE a counter\na_total 1\n# EOF\n",
    ] {
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.families[0].samples, [0], "{text}");
    }
}

#[test]
fn values() {
    let s = Scrape::parse("a +Inf\nb -Inf\nc NaN\nd 1e3\ne -0.5\n").unwrap();
    assert_eq!(s.value("a", &[]), Some(f64::INFINITY));
    assert_eq!(s.value("b", &[]), Some(f64::NEG_INFINITY));
    assert!(s.value("c", &[]).unwrap().is_nan());
    assert_eq!(s.value("d", &[]), Some(1000.0));
    assert_eq!(s.value("e", &[]), Some(-0.5));
}

#[test]
fn label_escapes_and_spaces() {
    let l = parse_labels(r#"a="x\\y", b = "line\nbreak" ,c="{},=\"""#).unwrap();
    assert_eq!(l["a"], "x\\y");
    assert_eq!(l["b"], "line\nbreak");
    assert_eq!(l["c"], "{},=\"");
    assert_eq!(parse_labels("{}").unwrap().len(), 0);
    assert_eq!(parse_labels("").unwrap().len(), 0);
}

#[test]
fn labels_are_matched_whole() {
    // A label is found by its whole name: `tls` is not the tail of `no_tls_reason`.
    let s = parse_sample(r#"x{no_tls_reason="a",tls="true",le="0.25",no_tls="x"} 1"#).unwrap();
    assert_eq!(s.label("tls"), Some("true"));
    assert_eq!(s.label("le"), Some("0.25"));
    assert_eq!(s.label("no_tls"), Some("x"));
    assert_eq!(s.label("reason"), None);
    assert_eq!(s.label("ls"), None);
}

#[test]
fn refuses_what_is_not_prometheus_text() {
    for bad in [
        "a",
        "a b",
        "a inf",
        "a 1 2 3",
        "a{b=\"1\" 2",
        "a{b=1} 2",
        "a{b} 2",
        "a{=\"1\"} 2",
        "a{b=\"1\"c=\"2\"} 3",
        "9a 1",
        "a{b=\"unterminated} 1",
        "# TYPE a",
        "# TYPE a counter extra",
        "# HELP 1a help",
    ] {
        let e = Scrape::parse(bad).unwrap_err();
        assert_eq!(e.line, 1, "{bad}");
    }
    let (s, errors) = Scrape::parse_lossy("ok 1\nnot ok\nfine 2\n");
    assert_eq!(s.samples.len(), 2);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 2);
}

#[test]
fn hostile_input_does_not_panic() {
    let long = format!("a{{{}}} 1", "b=\"x\",".repeat(10_000));
    assert_eq!(Scrape::parse(&long).unwrap().samples.len(), 1);
    for weird in [
        "a{\"",
        "a{b=\"\\",
        "a{b=\"é\\",
        "#",
        "# HELP",
        "# TYPE",
        "{}",
        "a{,} 1",
        "\u{0} 1",
    ] {
        let _ = Scrape::parse(weird);
    }
}
