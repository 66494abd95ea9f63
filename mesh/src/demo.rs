//! Demo workloads for `mesh up`: small services that call each other through their sidecars
//! over HTTP/1.1, HTTP/2 (prior knowledge) and gRPC.
//!
//! One app serves HTTP/1.1 and HTTP/2 on the same port (detected per connection); a request
//! whose content type is `application/grpc` is answered as a unary gRPC call, with the reply in
//! a length-prefixed protobuf message and `grpc-status` in the trailers. For every request it
//! serves, the app first makes its own calls (`--call`) through its sidecar and reports them in
//! the reply; a failed call makes the reply a 502 (gRPC: `UNAVAILABLE`). A `redis:` call is
//! opaque TCP: it counts the request with `INCR` on a Redis server (through a local port of
//! its sidecar, which carries the connection over mTLS).
//!
//! As an app instrumented with OpenTelemetry would, it copies the incoming request's trace
//! context (W3C `traceparent`/`tracestate`, B3 single and multi headers) onto the calls it makes
//! for it, so the sidecars' spans of one request join in one trace across workloads.

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible, net::SocketAddr, process::ExitCode, str::FromStr, sync::Arc,
    time::Duration,
};
use tokio::sync::Mutex;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload's name, returned in responses.
    #[arg(long)]
    name: String,
    /// Where the app listens (HTTP/1.1 and HTTP/2 prior knowledge, gRPC over HTTP/2).
    #[arg(long)]
    listen: SocketAddr,
    /// A call this app makes for every request it serves, as `[http1|h2|grpc:]http://host:port/path`
    /// (default `http1`), sent through the HTTP proxy given by --via (a `grpc` call's path is the
    /// method, e.g. `/demo.Quotes/Get`), or `redis:host:port`: `INCR mesh:hits` on a Redis
    /// server, over a connection of its own.
    #[arg(long)]
    call: Vec<Call>,
    /// The sidecar's outbound listener, used as an HTTP proxy (HTTP/1.1 absolute-form, HTTP/2
    /// `:authority`) for --call.
    #[arg(long)]
    via: Option<SocketAddr>,
}

/// How a call is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
    Grpc,
    Redis,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
            Protocol::Redis => "redis",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Call {
    protocol: Protocol,
    uri: http::Uri,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.protocol, self.uri.authority()) {
            (Protocol::Redis, Some(a)) => write!(f, "redis {a}"),
            _ => write!(f, "{} {}", self.protocol.as_str(), self.uri),
        }
    }
}

impl FromStr for Call {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(addr) = s.strip_prefix("redis:") {
            let uri: http::Uri = format!("redis://{addr}")
                .parse()
                .map_err(|e| format!("{s:?}: {e}"))?;
            if uri.port_u16().is_none() {
                return Err(format!("{s:?}: expected redis:host:port"));
            }
            return Ok(Call {
                protocol: Protocol::Redis,
                uri,
            });
        }
        let (protocol, url) = match s.split_once(":http://") {
            Some(("http1", rest)) => (Protocol::Http1, rest),
            Some(("h2", rest)) => (Protocol::H2, rest),
            Some(("grpc", rest)) => (Protocol::Grpc, rest),
            Some((other, _)) => {
                return Err(format!(
                    "unknown protocol {other:?} (expected http1, h2, grpc or redis)"
                ));
            }
            None => match s.strip_prefix("http://") {
                Some(rest) => (Protocol::Http1, rest),
                None => return Err(format!("{s:?} is not an http:// URL")),
            },
        };
        let uri: http::Uri = format!("http://{url}")
            .parse()
            .map_err(|e| format!("{s:?}: {e}"))?;
        if uri.authority().is_none() {
            return Err(format!("{s:?} has no host"));
        }
        Ok(Call { protocol, uri })
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The trace context headers an app carries from a request to the calls it makes for it.
pub const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

/// The incoming request's trace context headers.
fn trace_context(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        for v in headers.get_all(name) {
            out.append(name, v.clone());
        }
    }
    out
}

