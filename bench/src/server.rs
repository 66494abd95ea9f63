//! The upstream server: 200 with a small fixed body, HTTP/1.1 and HTTP/2 (prior knowledge) on
//! one port. hyper-util's `auto` builder reads the first bytes of each connection and picks the
//! protocol from the HTTP/2 connection preface.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub addr: SocketAddr,
    pub threads: usize,
    pub body_size: usize,
}

/// Runs the server until the process is killed or its parent goes away.
pub fn run(opts: &ServerOpts) -> anyhow::Result<()> {
    let rt = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    }
    .context("building the server runtime")?;
    rt.block_on(serve(opts.addr, Bytes::from(vec![b'x'; opts.body_size])))
}

async fn serve(addr: SocketAddr, body: Bytes) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let parent = std::os::unix::process::parent_id();
    let mut orphan_check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off rather than spin.
                        eprintln!("bench server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    // Errors are clients going away mid-request; nothing to do about them.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = orphan_check.tick() => {
                // The orchestrator died without killing us (SIGKILL): do not linger.
                if std::os::unix::process::parent_id() != parent {
                    return Ok(());
                }
            }
        }
    }
}
