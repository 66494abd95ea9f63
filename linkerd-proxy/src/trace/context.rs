//! Trace context propagation: reading the caller's context from a request's headers and
//! writing this proxy's span as the parent of the next hop, in the format the request came with.
//!
//! Formats, first match wins (as Linkerd's proxy reads them):
//!
//! 1. W3C Trace Context: `traceparent: 00-<trace id>-<parent id>-<flags>` (`tracestate` is
//!    passed on untouched);
//! 2. B3, several headers: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled` (`1`/`0`, or the legacy
//!    `true`/`false`), `x-b3-flags: 1` (debug: sampled);
//! 3. B3, one header: `b3: <trace id>-<span id>[-<sampling>[-<parent id>]]`, or `b3: 0`.
//!
//! A malformed header is ignored as if absent (never an error: the request goes on untraced).

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static B3: HeaderName = HeaderName::from_static("b3");

/// W3C `trace-flags` bit 0.
const SAMPLED: u8 = 1;

/// The header format a context came in, which is also the one the next hop gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    W3c,
    /// `long`: a 128-bit trace id (B3 also allows 64 bits).
    B3Multi {
        long: bool,
    },
    B3Single {
        long: bool,
    },
}

/// The caller's trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of this proxy's span.
    pub parent_id: [u8; 8],
    /// `None`: the caller deferred the decision (B3 without a sampling state).
    pub sampled: Option<bool>,
    /// W3C `trace-flags` as received (other formats: the sampled bit only).
    pub flags: u8,
    pub format: Format,
}

/// Reads the context of a request, if it carries a valid one.
pub(crate) fn extract(h: &HeaderMap) -> Option<TraceContext> {
    if let Some(v) = h.get(&TRACEPARENT) {
        return w3c(v.as_bytes());
    }
    if let (Some(t), Some(s)) = (h.get(&B3_TRACE_ID), h.get(&B3_SPAN_ID)) {
        let (trace_id, long) = b3_trace_id(t.as_bytes())?;
        let parent_id = hex_array::<8>(s.as_bytes())?;
        let debug = h.get(&B3_FLAGS).is_some_and(|f| f.as_bytes() == b"1");
        let sampled = match h.get(&B3_SAMPLED).map(HeaderValue::as_bytes) {
            _ if debug => Some(true),
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            Some(_) => return None,
            None => None,
        };
        return nonzero(TraceContext {
            trace_id,
            parent_id,
            sampled,
            flags: u8::from(sampled == Some(true)),
            format: Format::B3Multi { long },
        });
    }
    if let Some(v) = h.get(&B3) {
        return b3_single(v.as_bytes());
    }
    None
}

/// `00-<32 hex>-<16 hex>-<2 hex>`. A later version is read for the fields version 00 defines
/// (W3C Trace Context, "versioning"); version `ff` is invalid.
fn w3c(v: &[u8]) -> Option<TraceContext> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_array::<1>(&v[..2])?[0];
    match version {
        0 if v.len() == 55 => {}
        0 | 0xff => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let flags = hex_array::<1>(&v[53..55])?[0];
    nonzero(TraceContext {
        trace_id: hex_array::<16>(&v[3..35])?,
        parent_id: hex_array::<8>(&v[36..52])?,
        sampled: Some(flags & SAMPLED != 0),
        flags,
        format: Format::W3c,
    })
}

fn b3_single(v: &[u8]) -> Option<TraceContext> {
    let mut parts = v.split(|b| *b == b'-');
    let first = parts.next()?;
    // `b3: 0` (or `1`, `d`) alone: a sampling decision without a context.
    let (trace_id, long) = b3_trace_id(first)?;
    let parent_id = hex_array::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return None,
    };
    if let Some(p) = parts.next() {
        hex_array::<8>(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    nonzero(TraceContext {
        trace_id,
        parent_id,
        sampled,
        flags: u8::from(sampled == Some(true)),
        format: Format::B3Single { long },
    })
}

/// A B3 trace id: 16 or 32 hex digits; a 64-bit one is the low half of the 128-bit id.
fn b3_trace_id(v: &[u8]) -> Option<([u8; 16], bool)> {
    match v.len() {
        32 => Some((hex_array::<16>(v)?, true)),
        16 => {
            let mut id = [0; 16];
            id[8..].copy_from_slice(&hex_array::<8>(v)?);
            Some((id, false))
        }
        _ => None,
    }
}

/// All-zero ids are invalid in every format.
fn nonzero(c: TraceContext) -> Option<TraceContext> {
    (c.trace_id != [0; 16] && c.parent_id != [0; 8]).then_some(c)
}

/// Exactly `2 * N` lowercase hex digits.
fn hex_array<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(b >> 4)];
        o[1] = DIGITS[usize::from(b & 0xf)];
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> Option<HeaderValue> {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(trace_id, &mut v[3..35]);
    hex_into(span_id, &mut v[36..52]);
    hex_into(&[flags], &mut v[53..55]);
    value(&v)
}

