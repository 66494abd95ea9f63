use super::*;
use tokio::io::AsyncWriteExt;

#[test]
fn classifies_prefixes() {
    assert_eq!(classify(b""), Verdict::NeedMore);
    assert_eq!(classify(b"GE"), Verdict::NeedMore);
    assert_eq!(
        classify(b"GET / HTTP/1.1\r\n"),
        Verdict::Done(Protocol::Http1)
    );
    assert_eq!(
        classify(b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        Verdict::Done(Protocol::Http1)
    );
    assert_eq!(
        classify(b"CONNECT db:5432 HTTP/1.1\r\n"),
        Verdict::Done(Protocol::Http1)
    );
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Verdict::NeedMore);
    assert_eq!(classify(H2_PREFACE), Verdict::Done(Protocol::Http2));
    // A TLS ClientHello, a Postgres startup and a Redis command are not HTTP.
    assert_eq!(
        classify(&[0x16, 0x03, 0x01, 0x02]),
        Verdict::Done(Protocol::Opaque)
    );
    assert_eq!(
        classify(&[0, 0, 0, 8, 4, 210, 22, 47]),
        Verdict::Done(Protocol::Opaque)
    );
    assert_eq!(
        classify(b"*1\r\n$4\r\nPING\r\n"),
        Verdict::Done(Protocol::Opaque)
    );
    // HTTP/1 with a request line split across reads.
    assert_eq!(classify(b"GET /long/path"), Verdict::NeedMore);
}

#[tokio::test]
async fn detects_http1_across_reads_and_replays_bytes() {
    let (mut client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(async move { detect(server, Duration::from_secs(5)).await });
    client.write_all(b"GET /a").await.unwrap();
    tokio::task::yield_now().await;
    client
        .write_all(b" HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (proto, reason, mut io) = task.await.unwrap().unwrap();
    assert_eq!((proto, reason), (Protocol::Http1, Reason::Matched));
    drop(client);
    let mut all = Vec::new();
    io.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn silence_becomes_opaque_after_the_timeout() {
    let (_client, server) = tokio::io::duplex(64);
    let started = tokio::time::Instant::now();
    let (proto, reason, _) = detect(server, Duration::from_secs(1)).await.unwrap();
    assert_eq!((proto, reason), (Protocol::Opaque, Reason::Timeout));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test]
async fn closed_before_data_is_an_error() {
    let (client, server) = tokio::io::duplex(64);
    drop(client);
    assert!(matches!(
        detect(server, Duration::from_secs(1)).await,
        Err(DetectError::Closed)
    ));
}

#[tokio::test]
async fn a_full_buffer_without_a_request_line_is_opaque() {
    let (mut client, server) = tokio::io::duplex(4096);
    // Token characters with no space: not even a method yet.
    client.write_all(&[b'A'; MAX_PEEK + 10]).await.unwrap();
    let (proto, reason, _) = detect(server, Duration::from_secs(5)).await.unwrap();
    assert_eq!((proto, reason), (Protocol::Opaque, Reason::BufferFull));
}

#[tokio::test]
async fn a_request_target_longer_than_the_buffer_is_http1() {
    let (mut client, server) = tokio::io::duplex(4096);
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_PEEK));
    client.write_all(&long).await.unwrap();
    let (proto, reason, io) = detect(server, Duration::from_secs(5)).await.unwrap();
    assert_eq!((proto, reason), (Protocol::Http1, Reason::Matched));
    assert_eq!(io.prefix().len(), MAX_PEEK);
    // A long run of bytes that are not valid in a request target stays opaque.
    assert!(!starts_like_http1(b"GET /abc\x00\x01"));
}

#[test]
fn arbitrary_bytes_never_panic_and_decide_by_the_buffer_limit() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let len = rng.usize(0..=MAX_PEEK);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // Bias half the cases towards almost-HTTP input.
        if rng.bool() && !buf.is_empty() {
            let prefix = b"GET / HTTP/1.1\r\n";
            let n = prefix.len().min(buf.len()).min(rng.usize(0..=prefix.len()));
            buf[..n].copy_from_slice(&prefix[..n]);
        }
        let verdict = classify(&buf);
        if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
            assert_eq!(verdict, Verdict::Done(Protocol::Http2));
        }
    }
}
