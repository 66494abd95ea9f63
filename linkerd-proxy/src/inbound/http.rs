//! Inbound HTTP: each request on a connection to this pod's application is authorized against
//! the port's policy (routes, authorizations, the local rate limit), given the verified client
//! identity (`l5d-client-id`; a forged one is removed), restored to HTTP/1 when a peer proxy
//! carried it over HTTP/2 (`l5d-orig-proto`), and sent to the application.

use super::policy::{HttpDecision, PortPolicy, RouteRequest};
use crate::{
    http::{
        ProxyBody, ProxyError,
        client::Protocol,
        exchange::{
            Attempt, Core, Finish, L5D_ORIG_PROTO, authority_of, check_host, prepare_request,
        },
        inflight::Held,
        server::Handle,
    },
    metrics::Tls,
    resolve::Endpoint,
};
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

/// The verified identity of the calling proxy, set on inbound requests for the application.
pub(crate) static L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");

/// One inbound HTTP connection.
#[derive(Debug)]
pub(crate) struct Http {
    core: Core,
    /// The application's address.
    app: Endpoint,
    /// The port's authorization policy.
    policy: PortPolicy,
    client: IpAddr,
    /// Over mTLS: the verified client identity, set as `l5d-client-id`.
    client_id: Option<HeaderValue>,
}

impl Http {
    pub(crate) fn new(core: Core, app: SocketAddr, policy: PortPolicy, client: IpAddr) -> Self {
        let client_id = match &core.tls {
            Tls::Established { peer_id: Some(id) } => HeaderValue::from_str(id).ok(),
            _ => None,
        };
        Self {
            core,
            app: Endpoint {
                labels: None,
                addr: app,
                identity: None,
            },
            policy,
            client,
            client_id,
        }
    }

    /// The port's verdict on a request, as an error to answer with.
    fn authorize(
        &self,
        req: &Request<Incoming>,
        authority: &HeaderValue,
    ) -> Result<(), ProxyError> {
        let host = authority.to_str().ok().filter(|h| !h.is_empty());
        let policy = self.policy.current();
        let tls = &self.core.tls;
        match policy.authorize_http(self.client, tls, &RouteRequest::new(req, host)) {
            HttpDecision::Allow => match &policy.rate_limit {
                Some(rl) if !rl.admit(tls) => Err(ProxyError::RateLimited(rl.name.clone())),
                _ => Ok(()),
            },
            HttpDecision::Deny { route } => Err(ProxyError::Unauthorized(route)),
            HttpDecision::NoRoute => Err(ProxyError::NoRoute),
        }
    }

    async fn proxy(&self, mut req: Request<Incoming>, held: Held) -> Response<ProxyBody> {
        let core = &self.core;
        let checked = check_host(&req);
        let authority = authority_of(&req).unwrap_or(HeaderValue::from_static(""));
        let mut r = core.begin(&mut req, authority);
        // Denials are counted on the application's address, where the allowed requests are.
        if let Err(e) = checked.and_then(|()| self.authorize(&req, &r.authority)) {
            return core.fail(e, r, None, self.app.addr);
        }
        let f = Finish::begin(core.stats(&r.authority, &self.app), held, &mut req);
        let (upgrade, downstream_h2) = (f.upgrade, f.downstream_h2);
        let h = req.headers_mut();
        // A peer proxy carried an HTTP/1 request over HTTP/2: the application gets HTTP/1.
        let orig_proto = h.remove(&L5D_ORIG_PROTO);
        // Only the proxy may vouch for the caller's identity.
        h.remove(&L5D_CLIENT_ID);
        if let Some(id) = &self.client_id {
            h.insert(L5D_CLIENT_ID.clone(), id.clone());
        }
        let proto = if downstream_h2 && !upgrade && orig_proto.is_none() {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let req = match prepare_request(req, &r.authority, proto, upgrade) {
            Ok(req) => req.map(|b| ProxyBody::stream(b, None)),
            Err(e) => return core.fail(e, r, Some(&f.stats), self.app.addr),
        };
        let how = Attempt {
            proto,
            upgrade,
            grpc: r.grpc,
            timeout: None,
            accrual: None,
        };
        let sent = std::time::Instant::now();
        let rsp = core.send_once(&self.app, &how, req).await;
        if let Some((_, entry)) = r.observe.as_mut().and_then(|o| o.access.as_mut()) {
            entry.upstream = sent.elapsed();
        }
        match rsp {
            Ok(rsp) => core.respond(rsp, r, f),
            Err(e) => core.fail(e.error, r, Some(&f.stats), self.app.addr),
        }
    }
}

impl Handle for Http {
    fn core(&self) -> &Core {
        &self.core
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, held: Held) -> Response<ProxyBody> {
        self.proxy(req, held).await
    }
}
