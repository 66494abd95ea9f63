//! The proxy's gRPC channels to the control plane (identity, destination, policy): mTLS to a
//! control-plane service checked against its identity, or plaintext to a loopback address.

use crate::tls::{self, CredsRx};
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, time::Duration};
use tonic::transport::Channel;

/// A lazily connected gRPC channel to a control-plane service at `svc_addr`: mTLS verifying
/// `svc_name`, or plaintext when the address is loopback (a control-plane pod talking to its
/// own local service). `name_var` names the variable in errors.
pub(crate) fn control_channel(
    svc_addr: &str,
    svc_name: Option<&str>,
    creds: Option<CredsRx>,
    name_var: &'static str,
) -> Result<Channel, String> {
    let svc_addr = svc_addr.to_string();
    let tls = match (svc_name.map(str::to_string), creds) {
        (Some(name), Some(creds)) => Some((name, creds)),
        (Some(_), None) => {
            return Err(format!("{name_var} needs the proxy's identity"));
        }
        (None, _) => None,
    };
    let connector = tower_service_fn(move |_uri: http::Uri| {
        let svc_addr = svc_addr.clone();
        let tls = tls.clone();
        async move {
            let addr: SocketAddr = tokio::net::lookup_host(svc_addr.as_str())
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{svc_addr}: no addresses")))?;
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match (&tls, addr.ip().is_loopback()) {
                (Some((name, creds)), false) => Box::new(
                    tls::connect(creds, name, tcp)
                        .await
                        .map_err(std::io::Error::other)?,
                ),
                (None, false) => {
                    return Err(std::io::Error::other(format!(
                        "{name_var} is required for a non-loopback address"
                    )));
                }
                (_, true) => Box::new(tcp),
            };
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_static("http://control-plane.invalid")
        .connect_timeout(Duration::from_secs(3));
    Ok(endpoint.connect_with_connector_lazy(connector))
}

pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A `tower::Service` from a closure (tonic's connector takes one).
pub(crate) fn tower_service_fn<F, Fut, R>(f: F) -> ServiceFn<F>
where
    F: FnMut(http::Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    ServiceFn(f)
}

#[derive(Clone)]
pub(crate) struct ServiceFn<F>(F);

impl<F, Fut, R> tower_service::Service<http::Uri> for ServiceFn<F>
where
    F: FnMut(http::Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    type Response = R;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Fut {
        (self.0)(uri)
    }
}
