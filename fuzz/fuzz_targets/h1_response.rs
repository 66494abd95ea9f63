//! The proxy's own HTTP/1 client reading a server's response: the fuzz input is everything the
//! server writes before it closes. Three exchanges: a GET on a new connection (the server
//! half-closes after its bytes), a GET on a pooled connection the server had closed (sent again
//! on the connection `reconnect` gives, whose server writes the input), and a small POST (the
//! server drops the connection after its bytes). Nothing may panic or hang: every exchange ends, with a response
//! whose body reads to its end (as long as its `Content-Length` said) or with an error.

#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use libfuzzer_sys::fuzz_target;
use linkerd_proxy::{
    http::h1::{self, Conn, Pool},
    metrics::TcpStats,
};
use std::{cell::Cell, net::SocketAddr, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Longer than anything the exchange could legitimately wait for; with the paused clock, a
/// hang reaches it as soon as every task waits.
const HANG: Duration = Duration::from_secs(600);

/// How the scripted server ends after writing its bytes.
#[derive(Clone, Copy)]
enum Close {
    /// Shuts down its write side, then reads (and drops) whatever the client sends.
    Half,
    /// Drops the connection.
    Full,
}

async fn server(mut io: DuplexStream, response: Vec<u8>, close: Close) {
    if io.write_all(&response).await.is_err() {
        return;
    }
    match close {
        Close::Full => {}
        Close::Half => {
            let _ = io.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

fn connect(response: &[u8], close: Close, stats: &Arc<TcpStats>, addr: SocketAddr) -> Conn {
    // Room for any input, so the server's writes never wait for the client's reads.
    let (client, srv) = tokio::io::duplex(response.len() + 64 * 1024);
    tokio::spawn(server(srv, response.to_vec(), close));
    Conn::new(Box::new(client), stats.clone(), (addr, None))
}

/// Reads the whole response, checking its body against the length it announced.
async fn read_response<B>(rsp: Result<http::Response<h1::RecvBody<B>>, h1::Error>)
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(rsp) = rsp else { return };
    let _ = (rsp.status(), rsp.version(), rsp.headers().len());
    let announced = http_body::Body::size_hint(rsp.body()).exact();
    if let Ok(body) = rsp.into_body().collect().await {
        let _ = body.trailers().map(http::HeaderMap::len);
        let body = body.to_bytes();
        if let Some(n) = announced {
            assert_eq!(body.len() as u64, n, "the body is not the length announced");
        }
    }
}

/// What the exchanges share: the pool, the connections' stats, the server's address, and the
/// fuzz input (what a reconnected server writes).
struct Client<'a> {
    pool: Arc<Pool>,
    stats: Arc<TcpStats>,
    addr: SocketAddr,
    response: &'a [u8],
}

impl Client<'_> {
    /// A connection whose server writes `bytes`, then ends as `close`.
    fn connect(&self, bytes: &[u8], close: Close) -> Conn {
        connect(bytes, close, &self.stats, self.addr)
    }

    /// Sends `req` on `conn` (`reused`: as a pooled connection) and reads the response; a
    /// reconnection's server writes the input, then ends as `then`. Panics with `hung` if the
    /// exchange does not end; returns how many times `reconnect` was called.
    async fn exchange<B>(
        &self,
        conn: Conn,
        reused: bool,
        req: Request<B>,
        then: Close,
        hung: &str,
    ) -> u32
    where
        B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let reconnected = Cell::new(0u32);
        let exchange = async {
            let rsp = h1::send(&self.pool, conn, reused, req, || {
                reconnected.set(reconnected.get() + 1);
                std::future::ready(Ok::<_, h1::Error>(self.connect(self.response, then)))
            })
            .await;
            read_response(rsp).await;
        };
        tokio::time::timeout(HANG, exchange).await.expect(hung);
        reconnected.get()
    }
}

fuzz_target!(|response: &[u8]| {
    common::runtime().block_on(async {
        let client = Client {
            pool: Arc::new(Pool::new(4)),
            stats: Arc::new(TcpStats::default()),
            addr: SocketAddr::from(([10, 0, 0, 1], 8080)),
            response,
        };

        // A GET on a new connection: `reconnect` must not be called.
        let get = Request::get("/index.html?q=1")
            .header("host", "web.emojivoto.svc.cluster.local")
            .header("accept", "*/*")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let conn = client.connect(response, Close::Half);
        let reconnected = client
            .exchange(conn, false, get, Close::Half, "the GET hung")
            .await;
        assert_eq!(
            reconnected, 0,
            "reconnected a connection that was not reused"
        );

        // A GET on a "pooled" connection the server had closed: sent again, once, on the
        // connection `reconnect` gives, whose server answers with the input.
        let get = Request::get("/api/list")
            .header("host", "web.emojivoto.svc.cluster.local")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let conn = client.connect(b"", Close::Full);
        let reconnected = client
            .exchange(conn, true, get, Close::Half, "the retried GET hung")
            .await;
        assert_eq!(reconnected, 1, "a stale pooled connection is retried once");

        // A POST with a body, on a new connection the server drops after its bytes.
        let post = Request::post("/api/vote")
            .header("host", "web.emojivoto.svc.cluster.local")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"choice=:doughnut:")))
            .expect("a valid request");
        let conn = client.connect(response, Close::Full);
        let reconnected = client
            .exchange(conn, false, post, Close::Full, "the POST hung")
            .await;
        assert_eq!(
            reconnected, 0,
            "reconnected a connection that was not reused"
        );

        // Whatever went back to the pool can be checked out (or is found closed) without
        // trouble.
        while let Some(conn) = client.pool.checkout(&(client.addr, None)) {
            drop(conn);
        }
    });
});
