//! The resource every span is reported under: who the proxy is.
//!
//! Sources, later ones overriding earlier ones (as Linkerd's proxy reads them):
//! `LINKERD2_PROXY_TRACE_SERVICE_NAME` (`service.name`, default `linkerd-proxy`), the file at
//! `LINKERD2_PROXY_TRACE_ATTRIBUTES_PATH` (the pod's labels as the Downward API writes them,
//! `key="value"` per line), `LINKERD2_PROXY_TRACE_EXTRA_ATTRIBUTES` (`key=value` per line) and
//! `OTEL_RESOURCE_ATTRIBUTES` (`key=value`, separated by commas or lines, values
//! percent-decoded as the OpenTelemetry specification says). `process.pid` and `host.name`
//! (`HOSTNAME`) are added.

/// Attributes from `key=value` lines; a value's surrounding double quotes (and the escapes
/// the Downward API writes inside them) are removed. Lines without `=` are ignored.
pub(crate) fn parse_lines(text: &str, out: &mut Vec<(String, String)>) {
    for line in text.lines() {
        push(line, out, false);
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: pairs separated by commas or newlines.
pub(crate) fn parse_otel(text: &str, out: &mut Vec<(String, String)>) {
    for pair in text.split([',', '\n']) {
        push(pair, out, true);
    }
}

fn push(pair: &str, out: &mut Vec<(String, String)>, percent: bool) {
    let Some((k, v)) = pair.split_once('=') else {
        return;
    };
    let k = k.trim();
    if k.is_empty() {
        return;
    }
    let v = v.trim();
    let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None if percent => percent_decode(v),
        None => v.to_string(),
    };
    out.retain(|(key, _)| key != k);
    out.push((k.to_string(), v));
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource's attributes from the sources above (`attributes_file`: the file's contents,
/// already read).
pub(crate) fn resource_attributes(
    service_name: Option<&str>,
    attributes_file: Option<&str>,
    extra: Option<&str>,
    otel: Option<&str>,
    hostname: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = vec![(
        "service.name".to_string(),
        service_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("linkerd-proxy")
            .to_string(),
    )];
    if let Some(f) = attributes_file {
        parse_lines(f, &mut out);
    }
    if let Some(e) = extra {
        parse_lines(e, &mut out);
    }
    if let Some(o) = otel {
        parse_otel(o, &mut out);
    }
    let mut set = |k: &str, v: String| {
        if !out.iter().any(|(key, _)| key == k) {
            out.push((k.to_string(), v));
        }
    };
    set("process.pid", std::process::id().to_string());
    if let Some(h) = hostname.map(str::trim).filter(|h| !h.is_empty()) {
        set("host.name", h.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(attrs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let labels = "app=\"web\"\npod-template-hash=\"5d8f\"\nquoted=\"a \\\"b\\\"\"\nnoequals\n";
        let a = resource_attributes(
            Some("web-proxy"),
            Some(labels),
            Some("k8s.pod.ip=10.0.0.7\napp=override"),
            Some("deployment.environment=prod,service.name=web%20svc"),
            Some("web-5d8f-abcde"),
        );
        assert_eq!(get(&a, "service.name"), Some("web svc"));
        assert_eq!(get(&a, "app"), Some("override"));
        assert_eq!(get(&a, "pod-template-hash"), Some("5d8f"));
        assert_eq!(get(&a, "quoted"), Some("a \"b\""));
        assert_eq!(get(&a, "k8s.pod.ip"), Some("10.0.0.7"));
        assert_eq!(get(&a, "deployment.environment"), Some("prod"));
        assert_eq!(get(&a, "host.name"), Some("web-5d8f-abcde"));
        assert_eq!(get(&a, "noequals"), None);
        assert!(get(&a, "process.pid").is_some());
        assert_eq!(a.iter().filter(|(k, _)| k == "service.name").count(), 1);
    }

    #[test]
    fn defaults_and_hostile_text() {
        let a = resource_attributes(None, None, None, None, None);
        assert_eq!(get(&a, "service.name"), Some("linkerd-proxy"));
        let a = resource_attributes(
            Some(" "),
            Some("=x\n\u{0}=\u{0}\n%zz"),
            None,
            Some("a=%4"),
            None,
        );
        assert_eq!(get(&a, "service.name"), Some("linkerd-proxy"));
        assert_eq!(get(&a, "a"), Some("%4"));
        assert_eq!(get(&a, "\u{0}"), Some("\u{0}"));
    }
}
