//! HTTP proxying: serving detected connections, the pooled upstream clients (hyper's
//! for HTTP/2 and upgrades, `h1` for the rest of HTTP/1), and the error
//! responses the proxy writes itself.

pub mod body;
pub mod client;
pub mod errors;
pub mod h1;
pub mod headers;
pub mod server;

pub use self::{
    body::ProxyBody,
    client::Client,
    errors::{L5D_PROXY_ERROR, ProxyError},
    server::{HttpConn, Route, Shared, serve},
};
