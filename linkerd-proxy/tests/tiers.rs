//! The module tiers drawn in `src/lib.rs` hold: every `crate::` and `super::` path in the
//! crate's sources (outside tests and comments) that leaves its own top-level module reaches a
//! module of a lower tier. The table is read from `lib.rs` itself, so the picture a reader
//! sees is the rule that is checked.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `module -> tier` from the ```text block after "Module tiers" in lib.rs. A line is
/// `N  label:  a, b, c`.
fn tiers(lib: &str) -> BTreeMap<String, u32> {
    let start = lib
        .find("Module tiers")
        .expect("lib.rs draws the module tiers");
    let block = &lib[start..];
    let open = block.find("```text").expect("the tiers are a text block") + "```text".len();
    let close = open + block[open..].find("```").expect("the text block ends");
    let mut out = BTreeMap::new();
    for line in block[open..close].lines() {
        let line = line.trim_start_matches("//!").trim();
        if line.is_empty() {
            continue;
        }
        let (tier, rest) = line.split_once(char::is_whitespace).expect("a tier line");
        let tier: u32 = tier.parse().expect("a tier line starts with its number");
        let (_, modules) = rest
            .split_once(':')
            .expect("a tier line names its modules after ':'");
        for m in modules.split(',') {
            let m = m.trim();
            assert!(!m.is_empty(), "an empty module name on tier {tier}");
            assert!(
                out.insert(m.to_owned(), tier).is_none(),
                "{m} is drawn on two tiers"
            );
        }
    }
    out
}

/// The crate's top-level modules, from `mod`, `pub mod` and `pub(crate) mod` lines in lib.rs.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = ["pub(crate) ", "pub "]
                .iter()
                .find_map(|p| l.strip_prefix(p))
                .unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// The source with comments, string and char literals blanked and `#[cfg(test)]` items cut.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"r#\"") {
            let end = src[i + 3..].find("\"#").map_or(b.len(), |e| i + 3 + e + 2);
            i = end;
            out.push_str("\"\"");
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    cut_test_items(&out)
}

/// Drops every item after a `#[cfg(test)]` attribute up to its closing brace or semicolon.
fn cut_test_items(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let (semi, brace) = (item.find(';'), item.find('{'));
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every first path segment named after `prefix` (`crate::`), including each branch of a
/// grouped `use crate::{a::x, b}`.
fn first_segments(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut group = rest;
        while let Some(g) = group.strip_prefix("super::") {
            group = g;
        }
        if let Some(inner) = group.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.push(ident(&item));
        } else {
            out.push(ident(group));
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_stem().is_some_and(|s| s != "tests")
        {
            out.push(p);
        }
    }
}

/// `(top-level module, depth below the crate root)` of a source file: `http/h1.rs` is
/// `("http", 2)`, `http/mod.rs` and `http.rs` are `("http", 1)`.
fn module_of(src: &Path, file: &Path) -> (String, usize) {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    (parts[0].clone(), parts.len())
}

#[test]
fn modules_use_only_lower_tiers() {
    let src = src_dir();
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let tiers = tiers(&lib);
    let modules = declared_modules(&lib);
    let undrawn: Vec<_> = modules.iter().filter(|m| !tiers.contains_key(*m)).collect();
    assert!(
        undrawn.is_empty(),
        "modules missing from the tiers: {undrawn:?}"
    );
    let stale: Vec<_> = tiers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        stale.is_empty(),
        "tiers name modules that do not exist: {stale:?}"
    );

    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        if file
            .file_name()
            .is_some_and(|n| n == "lib.rs" || n == "main.rs")
        {
            continue;
        }
        let (own, depth) = module_of(&src, &file);
        let own_tier = tiers[&own];
        let code = code_only(&fs::read_to_string(&file).expect("read source"));
        let mut used = first_segments(&code, "crate::");
        // `super::` from a top-level module's own file is the crate root; deeper files only
        // reach the root with as many `super::` as their depth.
        let up = "super::".repeat(depth);
        used.extend(first_segments(&code, &up));
        for m in used {
            if m == own || !modules.contains(&m) {
                continue; // the module itself, or a root item (`crate::lock`, `BoxError`)
            }
            checked += 1;
            if tiers[&m] >= own_tier {
                violations.push(format!(
                    "{} (tier {own_tier}) uses {m} (tier {})",
                    file.strip_prefix(&src).expect("under src").display(),
                    tiers[&m]
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} cross-module paths found: the scan is broken"
    );
    assert!(
        violations.is_empty(),
        "upward or sideways imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_nested_and_super_paths() {
    let code = code_only(
        "use crate::{a::X, b::{c, d}, self};\n\
         // crate::commented\n\
         let s = \"crate::in_a_string\";\n\
         fn f() { crate::e::f(); }\n\
         #[cfg(test)]\nmod tests { use crate::tested; }\n\
         use super::super::{g, h::i};",
    );
    let mut got = first_segments(&code, "crate::");
    got.extend(first_segments(&code, "super::super::"));
    assert_eq!(got, ["a", "b", "e", "g", "h"]);
}
