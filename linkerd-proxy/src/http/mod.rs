//! HTTP proxying: serving detected connections, the pooled upstream client, and the error
//! responses the proxy writes itself.

pub mod body;
pub mod client;
pub mod errors;
pub mod headers;
pub mod server;

pub use self::{
    body::ProxyBody,
    client::Client,
    errors::{L5D_PROXY_ERROR, ProxyError},
    server::{HttpConn, Route, Shared, serve},
};
