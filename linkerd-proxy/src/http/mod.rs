//! HTTP proxying: serving detected connections, the pooled upstream clients (`h1` for
//! HTTP/1, `h2` for HTTP/2, hyper's for upgrades), and the error responses the proxy writes
//! itself.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod errors;
pub(crate) mod exchange;
pub mod h1;
pub(crate) mod h2;
pub(crate) mod header_timeout;
pub(crate) mod headers;
pub(crate) mod inflight;
pub mod matching;
pub(crate) mod observe;
pub(crate) mod pool;
pub(crate) mod server;
#[cfg(test)]
mod test_support;

pub use self::{
    body::ProxyBody,
    client::Client,
    errors::{L5D_PROXY_ERROR, ProxyError},
};
