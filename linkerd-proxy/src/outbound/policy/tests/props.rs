//! Property tests of route precedence, through the real conversion (`OutboundPolicy::from_api`)
//! and selection (`OutboundPolicy::select`), against a model written from the Gateway API's
//! text: routes, rules and requests drawn from a small vocabulary so that they often overlap.

use super::rule as api_rule;
use crate::{
    http::matching::RouteRequest,
    metrics::Metrics,
    outbound::policy::{BackendTarget, OutboundPolicy},
};
use http::{HeaderMap, HeaderValue, Method, Version};
use proptest::prelude::*;
use proto::api::{
    http_route as hr,
    outbound::{self as api, ProxyProtocol, proxy_protocol},
};

const SEGMENTS: [&str; 3] = ["a", "b", "c"];
const HEADERS: [&str; 2] = ["x-a", "x-b"];
const PARAMS: [&str; 2] = ["q", "r"];
const VALUES: [&str; 2] = ["1", "2"];
const ROUTE_HOSTS: [&str; 3] = ["web.ns.svc", "*.ns.svc", "api.ns.svc"];
const REQUEST_HOSTS: [&str; 3] = ["web.ns.svc", "api.ns.svc", "db.other"];

#[derive(Clone, Debug, PartialEq)]
enum Path {
    None,
    Exact(Vec<usize>),
    /// Segments, and whether the prefix is written with a trailing `/`.
    Prefix(Vec<usize>, bool),
}

/// One match: path, method (GET/POST), and at most one value per header and parameter name.
#[derive(Clone, Debug, PartialEq)]
struct Match {
    path: Path,
    method: Option<bool>,
    headers: [Option<usize>; 2],
    query: [Option<usize>; 2],
}

#[derive(Clone, Debug)]
struct Route {
    hosts: Vec<usize>,
    rules: Vec<Vec<Match>>,
}

#[derive(Clone, Debug)]
struct Req {
    host: usize,
    post: bool,
    path: Vec<usize>,
    headers: [Option<usize>; 2],
    query: [Option<usize>; 2],
}

fn join(segs: &[usize]) -> String {
    segs.iter().map(|s| format!("/{}", SEGMENTS[*s])).collect()
}

fn method(post: bool) -> Method {
    if post { Method::POST } else { Method::GET }
}

// ---- the model: the spec's words, literally -------------------------------------------------

/// What the spec compares, most significant first: hostname (0 none, 1 wildcard, 2 exact,
/// then its length), exact path, prefix length, method, headers, query parameters.
type Spec = (u8, usize, bool, usize, bool, usize, usize);

fn model_host(route: &Route, req: &Req) -> Option<(u8, usize)> {
    if route.hosts.is_empty() {
        return Some((0, 0));
    }
    let h = REQUEST_HOSTS[req.host];
    route
        .hosts
        .iter()
        .filter_map(|&i| {
            let m = ROUTE_HOSTS[i];
            match m.strip_prefix('*') {
                Some(suffix) => h.ends_with(suffix).then_some((1, suffix.len())),
                None => (m == h).then_some((2, m.len())),
            }
        })
        .max()
}

fn model_match(m: &Match, req: &Req) -> Option<(bool, usize, bool, usize, usize)> {
    let (exact, len) = match &m.path {
        Path::None => (false, 0),
        Path::Exact(segs) => {
            let p = if segs.is_empty() {
                "/".into()
            } else {
                join(segs)
            };
            let req_path = if req.path.is_empty() {
                "/".into()
            } else {
                join(&req.path)
            };
            if p != req_path {
                return None;
            }
            (true, p.len())
        }
        // Segment-wise: the prefix's segments are the first of the request's.
        Path::Prefix(segs, _) => {
            if !req.path.starts_with(segs) {
                return None;
            }
            (false, join(segs).len())
        }
    };
    if m.method.is_some_and(|post| post != req.post) {
        return None;
    }
    let mut headers = 0;
    for (want, got) in m.headers.iter().zip(&req.headers) {
        if let Some(v) = want {
            if got != &Some(*v) {
                return None;
            }
            headers += 1;
        }
    }
    let mut query = 0;
    for (want, got) in m.query.iter().zip(&req.query) {
        if let Some(v) = want {
            if got != &Some(*v) {
                return None;
            }
            query += 1;
        }
    }
    Some((exact, len, m.method.is_some(), headers, query))
}

