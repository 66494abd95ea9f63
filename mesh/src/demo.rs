//! Demo workloads for `mesh up`: small HTTP services that call each other through their
//! sidecars.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload's name, returned in responses.
    #[arg(long)]
    name: String,
    /// Where the app listens.
    #[arg(long)]
    listen: SocketAddr,
    /// Services this app calls for every request it serves, as `http://host:port/path`,
    /// through the HTTP proxy given by --via.
    #[arg(long)]
    call: Vec<String>,
    /// The sidecar's outbound listener, used as an HTTP proxy for --call.
    #[arg(long)]
    via: Option<SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let args = Arc::new(args);
    loop {
        let (stream, _) = listener.accept().await?;
        let args = args.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let args = args.clone();
                async move { Ok::<_, Infallible>(handle(&args, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(args: &Args, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = format!("{} served {}\n", args.name, req.uri().path());
    let mut status = StatusCode::OK;
    for url in &args.call {
        match call(args.via, url).await {
            Ok((s, b)) => {
                if !s.is_success() {
                    status = StatusCode::BAD_GATEWAY;
                }
                body.push_str(&format!("  {url} -> {s}: {}", String::from_utf8_lossy(&b)));
            }
            Err(e) => {
                status = StatusCode::BAD_GATEWAY;
                body.push_str(&format!("  {url} -> error: {e}\n"));
            }
        }
    }
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp
}

/// One request through the sidecar's HTTP proxy (absolute-form), on a fresh connection to the
/// local sidecar; the sidecar pools connections to the other side.
async fn call(via: Option<SocketAddr>, url: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url} has no host"))?
        .clone();
    let connect_to = match via {
        Some(v) => v,
        None => tokio::net::lookup_host(authority.as_str())
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?,
    };
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(connect_to),
    )
    .await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let target = if via.is_some() {
        uri.clone()
    } else {
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()?
    };
    let req = Request::get(target)
        .header(http::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())?;
    let rsp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
