//! A controllable Linkerd destination service and fixed-latency HTTP endpoints, for discovery
//! and load-balancing tests.
//!
//! [`Discovery`] serves `Destination/Get` over real gRPC from its own thread and runtime, so a
//! test can kill it outright ([`Discovery::kill`]: every stream and connection is dropped).
//! Each served name has a set of endpoint addresses; changing it with [`Discovery::set`]
//! streams the difference (`add` / `remove`) to every watcher, as the real service does. An
//! unknown name gets `NOT_FOUND`.

use crate::{
    grpc::Answers,
    watched::{Streamed, Watched, publish},
};
use linkerd2_proxy_api::destination::{
    AddrSet, GetDestination, NoEndpoints, Update, WeightedAddr, WeightedAddrSet, update,
};
use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tonic::{Request, Status, codegen::tokio_stream::wrappers::ReceiverStream};

type Names = Watched<String, BTreeSet<SocketAddr>>;

#[derive(Clone)]
struct Svc {
    names: Names,
    watchers: Arc<AtomicUsize>,
}

fn tcp(a: SocketAddr) -> linkerd2_proxy_api::net::TcpAddress {
    use linkerd2_proxy_api::net::{IpAddress, TcpAddress, ip_address::Ip};
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => Ip::Ipv4(u32::from(v4)),
        std::net::IpAddr::V6(_) => panic!("IPv4 only in tests"),
    };
    TcpAddress {
        ip: Some(IpAddress { ip: Some(ip) }),
        port: u32::from(a.port()),
    }
}

fn add(addrs: impl Iterator<Item = SocketAddr>) -> Update {
    Update {
        update: Some(update::Update::Add(WeightedAddrSet {
            addrs: addrs
                .map(|a| WeightedAddr {
                    addr: Some(tcp(a)),
                    weight: 10000,
                    // As Linkerd's destination service labels a pod's address.
                    metric_labels: [("pod".to_string(), format!("pod-{}", a.port()))].into(),
                    ..Default::default()
                })
                .collect(),
            // And the service's.
            metric_labels: [("namespace".to_string(), "test".to_string())].into(),
        })),
    }
}

impl Answers for Svc {
    fn get(&self, request: Request<GetDestination>) -> Result<Streamed<Update>, Status> {
        let path = request.into_inner().path;
        let mut rx = self
            .names
            .lock()
            .expect("names lock")
            .get(&path)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| Status::not_found(format!("unknown service {path}")))?;
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let watchers = self.watchers.clone();
        watchers.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut sent: BTreeSet<SocketAddr> = rx.borrow_and_update().clone();
            let first = if sent.is_empty() {
                Update {
                    update: Some(update::Update::NoEndpoints(NoEndpoints { exists: true })),
                }
            } else {
                add(sent.iter().copied())
            };
            if tx.send(Ok(first)).await.is_ok() {
                while rx.changed().await.is_ok() {
                    let now = rx.borrow_and_update().clone();
                    let added: Vec<_> = now.difference(&sent).copied().collect();
                    let removed: Vec<_> = sent.difference(&now).copied().collect();
                    if !added.is_empty() && tx.send(Ok(add(added.into_iter()))).await.is_err() {
                        break;
                    }
                    if !removed.is_empty() {
                        let rm = Update {
                            update: Some(update::Update::Remove(AddrSet {
                                addrs: removed.into_iter().map(tcp).collect(),
                            })),
                        };
                        if tx.send(Ok(rm)).await.is_err() {
                            break;
                        }
                    }
                    sent = now;
                }
            }
            watchers.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }

    fn get_profile(&self, _: Request<GetDestination>) -> Status {
        Status::unimplemented("profiles are not served by this test server")
    }
}

/// The destination service, running on its own thread until killed or dropped.
#[derive(Debug)]
pub struct Discovery {
    pub addr: SocketAddr,
    names: Names,
    watchers: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Discovery {
    pub fn start() -> Self {
        let names: Names = Arc::default();
        let watchers = Arc::new(AtomicUsize::new(0));
        let svc = Svc {
            names: names.clone(),
            watchers: watchers.clone(),
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("discovery runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let server = crate::grpc::serve_on(svc, listener);
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection and stream task.
            drop(rt);
        });
        let addr = addr_rx.recv().expect("discovery address");
        Self {
            addr,
            names,
            watchers,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Sets the endpoints of `name` (`host:port`), creating it if needed.
    pub fn set(&self, name: &str, addrs: &[SocketAddr]) {
        let set: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
        publish(&self.names, name.to_string(), set);
    }

    /// Open `Get` streams.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// Stops the service at once: connections and streams are dropped, the port closes.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP/1.1 endpoint that answers every request `200 <name>` after a fixed delay, and counts.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    pub async fn start(delay: Duration) -> Self {
        use hyper::{server::conn::http1, service::service_fn};
        use hyper_util::rt::TokioIo;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let h = h.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            h.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(hyper::Response::new(crate::client::full(
                                addr.to_string(),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
