//! The inbound proxy's ClientHello peek: `parse` on any bytes, and `peek` reading them in
//! fuzzer-chosen chunks (the first byte; see `Chunked::from_input`). `parse` never panics; an
//! SNI it returns is the input's (lowercased: `parse` folds ASCII case); `peek` decides as
//! `parse` does on what it read, and replays every byte it read.

#![no_main]

#[path = "common.rs"]
mod common;

use common::Chunked;
use libfuzzer_sys::fuzz_target;
use linkerd_proxy::tls::client_hello::{self, Peek};
use std::time::Duration;

/// Whether `needle` occurs in `haystack`, ignoring ASCII case.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn check_sni(found: &Peek, input: &[u8]) {
    if let Peek::ClientHello(Some(sni)) = found {
        assert!(
            contains_ignore_case(input, sni.as_bytes()),
            "SNI {sni:?} is not in the input"
        );
        assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
    }
}

fuzz_target!(|input: &[u8]| {
    let whole = client_hello::parse(input);
    check_sni(&whole, input);

    let (reader, payload) = Chunked::from_input(input);
    let stalls = input.first().is_some_and(|c| c & 1 == 1);
    let expected = client_hello::parse(payload);
    check_sni(&expected, payload);

    common::runtime().block_on(async move {
        let (found, io) = client_hello::peek(reader, Duration::from_millis(100))
            .await
            .expect("the reader never fails");
        check_sni(&found, payload);
        let (prefix, inner) = io.into_parts();
        assert!(
            payload.starts_with(&prefix),
            "the replayed bytes are not the input's"
        );
        let mut all = prefix.to_vec();
        all.extend_from_slice(inner.unread());
        assert_eq!(all, payload, "bytes were lost or reordered");
        // What `peek` found is what `parse` says of the bytes it read, an incomplete record
        // (the client closed or paused) counting as not TLS.
        let on_prefix = match client_hello::parse(&prefix) {
            Peek::Incomplete => Peek::NotTls,
            p => p,
        };
        assert_eq!(found, on_prefix);
        if !stalls && found != Peek::NotTls {
            assert_eq!(found, expected, "a closed stream was read whole");
        }
    });
});
