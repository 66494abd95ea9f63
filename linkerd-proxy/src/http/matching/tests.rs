//! Matching and precedence, case by case: linkerd2-proxy's own route-matching cases
//! (`linkerd/http/route`) in our terms, and the Gateway API's rules that they do not cover.
//! The property tests are in `props.rs`.

use super::*;
use http::HeaderValue;

fn headers(kv: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in kv {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn header(name: &str, value: &str) -> (HeaderName, Vec<u8>) {
    (
        HeaderName::from_bytes(name.as_bytes()).expect("header name"),
        value.as_bytes().to_vec(),
    )
}

fn exact(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Exact(p.into()),
        ..RequestMatch::default()
    }
}

fn prefix(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::prefix(p),
        ..RequestMatch::default()
    }
}

fn rpc(service: Option<&str>, method: Option<&str>) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Rpc {
            service: service.map(Into::into),
            method: method.map(Into::into),
        },
        ..RequestMatch::default()
    }
}

fn rank(m: &RequestMatch, method: &Method, target: &str, h: &HeaderMap) -> Option<MatchRank> {
    m.rank(&RouteRequest::test(None, method, target, h))
}

/// A route: its hosts and its rules' matches.
type Table<'a> = &'a [(&'a [HostMatch], &'a [&'a [RequestMatch]])];

/// The (route, rule) that wins for a request, by the same steps the proxy takes.
fn winner(table: Table<'_>, req: &RouteRequest<'_>) -> Option<(usize, usize)> {
    let ranked = table.iter().enumerate().flat_map(|(i, (hosts, rules))| {
        let host = host_rank(hosts, req.host);
        rules.iter().enumerate().filter_map(move |(j, ms)| {
            let request = rule_rank(ms, req)?;
            Some((
                Rank {
                    host: host?,
                    request,
                },
                (i, j),
            ))
        })
    });
    best(ranked).map(|(_, at)| at)
}

fn host(h: &str) -> HostMatch {
    match h.strip_prefix("*.") {
        Some(s) => HostMatch::Suffix(s.into()),
        None => HostMatch::Exact(h.into()),
    }
}

// ---- linkerd2-proxy's `http/tests.rs` and `grpc/tests.rs` cases ----------------------------

#[test]
fn an_exact_hostname_beats_a_wildcard() {
    let (wild, named) = ([host("*.example.com")], [host("foo.example.com")]);
    let m = [exact("/foo")];
    let table: Table<'_> = &[(&wild, &[&m]), (&named, &[&m])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(Some("foo.example.com"), &Method::GET, "/foo", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
    // gRPC: the same with a service and method match.
    let m = [rpc(Some("foo"), Some("bar"))];
    let table: Table<'_> = &[(&wild, &[&m]), (&named, &[&m])];
    let req = RouteRequest::test(Some("foo.example.com"), &Method::POST, "/foo/bar", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
}

#[test]
fn a_longer_path_beats_a_shorter_one() {
    let (short, long) = ([prefix("/foo")], [exact("/foo/bar")]);
    let table: Table<'_> = &[(&[], &[&short]), (&[], &[&long])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(Some("foo.example.com"), &Method::GET, "/foo/bar", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
}

#[test]
fn more_header_matches_win() {
    let two = RequestMatch {
        headers: vec![header("x-foo", "bar"), header("x-baz", "qux")],
        ..RequestMatch::default()
    };
    let mut three = two.clone();
    three.headers.push(header("x-biz", "qyx"));
    let (two, three) = ([two], [three]);
    let table: Table<'_> = &[(&[], &[&two]), (&[], &[&three])];
    let h = headers(&[("x-foo", "bar"), ("x-baz", "qux"), ("x-biz", "qyx")]);
    let req = RouteRequest::test(None, &Method::GET, "/", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
    // gRPC: the same on a call.
    let mut two = rpc(None, None);
    two.headers = vec![header("x-foo", "bar"), header("x-baz", "qux")];
    let mut three = two.clone();
    three.headers.push(header("x-biz", "qyx"));
    let (two, three) = ([two], [three]);
    let table: Table<'_> = &[(&[], &[&two]), (&[], &[&three])];
    let req = RouteRequest::test(None, &Method::POST, "/foo/bar", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
}

#[test]
fn the_first_of_identical_rules_and_routes_wins() {
    let table: Table<'_> = &[(&[], &[&[], &[]]), (&[], &[&[]])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(None, &Method::GET, "/", &h);
    assert_eq!(winner(table, &req), Some((0, 0)));
}

#[test]
fn a_grpc_method_match_beats_a_service_match() {
    let (service, method) = ([rpc(Some("foo"), None)], [rpc(Some("foo"), Some("bar"))]);
    let table: Table<'_> = &[(&[], &[&service]), (&[], &[&method])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(None, &Method::POST, "/foo/bar", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
    // A service beats a method in any service, which beats any call.
    let (any, any_service) = ([rpc(None, None)], [rpc(None, Some("bar"))]);
    let table: Table<'_> = &[(&[], &[&any, &any_service, &service])];
    assert_eq!(winner(table, &req), Some((0, 2)));
    let table: Table<'_> = &[(&[], &[&any, &any_service])];
    assert_eq!(winner(table, &req), Some((0, 1)));
}

// ---- linkerd2-proxy's `http/match/tests.rs` and `grpc/match/tests.rs` ---------------------

#[test]
fn an_empty_match_matches_everything_as_prefix_slash() {
    let h = HeaderMap::new();
    let m = RequestMatch::default();
    assert_eq!(rank(&m, &Method::GET, "/", &h), Some(MatchRank::default()));
    assert_eq!(
        rank(&m, &Method::HEAD, "/any/thing", &h),
        Some(MatchRank::default())
    );
    assert_eq!(
        rank(&prefix("/"), &Method::GET, "/x", &h),
        rank(&m, &Method::GET, "/x", &h)
    );
    // An empty gRPC match needs a call: POST /service/method.
    let any = rpc(None, None);
    assert!(rank(&any, &Method::POST, "/foo/bar", &h).is_some());
    assert!(rank(&any, &Method::POST, "/foo", &h).is_none());
    assert!(rank(&any, &Method::GET, "/foo/bar", &h).is_none());
}

#[test]
fn method() {
    let h = HeaderMap::new();
    let m = RequestMatch {
        method: Some(Method::GET),
        ..RequestMatch::default()
    };
    let r = rank(&m, &Method::GET, "/foo", &h).expect("GET matches");
    assert!(r.method);
    assert!(rank(&m, &Method::HEAD, "/", &h).is_none());
    // gRPC: a method in any service.
    let m = rpc(None, Some("bar"));
    let r = rank(&m, &Method::POST, "/foo/bar", &h).expect("matches");
    assert_eq!((r.path, r.rpc_method), (0, 3));
    assert!(rank(&m, &Method::POST, "/foo/bah", &h).is_none());
}

#[test]
fn headers_exact_values_any_of_repeated_and_regexes_never() {
    let m = RequestMatch {
        headers: vec![header("x-foo", "bar")],
        ..RequestMatch::default()
    };
    let none = HeaderMap::new();
    assert!(rank(&m, &Method::GET, "/", &none).is_none());
    let r = rank(&m, &Method::GET, "/", &headers(&[("x-foo", "bar")]));
    assert_eq!(r.map(|r| r.headers), Some(1));
    // Any value of a repeated header.
    let repeated = headers(&[("x-foo", "bah"), ("x-foo", "bar")]);
    assert!(rank(&m, &Method::GET, "/", &repeated).is_some());
    // Values are case-sensitive.
    assert!(rank(&m, &Method::GET, "/", &headers(&[("x-foo", "BAR")])).is_none());
    // linkerd2-proxy evaluates regular expressions; we do not, so a match with one never
    // matches (a route cannot select, or authorize, more than its author meant).
    let regex = RequestMatch {
        unsupported: true,
        ..m
    };
    assert!(rank(&regex, &Method::GET, "/", &headers(&[("x-foo", "bar")])).is_none());
}

#[test]
fn header_names_are_case_insensitive_and_a_repeated_name_counts_once() {
    let m = http_match(api_route::HttpRouteMatch {
        headers: vec![
            api_route::HeaderMatch {
                name: "X-Canary".into(),
                value: Some(api_route::header_match::Value::Exact(b"yes".to_vec())),
            },
            // The Gateway API: only the first of several matches on one name counts.
            api_route::HeaderMatch {
                name: "x-canary".into(),
                value: Some(api_route::header_match::Value::Exact(b"no".to_vec())),
            },
        ],
        ..Default::default()
    })
    .expect("valid match");
    assert_eq!(m.headers, vec![header("x-canary", "yes")]);
    let h = headers(&[("x-canary", "yes")]);
    let r = rank(&m, &Method::GET, "/", &h).expect("matches");
    assert_eq!(r.headers, 1);
    // As the request sends it, upper case: HTTP/1 header names are case-insensitive too.
    let mut upper = HeaderMap::new();
    upper.insert(
        HeaderName::from_bytes(b"X-CANARY").expect("name"),
        HeaderValue::from_static("yes"),
    );
    assert!(rank(&m, &Method::GET, "/", &upper).is_some());
}

#[test]
fn paths_exact_and_by_whole_segments() {
    let h = HeaderMap::new();
    let m = exact("/foo/bar");
    assert!(rank(&m, &Method::GET, "/foo", &h).is_none());
    assert!(rank(&m, &Method::GET, "/foo/bar/qux", &h).is_none());
    let r = rank(&m, &Method::GET, "/foo/bar", &h).expect("matches");
    assert!(r.exact);
    assert_eq!(r.path, "/foo/bar".len());
    // `/`, `/foo` and `/foo/` as prefixes, on each path (linkerd2-proxy's table).
    for (p, len) in [("/", 0), ("/foo", 4), ("/foo/", 4)] {
        let m = prefix(p);
        for path in ["/foo", "/foo/", "/foo/bar", "/foo/bar/qux"] {
            let r = rank(&m, &Method::GET, path, &h);
            assert_eq!(r.map(|r| r.path), Some(len), "{p} must match {path}");
        }
        let r = rank(&m, &Method::GET, "/foobar", &h);
        assert_eq!(r.is_some(), p == "/", "{p} against /foobar");
    }
}

#[test]
fn query_params_exact_after_form_decoding() {
    let h = HeaderMap::new();
    let m = RequestMatch {
        query: vec![("foo".into(), "bar".into())],
        ..RequestMatch::default()
    };
    for hit in [
        "/?foo=bar",
        "/?foo=bar&fah=bah",
        "/?fah=bah&foo=bar",
        "/?foo=bah&foo=bar",
    ] {
        let r = rank(&m, &Method::GET, hit, &h);
        assert_eq!(r.map(|r| r.query), Some(1), "{hit}");
    }
    for miss in [
        "/?foo=bah",
        "/",
        "/?foo",
        "/?FOO=bar",
        "/?foo=Bar",
        "/?foo=barr",
    ] {
        assert!(rank(&m, &Method::GET, miss, &h).is_none(), "{miss}");
    }
    let empty = RequestMatch {
        query: vec![("foo".into(), String::new())],
        ..RequestMatch::default()
    };
    assert!(rank(&empty, &Method::GET, "/?foo", &h).is_some());
    assert!(rank(&empty, &Method::GET, "/?foo=", &h).is_some());
    assert!(rank(&empty, &Method::GET, "/?foo=bah", &h).is_none());
    assert!(rank(&empty, &Method::GET, "/?bar=foo", &h).is_none());
    // `+` is a space and `%XX` a byte, in names and values; a stray `%` is itself.
    let spaced = RequestMatch {
        query: vec![("a b".into(), "c/d%".into())],
        ..RequestMatch::default()
    };
    for hit in ["/?a+b=c%2Fd%", "/?a%20b=c/d%25", "/?x=1&a+b=c%2fd%"] {
        assert!(rank(&spaced, &Method::GET, hit, &h).is_some(), "{hit}");
    }
    assert!(rank(&spaced, &Method::GET, "/?a+b=c%2Fd", &h).is_none());
}

#[test]
fn every_part_of_a_match_must_hold() {
    let m = RequestMatch {
        path: PathMatch::Exact("/foo/bar".into()),
        method: Some(Method::GET),
        headers: vec![header("x-foo", "bar")],
        query: vec![("foo".into(), "bar".into())],
        unsupported: false,
    };
    let h = headers(&[("x-foo", "bar")]);
    assert_eq!(
        rank(&m, &Method::GET, "/foo/bar?foo=bar", &h),
        Some(MatchRank {
            exact: true,
            path: "/foo/bar".len(),
            rpc_method: 0,
            method: true,
            headers: 1,
            query: 1,
        })
    );
    assert!(rank(&m, &Method::HEAD, "/foo/bar?foo=bar", &h).is_none());
    assert!(rank(&m, &Method::GET, "/foo/bar", &h).is_none());
    assert!(rank(&m, &Method::GET, "/foo/bar?foo=bar", &HeaderMap::new()).is_none());
    // gRPC: service, method and headers.
    let mut m = rpc(Some("foo"), Some("bar"));
    m.headers.push(header("x-foo", "bar"));
    let r = rank(&m, &Method::POST, "/foo/bar", &h).expect("matches");
    assert_eq!((r.path, r.rpc_method, r.headers), (3, 3, 1));
    assert!(rank(&m, &Method::POST, "/foo/bar", &headers(&[("x-foo", "bah")])).is_none());
    assert!(rank(&m, &Method::GET, "/foo/bar", &h).is_none());
}

#[test]
fn hostnames_exact_or_wildcard_case_insensitive_without_port_or_final_dot() {
    let exact = [host("example.com")];
    for h in ["example.com", "EXAMPLE.com:8080", "example.com."] {
        assert_eq!(host_rank(&exact, Some(h)), Some(HostRank::Exact(11)), "{h}");
    }
    assert_eq!(host_rank(&exact, Some("foo.example.com")), None);
    assert_eq!(host_rank(&exact, None), None);
    let wild = [host("*.example.com")];
    for h in [
        "foo.example.com",
        "bar.FOO.example.com:80",
        "foo.example.com.",
    ] {
        assert_eq!(host_rank(&wild, Some(h)), Some(HostRank::Suffix(12)), "{h}");
    }
    // A wildcard needs at least one more label.
    assert_eq!(host_rank(&wild, Some("example.com")), None);
    assert_eq!(host_rank(&wild, Some("fooexample.com")), None);
    // No hostnames: any host (and none), ranked below every named match.
    assert_eq!(host_rank(&[], None), Some(HostRank::Any));
    assert!(HostRank::Any < HostRank::Suffix(1));
    assert!(HostRank::Suffix(100) < HostRank::Exact(1));
    assert!(HostRank::Suffix(16) > HostRank::Suffix(12));
    // The best of a route's hostnames counts.
    let both = [host("*.example.com"), host("foo.example.com")];
    assert_eq!(
        host_rank(&both, Some("foo.example.com")),
        Some(HostRank::Exact(15))
    );
}

// ---- the Gateway API's order, where linkerd2-proxy's differs ------------------------------

#[test]
fn a_method_outranks_headers_and_headers_outrank_query_params() {
    let h = headers(&[("version", "four")]);
    let method = [RequestMatch {
        method: Some(Method::PATCH),
        ..RequestMatch::default()
    }];
    let header = [RequestMatch {
        headers: vec![self::header("version", "four")],
        ..RequestMatch::default()
    }];
    let query = [RequestMatch {
        query: vec![("animal".into(), "hydra".into())],
        ..RequestMatch::default()
    }];
    let table: Table<'_> = &[(&[], &[&query, &header, &method])];
    let req = RouteRequest::test(None, &Method::PATCH, "/?animal=hydra", &h);
    // The spec: method, then headers (linkerd2-proxy compares headers and query parameters
    // before the method, and would pick the header rule here).
    assert_eq!(winner(table, &req), Some((0, 2)));
    let table: Table<'_> = &[(&[], &[&query, &header])];
    assert_eq!(winner(table, &req), Some((0, 1)));
}

#[test]
fn an_exact_path_outranks_an_equally_long_prefix() {
    let (p, e) = ([prefix("/foo")], [exact("/foo")]);
    let table: Table<'_> = &[(&[], &[&p, &e])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(None, &Method::GET, "/foo", &h);
    assert_eq!(winner(table, &req), Some((0, 1)));
}

#[test]
fn a_header_only_rule_beats_the_catch_all_prefix_slash() {
    // The canary case: a rule matching only `x-canary: yes`, and a catch-all on `/`.
    let canary = [http_match(api_route::HttpRouteMatch {
        headers: vec![api_route::HeaderMatch {
            name: "x-canary".into(),
            value: Some(api_route::header_match::Value::Exact(b"yes".to_vec())),
        }],
        ..Default::default()
    })
    .expect("valid")];
    let all = [prefix("/")];
    for table in [
        &[(&[][..], &[&all[..], &canary[..]][..])][..],
        &[(&[][..], &[&canary[..], &all[..]][..])][..],
    ] {
        let h = headers(&[("x-canary", "yes")]);
        let req = RouteRequest::test(None, &Method::GET, "/", &h);
        let got = winner(table, &req).expect("a rule");
        assert!(table[got.0].1[got.1][0].headers.len() == 1, "{got:?}");
        let plain = HeaderMap::new();
        let req = RouteRequest::test(None, &Method::GET, "/", &plain);
        let got = winner(table, &req).expect("a rule");
        assert!(table[got.0].1[got.1][0].headers.is_empty(), "{got:?}");
    }
}

#[test]
fn the_hostname_comes_before_the_path() {
    let named = [host("web.example.com")];
    let (root, deep) = ([prefix("/")], [exact("/a/b/c")]);
    let table: Table<'_> = &[(&[], &[&deep]), (&named, &[&root])];
    let h = HeaderMap::new();
    let req = RouteRequest::test(Some("web.example.com"), &Method::GET, "/a/b/c", &h);
    assert_eq!(winner(table, &req), Some((1, 0)));
    let req = RouteRequest::test(Some("other.example.com"), &Method::GET, "/a/b/c", &h);
    assert_eq!(winner(table, &req), Some((0, 0)));
}
