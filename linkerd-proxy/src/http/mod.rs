//! HTTP proxying: serving detected connections, the pooled upstream clients (`h1` for
//! HTTP/1, `h2` for HTTP/2, hyper's for upgrades), and the error responses the proxy writes
//! itself.

pub mod body;
pub mod client;
pub mod errors;
pub mod exchange;
pub mod h1;
pub mod h2;
pub mod header_timeout;
pub mod headers;
pub mod inflight;
pub mod matching;
pub mod pool;
pub mod server;
#[cfg(test)]
mod test_support;

pub use self::{
    body::ProxyBody,
    client::Client,
    errors::{L5D_PROXY_ERROR, ProxyError},
};
