//! Tracing and access-log settings.

use super::{ConfigError, Strings, values::*};
use crate::{access_log::Format as AccessLogFormat, trace::TraceConfig};

pub const ENV_TRACE_COLLECTOR_SVC_ADDR: &str = "LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR";
pub const ENV_TRACE_COLLECTOR_SVC_NAME: &str = "LINKERD2_PROXY_TRACE_COLLECTOR_SVC_NAME";
pub const ENV_TRACE_PROTOCOL: &str = "LINKERD2_PROXY_TRACE_PROTOCOL";
pub const ENV_TRACE_SERVICE_NAME: &str = "LINKERD2_PROXY_TRACE_SERVICE_NAME";
pub const ENV_TRACE_ATTRIBUTES_PATH: &str = "LINKERD2_PROXY_TRACE_ATTRIBUTES_PATH";
pub const ENV_TRACE_EXTRA_ATTRIBUTES: &str = "LINKERD2_PROXY_TRACE_EXTRA_ATTRIBUTES";
pub const ENV_OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const ENV_TRACE_SAMPLE_RATIO: &str = "MESH_PROXY_TRACE_SAMPLE_RATIO";
pub const ENV_ACCESS_LOG: &str = "LINKERD2_PROXY_ACCESS_LOG";

/// Tracing is on when `LINKERD2_PROXY_TRACE_COLLECTOR_SVC_ADDR` is set. Without a collector
/// identity the collector must be on loopback (plaintext); `has_identity`: the proxy has one
/// to talk mTLS with.
pub(super) fn parse_trace(
    s: &dyn Strings,
    has_identity: bool,
) -> Result<Option<TraceConfig>, ConfigError> {
    let get = |name| s.get(name).filter(|v: &String| !v.trim().is_empty());
    let Some(addr) = get(ENV_TRACE_COLLECTOR_SVC_ADDR) else {
        return Ok(None);
    };
    let addr = addr.trim().to_string();
    let err = |name, value: &str, reason: String| ConfigError {
        name,
        value: value.to_string(),
        reason,
    };
    check_authority(&addr).map_err(|r| err(ENV_TRACE_COLLECTOR_SVC_ADDR, &addr, r))?;
    let name = get(ENV_TRACE_COLLECTOR_SVC_NAME).map(|n| n.trim().to_string());
    match &name {
        Some(n) if !has_identity => {
            return Err(err(
                ENV_TRACE_COLLECTOR_SVC_NAME,
                n,
                "talking mTLS to the collector needs the proxy's identity \
                 (LINKERD2_PROXY_IDENTITY_*)"
                    .into(),
            ));
        }
        None if !is_loopback(&addr) => {
            return Err(err(
                ENV_TRACE_COLLECTOR_SVC_NAME,
                "",
                format!(
                    "required for a collector that is not on loopback ({addr}): the \
                     collector's mesh identity, which the proxy verifies over mTLS"
                ),
            ));
        }
        _ => {}
    }
    parse(s, ENV_TRACE_PROTOCOL, |v| {
        if v.eq_ignore_ascii_case("opentelemetry") {
            Ok(())
        } else {
            Err("only `opentelemetry` (OTLP over gRPC) is supported".into())
        }
    })?;
    let sample_ratio = parse(s, ENV_TRACE_SAMPLE_RATIO, |v| match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a number from 0 to 1".into()),
    })?
    .unwrap_or(0.0);
    let file = match get(ENV_TRACE_ATTRIBUTES_PATH) {
        // The Downward API's file; a proxy without it still traces (the attributes are
        // missing), as Linkerd's does.
        Some(path) => std::fs::read_to_string(path.trim())
            .map_err(
                |e| tracing::warn!(path = %path.trim(), error = %e, "trace attributes not read"),
            )
            .ok(),
        None => None,
    };
    let resource = crate::trace::resource_attributes(
        get(ENV_TRACE_SERVICE_NAME).as_deref(),
        file.as_deref(),
        get(ENV_TRACE_EXTRA_ATTRIBUTES).as_deref(),
        get(ENV_OTEL_RESOURCE_ATTRIBUTES).as_deref(),
        s.get("HOSTNAME").as_deref(),
    );
    Ok(Some(TraceConfig {
        collector_addr: addr,
        collector_name: name,
        resource,
        sample_ratio,
        buffer: TraceConfig::DEFAULT_BUFFER,
        max_batch: TraceConfig::DEFAULT_MAX_BATCH,
        flush_interval: TraceConfig::DEFAULT_FLUSH_INTERVAL,
        export_timeout: TraceConfig::DEFAULT_EXPORT_TIMEOUT,
    }))
}