fn model_rule(rule: &[Match], req: &Req) -> Option<(bool, usize, bool, usize, usize)> {
    if rule.is_empty() {
        // "If no matches are specified, the default is a prefix path match on /".
        return Some((false, 0, false, 0, 0));
    }
    rule.iter().filter_map(|m| model_match(m, req)).max()
}

fn model_spec(routes: &[Route], at: (usize, usize), req: &Req) -> Option<Spec> {
    let (h, hl) = model_host(&routes[at.0], req)?;
    let (e, l, m, hd, q) = model_rule(&routes[at.0].rules[at.1], req)?;
    Some((h, hl, e, l, m, hd, q))
}

/// The winner as the spec states it: the most specific; among equals, the earlier route
/// (the older), then the earlier rule.
fn model_winner(routes: &[Route], req: &Req) -> Option<(usize, usize)> {
    let mut best: Option<(Spec, (usize, usize))> = None;
    for (i, route) in routes.iter().enumerate() {
        for j in 0..route.rules.len() {
            let Some(spec) = model_spec(routes, (i, j), req) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((b, _)) => more_specific(&spec, b),
            };
            if better {
                best = Some((spec, (i, j)));
            }
        }
    }
    best.map(|(_, at)| at)
}

/// Each criterion in the spec's order; the next only on a tie.
fn more_specific(a: &Spec, b: &Spec) -> bool {
    if a.0 != b.0 {
        return a.0 > b.0;
    }
    if a.1 != b.1 {
        return a.1 > b.1;
    }
    if a.2 != b.2 {
        return a.2;
    }
    if a.3 != b.3 {
        return a.3 > b.3;
    }
    if a.4 != b.4 {
        return a.4;
    }
    if a.5 != b.5 {
        return a.5 > b.5;
    }
    a.6 > b.6
}

// ---- the real thing ---------------------------------------------------------------------------

fn api_match(m: &Match) -> hr::HttpRouteMatch {
    use hr::path_match::Kind;
    let path = match &m.path {
        Path::None => None,
        Path::Exact(segs) if segs.is_empty() => Some(Kind::Exact("/".into())),
        Path::Exact(segs) => Some(Kind::Exact(join(segs))),
        Path::Prefix(segs, slash) => Some(Kind::Prefix(format!(
            "{}{}",
            join(segs),
            if *slash || segs.is_empty() { "/" } else { "" }
        ))),
    };
    hr::HttpRouteMatch {
        path: path.map(|k| hr::PathMatch { kind: Some(k) }),
        headers: HEADERS
            .iter()
            .zip(&m.headers)
            .filter_map(|(n, v)| {
                Some(hr::HeaderMatch {
                    name: n.to_string(),
                    value: Some(hr::header_match::Value::Exact(
                        VALUES[(*v)?].as_bytes().to_vec(),
                    )),
                })
            })
            .collect(),
        query_params: PARAMS
            .iter()
            .zip(&m.query)
            .filter_map(|(n, v)| {
                Some(hr::QueryParamMatch {
                    name: n.to_string(),
                    value: Some(hr::query_param_match::Value::Exact(
                        VALUES[(*v)?].to_string(),
                    )),
                })
            })
            .collect(),
        method: m.method.map(|post| method(post).into()),
    }
}