impl TraceContext {
    /// Makes `span_id` (this proxy's span) the parent the next hop sees, in the request's own
    /// format, with the sampling decision `sampled`.
    pub(crate) fn inject(&self, h: &mut HeaderMap, span_id: &[u8; 8], sampled: bool) {
        let flags = (self.flags & !SAMPLED) | u8::from(sampled);
        match self.format {
            Format::W3c => {
                if let Some(v) = traceparent(&self.trace_id, span_id, flags) {
                    h.insert(TRACEPARENT.clone(), v);
                }
            }
            Format::B3Multi { long } => {
                let mut buf = [0; 32];
                let id = trace_id_hex(&self.trace_id, long, &mut buf);
                let (mut span, mut parent) = ([0; 16], [0; 16]);
                hex_into(span_id, &mut span);
                hex_into(&self.parent_id, &mut parent);
                let sampled = if sampled { &b"1"[..] } else { b"0" };
                for (name, v) in [
                    (&B3_TRACE_ID, id),
                    (&B3_SPAN_ID, &span[..]),
                    (&B3_PARENT_ID, &parent[..]),
                    (&B3_SAMPLED, sampled),
                ] {
                    if let Some(v) = value(v) {
                        h.insert(name.clone(), v);
                    }
                }
                h.remove(&B3_FLAGS);
            }
            Format::B3Single { long } => {
                let mut buf = [0; 32];
                let id = trace_id_hex(&self.trace_id, long, &mut buf);
                let mut v = Vec::with_capacity(70);
                v.extend_from_slice(id);
                v.push(b'-');
                let mut span = [0; 16];
                hex_into(span_id, &mut span);
                v.extend_from_slice(&span);
                v.extend_from_slice(if sampled { b"-1-" } else { b"-0-" });
                hex_into(&self.parent_id, &mut span);
                v.extend_from_slice(&span);
                if let Some(v) = value(&v) {
                    h.insert(B3.clone(), v);
                }
            }
        }
    }
}

fn trace_id_hex<'a>(id: &[u8; 16], long: bool, buf: &'a mut [u8; 32]) -> &'a [u8] {
    hex_into(id, buf);
    if long { &buf[..] } else { &buf[16..] }
}

