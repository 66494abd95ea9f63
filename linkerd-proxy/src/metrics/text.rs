//! Prometheus text format helpers.

use crate::lock;
use std::{collections::HashMap, fmt::Write as _, sync::Mutex};

pub(super) fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One metric family: its HELP and TYPE lines, then one sample per series.
pub(super) fn samples<T>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    series: &[T],
    labels: impl Fn(&T) -> String,
    value: impl Fn(&T) -> u64,
) {
    family(out, name, help, kind);
    for t in series {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(t), value(t));
    }
}

/// A registry map's entries, copied out from under its lock (values are counters or `Arc`s of
/// them) and sorted by label set: a scrape renders in a stable order and formats nothing while
/// the hot path could be waiting on the lock.
pub(super) fn snapshot<K: Clone + Ord, V: Clone>(map: &Mutex<HashMap<K, V>>) -> Vec<(K, V)> {
    let mut all: Vec<(K, V)> = lock(map)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// A label value escaped for the text format.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
