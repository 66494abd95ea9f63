//! `Destination/Get` served on hyper directly, every other method by tonic's generated server.
//!
//! Why: tonic encodes a response stream through a per-stream buffer (`BufferSettings`, 8 KB
//! by default) that it keeps for the life of the stream, even while the stream is idle, which
//! is what a `Get` watch is nearly all of the time. Here each message is encoded into its own
//! allocation of exactly its size (gRPC's 5-byte prefix + the protobuf), handed to h2 as one
//! DATA chunk and freed once h2 has written it: an idle watch holds no buffer at all.
//!
//! The wire format is gRPC's, as tonic writes it: `200` with `content-type:
//! application/grpc`, length-prefixed messages, `grpc-status` in the trailers; an error before
//! the first message is a trailers-only response (`Status::into_http`).

use crate::grpc::{DestinationGrpc, EndpointStream};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use prost::Message;
use proto::api::destination::{GetDestination, destination_server::DestinationServer};
use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tonic::{Status, codegen::BoxFuture};

/// The path of the method served here.
pub const GET_PATH: &str = "/io.linkerd.proxy.destination.Destination/Get";

/// A `GetDestination` is a path and a context token: far below this.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// gRPC's message prefix: a compression flag and a big-endian `u32` length.
const PREFIX: usize = 5;

/// The gRPC service hyper serves: `Get` here, the rest through tonic.
#[derive(Clone, Debug)]
pub struct Routes {
    grpc: DestinationGrpc,
    tonic: DestinationServer<DestinationGrpc>,
}

impl Routes {
    pub fn new(grpc: DestinationGrpc) -> Self {
        Self {
            tonic: grpc.clone().into_server(),
            grpc,
        }
    }
}

impl tonic::codegen::Service<http::Request<Incoming>> for Routes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        if req.uri().path() != GET_PATH {
            return self.tonic.call(req);
        }
        let grpc = self.grpc.clone();
        Box::pin(async move {
            let stream = match read_request(req).await {
                Ok(get) => grpc.get_stream(get),
                Err(e) => Err(e),
            };
            Ok(match stream {
                Ok(stream) => {
                    let body = UpdateBody {
                        stream,
                        done: false,
                    };
                    let mut res = http::Response::new(tonic::body::Body::new(body));
                    res.headers_mut()
                        .insert(CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                    res
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the one request message of a server-streaming call (to the end of the request, as
/// tonic does).
async fn read_request(req: http::Request<Incoming>) -> Result<GetDestination, Status> {
    if let Some(enc) = req.headers().get("grpc-encoding")
        && enc.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(enc.as_bytes())
        )));
    }
    let body = Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| Status::internal(format!("cannot read the request: {e}")))?
        .to_bytes();
    let (prefix, msg) = body
        .split_at_checked(PREFIX)
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let len = prefix
        .get(1..)
        .and_then(|l| <[u8; 4]>::try_from(l).ok())
        .map(u32::from_be_bytes)
        .and_then(|l| usize::try_from(l).ok());
    if prefix.first() != Some(&0) {
        return Err(Status::unimplemented(
            "compressed request messages are not supported",
        ));
    }
    if len != Some(msg.len()) {
        return Err(Status::internal("expected exactly one request message"));
    }
    GetDestination::decode(msg).map_err(|e| Status::internal(format!("bad request: {e}")))
}

/// A `Get` response body: one DATA chunk per message, made when hyper asks for it (that is,
/// when h2 has room in the stream's send buffer), then the `grpc-status` trailers.
#[derive(Debug)]
struct UpdateBody {
    stream: EndpointStream,
    done: bool,
}

impl Body for UpdateBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(update) = ready!(self.stream.poll_update(cx)) else {
            self.done = true;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        };
        Poll::Ready(Some(encode(&update).map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One gRPC message in an allocation of exactly its size.
fn encode(msg: &impl Message) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| Status::internal("message too large"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    msg.encode(&mut buf)
        .map_err(|e| Status::internal(format!("cannot encode: {e}")))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::destination::Update;

    #[test]
    fn messages_are_length_prefixed_and_exact() {
        let u = Update {
            update: Some(proto::api::destination::update::Update::NoEndpoints(
                proto::api::destination::NoEndpoints { exists: true },
            )),
        };
        let b = encode(&u).unwrap();
        assert_eq!(b.len(), PREFIX + u.encoded_len());
        assert_eq!(b[0], 0);
        assert_eq!(
            u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize,
            u.encoded_len()
        );
        assert_eq!(Update::decode(&b[PREFIX..]).unwrap(), u);
    }
}
