//! A fake Linkerd destination service, to carry real gRPC (HTTP/2, streaming, trailers)
//! through the proxy.
//!
//! `Get` streams [`UPDATES`] updates, the i-th an `Add` with one address of weight `i` and the
//! requested path as a metric label, then ends with status OK. `GetProfile` fails with
//! `NOT_FOUND` and the message `x`.
//!
//! Every fake Destination service of these tests ([`FakeDestination`], `mesh::ClientIdEcho`,
//! `discovery::Discovery`'s) says what it answers through [`Answers`]; [`Fake`] serves it.

use crate::watched::Streamed;
use linkerd2_proxy_api::destination::{
    DestinationProfile, GetDestination, Update, WeightedAddr, WeightedAddrSet,
    destination_client::DestinationClient,
    destination_server::{Destination, DestinationServer},
    update,
};
use std::net::SocketAddr;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{
    Request, Response, Status,
    codegen::tokio_stream,
    transport::{Channel, Endpoint, server::TcpIncoming},
};

/// How many updates `Get` streams.
pub const UPDATES: u32 = 3;

/// What a fake Destination service answers; [`Fake`] serves it over gRPC.
pub trait Answers: Send + Sync + 'static {
    /// The updates `Get` streams for `request`, or its error.
    fn get(&self, request: Request<GetDestination>) -> Result<Streamed<Update>, Status>;

    /// The error `GetProfile` fails `request` with.
    fn get_profile(&self, request: Request<GetDestination>) -> Status;
}

/// A fake Destination service: the gRPC face of an [`Answers`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Fake<A>(pub A);

#[tonic::async_trait]
impl<A: Answers> Destination for Fake<A> {
    type GetStream = Streamed<Update>;
    type GetProfileStream = Streamed<DestinationProfile>;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        self.0.get(request).map(Response::new)
    }

    async fn get_profile(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        Err(self.0.get_profile(request))
    }
}

/// Serves `answers` as a Destination service on `listener`, until the future is dropped.
pub async fn serve_on<A: Answers>(
    answers: A,
    listener: TcpListener,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(DestinationServer::new(Fake(answers)))
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

/// Serves `answers` as a Destination service on an ephemeral loopback port.
pub async fn serve_answers<A: Answers>(answers: A) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC server");
    let addr = listener.local_addr().expect("gRPC server address");
    let task = tokio::spawn(async move {
        if let Err(e) = serve_on(answers, listener).await {
            eprintln!("gRPC test server failed: {e}");
        }
    });
    (addr, task)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FakeDestination;

impl Answers for FakeDestination {
    fn get(&self, request: Request<GetDestination>) -> Result<Streamed<Update>, Status> {
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
        Ok(Box::pin(tokio_stream::iter(updates)))
    }

    fn get_profile(&self, _: Request<GetDestination>) -> Status {
        Status::not_found("x")
    }
}

/// Serves [`FakeDestination`] on an ephemeral loopback port.
pub async fn serve() -> (SocketAddr, JoinHandle<()>) {
    serve_answers(FakeDestination).await
}

/// A destination client whose connection goes to `addr` (the proxy).
pub async fn client(addr: SocketAddr) -> DestinationClient<Channel> {
    connect(addr, None).await
}

/// A destination client whose connection goes to `addr` (a proxy's outbound listener), its
/// requests for `authority`.
pub async fn client_via(addr: SocketAddr, authority: &str) -> DestinationClient<Channel> {
    connect(addr, Some(authority)).await
}

async fn connect(addr: SocketAddr, authority: Option<&str>) -> DestinationClient<Channel> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint");
    if let Some(authority) = authority {
        let origin = format!("http://{authority}")
            .parse()
            .expect("a valid origin");
        endpoint = endpoint.origin(origin);
    }
    let channel = endpoint
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
