//! Protocol detection on a connection's first bytes: `classify` on the whole input, and
//! `detect` reading it in chunks the fuzzer chose (its first byte; see `Chunked::from_input`)
//! from a client that then closes or stalls. Whatever detection decides, every byte it read is
//! replayed, in order, ahead of the bytes it did not read.

#![no_main]

#[path = "common.rs"]
mod common;

use common::{Chunked, End};
use libfuzzer_sys::fuzz_target;
use linkerd_proxy::detect::{self, DetectError, MAX_PEEK, Protocol, Reason, Verdict};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|input: &[u8]| {
    let _ = detect::classify(input);
    let _ = detect::starts_like_http1(input);
    let (reader, payload) = Chunked::from_input(input);
    if let Verdict::Done(Protocol::Http2) = detect::classify(payload) {
        assert!(payload.starts_with(PREFACE));
    }
    let end = if input.first().is_some_and(|c| c & 1 == 1) {
        End::Stall
    } else {
        End::Eof
    };

    common::runtime().block_on(async move {
        let detected = detect::detect(reader, Duration::from_millis(100)).await;
        let (proto, reason, io) = match detected {
            Ok(d) => d,
            Err(DetectError::Closed) => {
                assert!(
                    payload.is_empty(),
                    "closed with {} bytes sent",
                    payload.len()
                );
                assert_eq!(end, End::Eof);
                return;
            }
            Err(DetectError::Io(e)) => panic!("the reader never fails: {e}"),
        };
        let read = io.prefix().to_vec();
        assert!(read.len() <= MAX_PEEK, "read {} bytes", read.len());
        assert!(!read.is_empty() || reason == Reason::Timeout);
        if reason == Reason::Timeout {
            assert_eq!(end, End::Stall, "a timeout from a client that closed");
            assert_eq!(
                proto == Protocol::Opaque,
                read.is_empty(),
                "only silence is opaque after a pause ({proto:?} after {read:?})"
            );
        }
        if proto == Protocol::Http2 && reason == Reason::Matched {
            assert!(read.starts_with(PREFACE));
        }

        // Nothing read is lost: the prefix, then what detection left unread, is the input.
        match end {
            End::Eof => {
                let mut io = io;
                let mut all = Vec::new();
                let n = tokio::time::timeout(Duration::from_secs(1), io.read_to_end(&mut all))
                    .await
                    .expect("replaying a closed stream never waits")
                    .expect("the reader never fails");
                assert_eq!(n, payload.len());
                assert_eq!(all, payload, "the replayed stream differs from the input");
            }
            End::Stall => {
                let (prefix, inner) = io.into_parts();
                assert_eq!(&prefix[..], &read[..]);
                let mut all = prefix.to_vec();
                all.extend_from_slice(inner.unread());
                assert_eq!(all, payload, "bytes were lost or reordered");
            }
        }
    });
});