/// Starts a trace on a request that came without a context: a W3C `traceparent`, sampled,
/// naming `span_id` as the parent.
pub(crate) fn start(h: &mut HeaderMap, trace_id: &[u8; 16], span_id: &[u8; 8]) {
    if let Some(v) = traceparent(trace_id, span_id, SAMPLED) {
        h.insert(TRACEPARENT.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    const SPAN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn w3c_is_read_and_continued() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let c = extract(&h).expect("a context");
        assert_eq!(hex(&c.trace_id), TRACE);
        assert_eq!(hex(&c.parent_id), PARENT);
        assert_eq!(c.sampled, Some(true));
        c.inject(&mut h, &SPAN, true);
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-0102030405060708-01").as_str()
        );
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE", "passed on untouched");
    }

    #[test]
    fn w3c_keeps_other_flags_and_reads_later_versions() {
        let c = extract(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{PARENT}-02"),
        )]))
        .unwrap();
        assert_eq!(c.sampled, Some(false));
        let mut h = HeaderMap::new();
        c.inject(&mut h, &SPAN, true);
        assert!(h["traceparent"].to_str().unwrap().ends_with("-03"));
        let later = format!("cc-{TRACE}-{PARENT}-01-what-the-future-holds");
        assert!(extract(&headers(&[("traceparent", &later)])).is_some());
    }

    #[test]
    fn invalid_w3c_is_no_context() {
        for bad in [
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{PARENT}-1"),
            format!("00_{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-0g"),
            String::new(),
            "00-".into(),
        ] {
            assert_eq!(extract(&headers(&[("traceparent", &bad)])), None, "{bad:?}");
        }
    }

    #[test]
    fn w3c_wins_over_b3() {
        let h = headers(&[
            ("b3", &format!("{TRACE}-{PARENT}-1")),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-00")),
        ]);
        assert_eq!(extract(&h).unwrap().format, Format::W3c);
    }

    #[test]
    fn b3_multi_is_read_and_continued() {
        let mut h = headers(&[
            ("x-b3-traceid", &TRACE[16..]),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ]);
        let c = extract(&h).unwrap();
        assert_eq!(c.format, Format::B3Multi { long: false });
        assert_eq!(
            hex(&c.trace_id),
            format!("{}{}", "0".repeat(16), &TRACE[16..])
        );
        c.inject(&mut h, &SPAN, true);
        assert_eq!(h["x-b3-traceid"], &TRACE[16..]);
        assert_eq!(h["x-b3-spanid"], "0102030405060708");
        assert_eq!(h["x-b3-parentspanid"], PARENT);
        assert_eq!(h["x-b3-sampled"], "1");
    }

    #[test]
    fn b3_sampling_states() {
        let with = |sampled: Option<&str>, flags: Option<&str>| {
            let mut h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]);
            if let Some(s) = sampled {
                h.insert("x-b3-sampled", HeaderValue::from_str(s).unwrap());
            }
            if let Some(f) = flags {
                h.insert("x-b3-flags", HeaderValue::from_str(f).unwrap());
            }
            extract(&h).map(|c| c.sampled)
        };
        assert_eq!(with(Some("1"), None), Some(Some(true)));
        assert_eq!(with(Some("true"), None), Some(Some(true)));
        assert_eq!(with(Some("0"), None), Some(Some(false)));
        assert_eq!(with(None, None), Some(None), "deferred");
        assert_eq!(with(Some("0"), Some("1")), Some(Some(true)), "debug");
        assert_eq!(with(Some("yes"), None), None);
    }

    #[test]
    fn b3_single_is_read_and_continued() {
        let mut h = headers(&[("b3", &format!("{TRACE}-{PARENT}-1-05e3ac9a4f6e3b90"))]);
        let c = extract(&h).unwrap();
        assert_eq!(c.format, Format::B3Single { long: true });
        assert_eq!(c.sampled, Some(true));
        c.inject(&mut h, &SPAN, true);
        assert_eq!(
            h["b3"],
            format!("{TRACE}-0102030405060708-1-{PARENT}").as_str()
        );
        let deferred = extract(&headers(&[("b3", &format!("{TRACE}-{PARENT}"))])).unwrap();
        assert_eq!(deferred.sampled, None);
        let debug = extract(&headers(&[("b3", &format!("{TRACE}-{PARENT}-d"))])).unwrap();
        assert_eq!(debug.sampled, Some(true));
    }

    #[test]
    fn invalid_b3_is_no_context() {
        for bad in [
            "0".to_string(),
            "1".into(),
            TRACE.to_string(),
            format!("{TRACE}-{PARENT}-x"),
            format!("{TRACE}-{PARENT}-1-{PARENT}-more"),
            format!("{TRACE}-{PARENT}-1-zz"),
            format!("{}-{PARENT}-1", &TRACE[..20]),
            format!("{TRACE}-{}", &PARENT[..8]),
        ] {
            assert_eq!(extract(&headers(&[("b3", &bad)])), None, "{bad:?}");
        }
        let h = headers(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", PARENT)]);
        assert_eq!(extract(&h), None);
        let only_trace = headers(&[("x-b3-traceid", TRACE)]);
        assert_eq!(extract(&only_trace), None);
    }

    #[test]
    fn an_edge_trace_is_w3c_and_sampled() {
        let mut h = HeaderMap::new();
        start(&mut h, &[0xab; 16], &SPAN);
        let c = extract(&h).unwrap();
        assert_eq!(c.trace_id, [0xab; 16]);
        assert_eq!(c.parent_id, SPAN);
        assert_eq!(c.sampled, Some(true));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 7u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    b"0123456789abcdef-ABff"[(seed >> 33) as usize % 21]
                })
                .collect();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                for name in ["traceparent", "b3"] {
                    let mut h = HeaderMap::new();
                    h.insert(HeaderName::from_static(name), v.clone());
                    if let Some(c) = extract(&h) {
                        c.inject(&mut h, &SPAN, true);
                        assert!(extract(&h).is_some(), "an injected context reads back");
                    }
                }
            }
        }
    }
}