fn api_host(i: usize) -> hr::HostMatch {
    let h = ROUTE_HOSTS[i];
    hr::HostMatch {
        r#match: Some(match h.strip_prefix("*.") {
            Some(s) => hr::host_match::Match::Suffix(hr::host_match::Suffix {
                reverse_labels: s.split('.').rev().map(String::from).collect(),
            }),
            None => hr::host_match::Match::Exact(h.into()),
        }),
    }
}

/// The policy, each rule forwarding to its own backend `r<route>-<rule>:80`.
fn build(routes: &[Route]) -> OutboundPolicy {
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| api::HttpRoute {
            metadata: None,
            hosts: r.hosts.iter().map(|h| api_host(*h)).collect(),
            rules: r
                .rules
                .iter()
                .enumerate()
                .map(|(j, ms)| {
                    let name = format!("r{i}-{j}:80");
                    api_rule(ms.iter().map(api_match).collect(), &[(&name, 1)])
                })
                .collect(),
        })
        .collect();
    let p = api::OutboundPolicy {
        metadata: None,
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes,
                failure_accrual: None,
            })),
        }),
    };
    OutboundPolicy::from_api(p, &Metrics::new()).expect("a valid policy")
}

fn select(p: &OutboundPolicy, req: &Req) -> Option<(usize, usize)> {
    let mut h = HeaderMap::new();
    for (n, v) in HEADERS.iter().zip(&req.headers) {
        if let Some(v) = v {
            h.insert(*n, HeaderValue::from_static(VALUES[*v]));
        }
    }
    let query: Vec<String> = PARAMS
        .iter()
        .zip(&req.query)
        .filter_map(|(n, v)| Some(format!("{n}={}", VALUES[(*v)?])))
        .collect();
    let mut target = if req.path.is_empty() {
        "/".to_string()
    } else {
        join(&req.path)
    };
    if !query.is_empty() {
        target = format!("{target}?{}", query.join("&"));
    }
    let m = method(req.post);
    let rr = RouteRequest::test(Some(REQUEST_HOSTS[req.host]), &m, &target, &h);
    let rule = p.select(Version::HTTP_11, &rr)?;
    let BackendTarget::Balancer(b) = &rule.backends[0].target else {
        return None;
    };
    let (i, j) = b.strip_prefix('r')?.strip_suffix(":80")?.split_once('-')?;
    Some((i.parse().ok()?, j.parse().ok()?))
}

// ---- strategies -------------------------------------------------------------------------------

fn values() -> impl Strategy<Value = [Option<usize>; 2]> {
    [
        proptest::option::of(0..VALUES.len()),
        proptest::option::of(0..VALUES.len()),
    ]
}

fn segments() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..SEGMENTS.len(), 0..=3)
}

fn a_match() -> impl Strategy<Value = Match> {
    let path = prop_oneof![
        Just(Path::None),
        segments().prop_map(Path::Exact),
        (segments(), any::<bool>()).prop_map(|(s, slash)| Path::Prefix(s, slash)),
    ];
    (
        path,
        proptest::option::of(any::<bool>()),
        values(),
        values(),
    )
        .prop_map(|(path, method, headers, query)| Match {
            path,
            method,
            headers,
            query,
        })
}

fn routes() -> impl Strategy<Value = Vec<Route>> {
    let route = (
        proptest::collection::vec(0..ROUTE_HOSTS.len(), 0..=2),
        proptest::collection::vec(proptest::collection::vec(a_match(), 0..=3), 1..=3),
    )
        .prop_map(|(hosts, rules)| Route { hosts, rules });
    proptest::collection::vec(route, 1..=4)
}

fn request() -> impl Strategy<Value = Req> {
    (
        0..REQUEST_HOSTS.len(),
        any::<bool>(),
        segments(),
        values(),
        values(),
    )
        .prop_map(|(host, post, path, headers, query)| Req {
            host,
            post,
            path,
            headers,
            query,
        })
}