struct App {
    args: Args,
    /// One HTTP/2 connection to the sidecar, shared by every h2 and gRPC call.
    h2: Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = Arc::new(App {
        args,
        h2: Mutex::new(None),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        let context = trace_context(req.headers());
        let path = req.uri().path().to_string();
        // Drain the request body (a gRPC request message, or anything else).
        let _ = req.into_body().collect().await;
        let mut text = format!("{} served {path}\n", self.args.name);
        let mut ok = true;
        for call in &self.args.call {
            match self.call(call, &context).await {
                Ok(reply) => text.push_str(&format!("  {call} -> {}\n", reply.trim_end())),
                Err(e) => {
                    ok = false;
                    text.push_str(&format!("  {call} -> error: {e:#}\n"));
                }
            }
        }
        if grpc {
            grpc_response(ok, &text)
        } else {
            let mut rsp = Response::new(Full::new(Bytes::from(text)).boxed());
            if !ok {
                *rsp.status_mut() = StatusCode::BAD_GATEWAY;
            }
            rsp
        }
    }

    async fn call(&self, call: &Call, context: &HeaderMap) -> anyhow::Result<String> {
        match call.protocol {
            Protocol::Http1 => self.call_http1(&call.uri, context).await,
            Protocol::H2 | Protocol::Grpc => self.call_h2(call, context).await,
            Protocol::Redis => call_redis(&call.uri).await,
        }
    }

    /// One request through the sidecar's HTTP proxy (absolute-form) on a fresh connection; the
    /// sidecar pools connections to the other side.
    async fn call_http1(&self, uri: &http::Uri, context: &HeaderMap) -> anyhow::Result<String> {
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{uri} has no host"))?
            .clone();
        let connect_to = match self.args.via {
            Some(v) => v,
            None => tokio::net::lookup_host(authority.as_str())
                .await?
                .next()
                .ok_or_else(|| anyhow!("cannot resolve {authority}"))?,
        };
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(connect_to),
        )
        .await
        .context("connect timed out")??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let target = if self.args.via.is_some() {
            uri.clone()
        } else {
            uri.path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .parse()?
        };
        let mut req = Request::get(target)
            .header(header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        req.headers_mut().extend(context.clone());
        let rsp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .context("no response within 5 s")??;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body).trim_end());
        }
        Ok(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }

    /// An HTTP/2 (or gRPC) request on the shared prior-knowledge connection to the sidecar,
    /// which routes it by `:authority`.
    async fn call_h2(&self, call: &Call, context: &HeaderMap) -> anyhow::Result<String> {
        let mut sender = self.h2_sender().await?;
        let grpc = call.protocol == Protocol::Grpc;
        let mut req = Request::post(call.uri.clone());
        let body = if grpc {
            req = req
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers");
            grpc_frame(&self.args.name)
        } else {
            req = req.method(http::Method::GET);
            Bytes::new()
        };
        let mut req = req.body(Full::new(body))?;
        req.headers_mut().extend(context.clone());
        let rsp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .context("no response within 5 s")?;
        let rsp = match rsp {
            Ok(rsp) => rsp,
            Err(e) => {
                // The connection may be gone: dial again on the next call.
                self.h2.lock().await.take();
                return Err(e.into());
            }
        };
        let status = rsp.status();
        let collected = rsp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        if !grpc {
            if !status.is_success() {
                bail!("{status}: {}", String::from_utf8_lossy(&body).trim_end());
            }
            return Ok(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("missing");
        if grpc_status != "0" {
            let message = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            bail!("grpc-status {grpc_status} {message}");
        }
        let text = parse_grpc_frame(&body).context("a malformed gRPC reply")?;
        Ok(format!("grpc-status 0: {text}"))
    }

    async fn h2_sender(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
        let mut slot = self.h2.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let via = self
            .args
            .via
            .ok_or_else(|| anyhow!("HTTP/2 and gRPC calls need --via (the sidecar)"))?;
        let stream =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(via))
                .await
                .context("connect timed out")??;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

/// `INCR mesh:hits` on a fresh connection: the new count.
async fn call_redis(uri: &http::Uri) -> anyhow::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = uri
        .authority()
        .ok_or_else(|| anyhow!("{uri} has no address"))?
        .as_str();
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"*2\r\n$4\r\nINCR\r\n$9\r\nmesh:hits\r\n")
        .await?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut line))
        .await
        .context("no reply within 5 s")??;
    redis_integer(&line).map(|n| format!("hits {n}"))
}

