//! A fake Linkerd destination service, to carry real gRPC (HTTP/2, streaming, trailers)
//! through the proxy.
//!
//! `Get` streams [`UPDATES`] updates, the i-th an `Add` with one address of weight `i` and the
//! requested path as a metric label, then ends with status OK. `GetProfile` fails with
//! `NOT_FOUND` and the message `x`.

use linkerd2_proxy_api::destination::{
    DestinationProfile, GetDestination, Update, WeightedAddr, WeightedAddrSet,
    destination_client::DestinationClient,
    destination_server::{Destination, DestinationServer},
    update,
};
use std::{net::SocketAddr, pin::Pin};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{
    Request, Response, Status,
    codegen::tokio_stream::{self, Stream},
    transport::{Channel, Endpoint, server::TcpIncoming},
};

/// How many updates `Get` streams.
pub const UPDATES: u32 = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct FakeDestination;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Destination for FakeDestination {
    type GetStream = Streamed<Update>;
    type GetProfileStream = Streamed<DestinationProfile>;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let path = request.into_inner().path;
        let updates: Vec<Result<Update, Status>> = (1..=UPDATES)
            .map(|weight| {
                Ok(Update {
                    update: Some(update::Update::Add(WeightedAddrSet {
                        addrs: vec![WeightedAddr {
                            weight,
                            ..Default::default()
                        }],
                        metric_labels: [("path".to_string(), path.clone())].into(),
                    })),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(updates))))
    }

    async fn get_profile(
        &self,
        _: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        Err(Status::not_found("x"))
    }
}

/// Serves [`FakeDestination`] on an ephemeral loopback port.
pub async fn serve() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC server");
    let addr = listener.local_addr().expect("gRPC server address");
    let task = tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .add_service(DestinationServer::new(FakeDestination))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
        if let Err(e) = res {
            eprintln!("gRPC test server failed: {e}");
        }
    });
    (addr, task)
}

/// A destination client whose connection goes to `addr` (the proxy).
pub async fn client(addr: SocketAddr) -> DestinationClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"));
    DestinationClient::new(channel)
}

pub fn get_destination(path: &str) -> GetDestination {
    GetDestination {
        scheme: "k8s".to_string(),
        path: path.to_string(),
        context_token: String::new(),
    }
}