/// A request, a match that it satisfies, and a strictly narrower match that it satisfies too
/// (one more condition the request meets: a longer prefix, the exact path, the method, a
/// header or a query parameter).
fn narrowing() -> impl Strategy<Value = (Req, Match, Match)> {
    (request(), any::<[bool; 6]>(), 0..3usize, any::<u8>()).prop_filter_map(
        "no narrower match",
        |(req, keep, cut, pick)| {
            let depth = cut.min(req.path.len());
            let wide = Match {
                path: if keep[0] {
                    Path::Prefix(req.path[..depth].to_vec(), keep[5])
                } else {
                    Path::None
                },
                method: keep[1].then_some(req.post),
                headers: [
                    req.headers[0].filter(|_| keep[2]),
                    req.headers[1].filter(|_| keep[3]),
                ],
                query: [req.query[0].filter(|_| keep[4]), None],
            };
            let mut options = Vec::new();
            if depth < req.path.len() {
                let mut m = wide.clone();
                m.path = Path::Prefix(req.path[..=depth].to_vec(), false);
                options.push(m);
            }
            let mut m = wide.clone();
            m.path = Path::Exact(req.path.clone());
            options.push(m);
            if wide.method.is_none() {
                let mut m = wide.clone();
                m.method = Some(req.post);
                options.push(m);
            }
            for i in 0..2 {
                if wide.headers[i].is_none() && req.headers[i].is_some() {
                    let mut m = wide.clone();
                    m.headers[i] = req.headers[i];
                    options.push(m);
                }
                if wide.query[i].is_none() && req.query[i].is_some() {
                    let mut m = wide.clone();
                    m.query[i] = req.query[i];
                    options.push(m);
                }
            }
            // Each option adds one condition; an exact path outranks every prefix.
            let narrow = options[usize::from(pick) % options.len()].clone();
            Some((req, wide, narrow))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The proxy picks exactly the rule the spec's precedence picks.
    #[test]
    fn selection_follows_the_spec(routes in routes(), req in request()) {
        let p = build(&routes);
        prop_assert_eq!(select(&p, &req), model_winner(&routes, &req));
    }

    /// A rule that matches a superset of another's requests never outranks it, whichever
    /// comes first, in one route or in two.
    #[test]
    fn a_wider_match_never_outranks_a_narrower_one((req, wide, narrow) in narrowing()) {
        prop_assert!(model_match(&wide, &req).is_some());
        prop_assert!(model_match(&narrow, &req).is_some());
        let one = |first: &Match, second: &Match| vec![Route {
            hosts: vec![],
            rules: vec![vec![first.clone()], vec![second.clone()]],
        }];
        prop_assert_eq!(select(&build(&one(&wide, &narrow)), &req), Some((0, 1)));
        prop_assert_eq!(select(&build(&one(&narrow, &wide)), &req), Some((0, 0)));
        let two = |first: &Match, second: &Match| vec![
            Route { hosts: vec![], rules: vec![vec![first.clone()]] },
            Route { hosts: vec![], rules: vec![vec![second.clone()]] },
        ];
        prop_assert_eq!(select(&build(&two(&wide, &narrow)), &req), Some((1, 0)));
        prop_assert_eq!(select(&build(&two(&narrow, &wide)), &req), Some((0, 0)));
    }

    /// Order only breaks ties: reversing the routes changes the winner only for one exactly
    /// as specific; the ranking is a total order.
    #[test]
    fn order_only_breaks_ties(routes in routes(), req in request()) {
        let reversed: Vec<Route> = routes.iter().rev().cloned().collect();
        let a = select(&build(&routes), &req);
        let b = select(&build(&reversed), &req);
        prop_assert_eq!(a.is_some(), b.is_some());
        if let (Some(a), Some(b)) = (a, b) {
            let b = (routes.len() - 1 - b.0, b.1);
            prop_assert_eq!(model_spec(&routes, a, &req), model_spec(&routes, b, &req));
            // The earlier of two equals wins: the reversed order picks the later route.
            prop_assert!(b.0 >= a.0);
        }
    }
}