/// A RESP integer reply (`:42\r\n`); an error reply (`-ERR ...`) is an error.
fn redis_integer(line: &str) -> anyhow::Result<i64> {
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some((":", n)) => n
            .parse()
            .with_context(|| format!("a bad integer reply {line:?}")),
        Some(("-", e)) => bail!("redis: {e}"),
        _ if line.is_empty() => bail!("the connection closed without a reply"),
        _ => bail!("an unexpected reply {line:?}"),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A unary gRPC reply: one message (a protobuf with the text as field 1) and the status in the
/// trailers.
fn grpc_response(ok: bool, text: &str) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    if ok {
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
    } else {
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("an upstream call failed"),
        );
    }
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = if ok {
        vec![
            Ok(Frame::data(grpc_frame(text))),
            Ok(Frame::trailers(trailers)),
        ]
    } else {
        vec![Ok(Frame::trailers(trailers))]
    };
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    let mut rsp = Response::new(BodyExt::boxed(body));
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    rsp
}

/// A gRPC length-prefixed message holding a protobuf message whose field 1 is `text`.
fn grpc_frame(text: &str) -> Bytes {
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a); // field 1, length-delimited
    put_varint(&mut msg, text.len() as u64);
    msg.put_slice(text.as_bytes());
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0); // not compressed
    out.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    out.put_slice(&msg);
    out.freeze()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// The text of a message written by [`grpc_frame`].
fn parse_grpc_frame(body: &[u8]) -> anyhow::Result<String> {
    let [flag, a, b, c, d, msg @ ..] = body else {
        bail!("{} bytes, shorter than a message header", body.len());
    };
    if *flag != 0 {
        bail!("compressed messages are not supported");
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let msg = msg
        .get(..len)
        .ok_or_else(|| anyhow!("the message is truncated"))?;
    let Some((&0x0a, rest)) = msg.split_first() else {
        bail!("field 1 is missing");
    };
    let mut len = 0u64;
    let mut shift = 0;
    let mut i = 0;
    loop {
        let byte = *rest.get(i).ok_or_else(|| anyhow!("a truncated varint"))?;
        len |= u64::from(byte & 0x7f) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            bail!("a varint too long");
        }
    }
    let text = rest
        .get(i..i + usize::try_from(len)?)
        .ok_or_else(|| anyhow!("field 1 is truncated"))?;
    Ok(String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_headers_are_carried_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba8-e457b5a2e4d86bd1-1"),
        );
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        h.insert("authorization", HeaderValue::from_static("secret"));
        let c = trace_context(&h);
        assert_eq!(c.len(), 3);
        assert!(c.get("authorization").is_none());
        assert_eq!(c["x-b3-sampled"], "1");
    }

    #[test]
    fn grpc_frames_round_trip() {
        let long = "x".repeat(300);
        for text in ["", "hello", long.as_str()] {
            assert_eq!(parse_grpc_frame(&grpc_frame(text)).unwrap(), text);
        }
        assert!(parse_grpc_frame(&[0, 0, 0]).is_err());
        assert!(parse_grpc_frame(&[0, 0, 0, 0, 9, 0x0a]).is_err());
    }

    #[test]
    fn redis_replies_are_read() {
        assert_eq!(redis_integer(":42\r\n").unwrap(), 42);
        assert!(
            format!("{:#}", redis_integer("-ERR wrong type\r\n").unwrap_err())
                .contains("wrong type")
        );
        assert!(redis_integer("").is_err());
        assert!(redis_integer("+OK\r\n").is_err());
    }

    #[test]
    fn calls_parse_with_their_protocol() {
        let c: Call = "grpc:http://quotes.demo.svc.cluster.local:8080/demo.Quotes/Get"
            .parse()
            .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.uri.path(), "/demo.Quotes/Get");
        let c: Call = "http://backend:8080/api".parse().unwrap();
        assert_eq!(c.protocol, Protocol::Http1);
        assert!("spdy:http://x/".parse::<Call>().is_err());
        let c: Call = "redis:127.0.0.10:6379".parse().unwrap();
        assert_eq!(c.protocol, Protocol::Redis);
        assert_eq!(c.uri.authority().unwrap().as_str(), "127.0.0.10:6379");
        assert!("redis:127.0.0.10".parse::<Call>().is_err());
        assert!("ftp://x/".parse::<Call>().is_err());
    }
}