/// `localhost:port` or a loopback IP.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn parse_access_log(s: &dyn Strings) -> Result<Option<AccessLogFormat>, ConfigError> {
    parse(s, ENV_ACCESS_LOG, |v| v.parse())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tracing_is_off_without_a_collector() {
        assert_eq!(parse_trace(&env(&[]), false).unwrap(), None);
    }

    #[test]
    fn a_loopback_collector_needs_no_identity() {
        let t = parse_trace(
            &env(&[
                (ENV_TRACE_COLLECTOR_SVC_ADDR, "127.0.0.1:4317"),
                (ENV_TRACE_SERVICE_NAME, "web"),
                (ENV_TRACE_SAMPLE_RATIO, "0.25"),
                (ENV_TRACE_PROTOCOL, "OpenTelemetry"),
            ]),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.collector_addr, "127.0.0.1:4317");
        assert_eq!(t.collector_name, None);
        assert_eq!(t.sample_ratio, 0.25);
        assert!(t.resource.contains(&("service.name".into(), "web".into())));
        assert!(
            parse_trace(
                &env(&[(ENV_TRACE_COLLECTOR_SVC_ADDR, "localhost:4317")]),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_settings_are_named() {
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[(ENV_TRACE_COLLECTOR_SVC_ADDR, "collector")],
                true,
                ENV_TRACE_COLLECTOR_SVC_ADDR,
            ),
            (
                &[(ENV_TRACE_COLLECTOR_SVC_ADDR, "collector.tracing:4317")],
                true,
                ENV_TRACE_COLLECTOR_SVC_NAME,
            ),
            (
                &[
                    (ENV_TRACE_COLLECTOR_SVC_ADDR, "collector.tracing:4317"),
                    (
                        ENV_TRACE_COLLECTOR_SVC_NAME,
                        "collector.tracing.serviceaccount",
                    ),
                ],
                false,
                ENV_TRACE_COLLECTOR_SVC_NAME,
            ),
            (
                &[
                    (ENV_TRACE_COLLECTOR_SVC_ADDR, "127.0.0.1:4317"),
                    (ENV_TRACE_PROTOCOL, "opencensus"),
                ],
                false,
                ENV_TRACE_PROTOCOL,
            ),
            (
                &[
                    (ENV_TRACE_COLLECTOR_SVC_ADDR, "127.0.0.1:4317"),
                    (ENV_TRACE_SAMPLE_RATIO, "1.5"),
                ],
                false,
                ENV_TRACE_SAMPLE_RATIO,
            ),
            (
                &[
                    (ENV_TRACE_COLLECTOR_SVC_ADDR, "127.0.0.1:4317"),
                    (ENV_TRACE_SAMPLE_RATIO, "NaN"),
                ],
                false,
                ENV_TRACE_SAMPLE_RATIO,
            ),
        ];
        for (pairs, id, name) in cases {
            let e = parse_trace(&env(pairs), *id).expect_err("refused");
            assert_eq!(e.name, *name, "{pairs:?}: {e}");
        }
        // With its identity, a proxy may reach a collector anywhere.
        let ok = env(&[
            (ENV_TRACE_COLLECTOR_SVC_ADDR, "collector.tracing:4317"),
            (
                ENV_TRACE_COLLECTOR_SVC_NAME,
                "collector.tracing.serviceaccount",
            ),
        ]);
        assert!(parse_trace(&ok, true).unwrap().is_some());
    }

    #[test]
    fn access_log_formats() {
        assert_eq!(parse_access_log(&env(&[])).unwrap(), None);
        assert_eq!(
            parse_access_log(&env(&[(ENV_ACCESS_LOG, "JSON")])).unwrap(),
            Some(AccessLogFormat::Json)
        );
        assert_eq!(
            parse_access_log(&env(&[(ENV_ACCESS_LOG, "apache")])).unwrap(),
            Some(AccessLogFormat::Apache)
        );
        let e = parse_access_log(&env(&[(ENV_ACCESS_LOG, "combined")])).unwrap_err();
        assert_eq!(e.name, ENV_ACCESS_LOG);
    }
}
