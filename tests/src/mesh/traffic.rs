//! What flows through meshed proxies in the tests: a gRPC service that reports the caller's
//! identity, opaque TCP, and a steady traffic generator.

use super::error_chain;
use crate::{client::TestBody, grpc::Answers, watched::Streamed};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use linkerd2_proxy_api::destination::{
    GetDestination, Update, WeightedAddr, WeightedAddrSet, update,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
};
use tonic::{Status, codegen::tokio_stream};

// === gRPC: a service that reports the caller's identity ===

/// A Destination service that reports the `l5d-client-id` its requests carried: `Get` streams
/// one update whose metric label `client_id` holds it, `GetProfile` fails with `NOT_FOUND` and
/// the message `client_id=<value>`. (`-` when the header is missing.)
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientIdEcho;

fn client_id_of<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("l5d-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

impl Answers for ClientIdEcho {
    fn get(&self, request: tonic::Request<GetDestination>) -> Result<Streamed<Update>, Status> {
        let id = client_id_of(&request);
        let update = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![WeightedAddr {
                    weight: 1,
                    ..Default::default()
                }],
                metric_labels: [("client_id".to_string(), id)].into(),
            })),
        };
        Ok(Box::pin(tokio_stream::iter(vec![Ok(update)])))
    }

    fn get_profile(&self, request: tonic::Request<GetDestination>) -> Status {
        Status::not_found(format!("client_id={}", client_id_of(&request)))
    }
}

/// Serves [`ClientIdEcho`] on an ephemeral loopback port.
pub async fn serve_client_id_echo() -> (SocketAddr, JoinHandle<()>) {
    crate::grpc::serve_answers(ClientIdEcho).await
}

// === opaque TCP ===

/// Writes `data` on a new connection, half-closes, and reads the echo to its end.
pub async fn tcp_echo(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = stream.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut echoed)).await;
    let _w = writer.await.map_err(std::io::Error::other)??;
    match read {
        Ok(r) => r.map(|_| echoed),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no end of the echo within 10 s",
        )),
    }
}

/// Bytes that no detector mistakes for HTTP (the first is 0), of length `len`.
pub fn opaque_payload(len: usize) -> Vec<u8> {
    crate::pattern(len)
}

// === Traffic ===

/// Counts of one traffic stream.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    pub failed: u64,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }
}

/// A steady stream of requests through a proxy until stopped: HTTP/1.1 requests on one
/// keep-alive connection to the outbound listener (proxy mode), every `http_every`; and, if a
/// TCP address is given, an opaque echo on a new connection every `tcp_every` (each one a new
/// mTLS handshake between the proxies).
#[derive(Debug)]
pub struct Traffic {
    stop: watch::Sender<bool>,
    http: JoinHandle<Tally>,
    tcp: Option<JoinHandle<Tally>>,
}

impl Traffic {
    pub fn start(outbound: SocketAddr, uri: String, tcp: Option<SocketAddr>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let http = tokio::spawn(http_loop(
            outbound,
            uri,
            Duration::from_millis(10),
            stopped.clone(),
        ));
        let tcp = tcp
            .map(|addr| tokio::spawn(tcp_loop(addr, Duration::from_millis(50), stopped.clone())));
        Self { stop, http, tcp }
    }

    /// Stops, and returns the HTTP and TCP tallies.
    pub async fn stop(self) -> (Tally, Tally) {
        let _ = self.stop.send(true);
        let http = self.http.await.expect("the HTTP traffic task");
        let tcp = match self.tcp {
            Some(t) => t.await.expect("the TCP traffic task"),
            None => Tally::default(),
        };
        (http, tcp)
    }
}

type Sender1 = hyper::client::conn::http1::SendRequest<TestBody>;

async fn connect1(addr: SocketAddr) -> Result<Sender1, String> {
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Ticks every `every` until told to stop.
struct Ticks {
    tick: tokio::time::Interval,
    stop: watch::Receiver<bool>,
    next: u64,
}

impl Ticks {
    fn new(every: Duration, stop: watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            tick,
            stop,
            next: 0,
        }
    }

    /// Waits for the next tick: its number (from 0), or `None` once told to stop.
    async fn next(&mut self) -> Option<u64> {
        self.tick.tick().await;
        if *self.stop.borrow() {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }
}

async fn http_loop(
    outbound: SocketAddr,
    uri: String,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender1> = None;
    let mut ticks = Ticks::new(every, stop);
    while let Some(i) = ticks.next().await {
        let result = async {
            let s = match sender.as_mut() {
                Some(s) if !s.is_closed() => s,
                _ => sender.insert(connect1(outbound).await?),
            };
            s.ready().await.map_err(|e| error_chain(&e))?;
            let body = format!("request {i}");
            let req = crate::client::request(
                http::Method::POST,
                &uri,
                crate::client::full(Bytes::from(body.clone())),
            );
            let rsp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
                .await
                .map_err(|_| "no response within 5 s".to_string())?
                .map_err(|e| error_chain(&e))?;
            let status = rsp.status();
            let headers = rsp.headers().clone();
            let got = rsp
                .into_body()
                .collect()
                .await
                .map_err(|e| error_chain(&e))?
                .to_bytes();
            if status != 200 || got != body.as_bytes() {
                return Err(format!(
                    "{status} {headers:?} {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Ok::<_, String>(())
        }
        .await;
        match result {
            Ok(()) => tally.ok += 1,
            Err(e) => {
                tally.fail(format!("request {i}: {e}"));
                sender = None;
            }
        }
    }
    tally
}

async fn tcp_loop(addr: SocketAddr, every: Duration, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let data = opaque_payload(2048);
    let mut ticks = Ticks::new(every, stop);
    while let Some(i) = ticks.next().await {
        match tcp_echo(addr, &data).await {
            Ok(echoed) if echoed == data => tally.ok += 1,
            Ok(echoed) => tally.fail(format!(
                "connection {i}: echoed {} bytes, not the {} sent",
                echoed.len(),
                data.len()
            )),
            Err(e) => tally.fail(format!("connection {i}: {e}")),
        }
    }
    tally
}
