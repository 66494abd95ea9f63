//! Support code for the end-to-end tests in `e2e/`: the pieces a proxy meets over real loopback
//! sockets.
//!
//! - [`attack`]: raw HTTP/2 frames (rapid reset), slowloris heads, a process's RSS.
//! - [`server::TestServer`]: an HTTP/1.1 + HTTP/2 server (one port) that records what it
//!   received and has routes for echo, streaming, upgrades, delays, statuses and trailers.
//! - [`tcp::TcpServer`]: a TCP echo server and a server-speaks-first (banner) server.
//! - [`grpc`]: a fake `io.linkerd.proxy.destination.Destination` gRPC server.
//! - [`client`]: HTTP/1 and HTTP/2 clients on single connections, and raw TCP helpers.
//! - [`proxy`]: the proxy in-process ([`proxy::TestProxy`]) or as a process
//!   ([`proxy::ProxyProcess`]).
//! - [`metrics`]: scraping and parsing the admin server's `/metrics`.
//! - [`watched`]: per-key `watch` values and their gRPC streams, for the fake services.
//! - [`outbound`]: a controllable `OutboundPolicies` gRPC server and policy builders.
//! - [`registry`]: our real policy service, in-process, serving a registry file.
//! - [`mesh`]: mTLS support: a CA made at test time, the identity service in-process, meshed
//!   proxies, raw TLS clients and a fake meshed peer, steady traffic.
//! - [`accept_each`] and [`serve_http`]: what the test servers share, the accept loop and HTTP
//!   on one connection.
//!
//! Every listener binds `127.0.0.1:0`, so tests can run in parallel.

pub mod attack;
pub mod client;
pub mod discovery;
pub mod grpc;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tcp;
pub mod watched;

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// The longest any one test may run: a hang fails the test instead of blocking CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`assert_eventually!`] polls before failing.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Runs a test body, failing it if it takes longer than [`TEST_TIMEOUT`].
pub async fn run<F: Future>(test: F) -> F::Output {
    within(TEST_TIMEOUT, "the test", test).await
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not complete within {limit:?}"),
    }
}

/// Binds `127.0.0.1:0` for a test server (`what`) and accepts connections there until the
/// returned task is aborted, handing each to `accepted` (which spawns what serves it). A failed
/// accept (usually EMFILE) backs off instead of spinning.
pub async fn accept_each<F>(what: &str, mut accepted: F) -> (SocketAddr, JoinHandle<()>)
where
    F: FnMut(TcpStream) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind the {what}: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("the {what}'s address: {e}"));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            accepted(stream);
        }
    });
    (addr, task)
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge), upgrades included, on `io` until it closes:
/// `handle` answers each request.
pub async fn serve_http<I, F, Fut>(io: I, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<client::TestBody>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let svc = service_fn(move |req| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(req).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

/// `len` bytes of a pattern whose period (251) divides no power of two, so that lost, repeated
/// or reordered chunks of a body show up as a mismatch.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Polls a condition (which may `.await`) every 20 ms until it holds, failing the test if it
/// still does not after [`EVENTUALLY`].
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {{
        let deadline = ::tokio::time::Instant::now() + $crate::EVENTUALLY;
        loop {
            if $cond {
                break;
            }
            if ::tokio::time::Instant::now() >= deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    $crate::EVENTUALLY,
                    format_args!($($arg)+)
                );
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
        }
    }};
}
