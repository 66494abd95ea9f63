//! A controllable Linkerd policy service: `InboundServerPolicies` over real gRPC, serving
//! whatever `Server` a test sets for each port and streaming every change to its watchers.
//! An unknown port gets `NOT_FOUND`; a workload other than the expected one, `INVALID_ARGUMENT`.

use crate::watched::{Streamed, Watched, publish, stream};
use linkerd2_proxy_api::{
    inbound::{
        Authn, Authz, Identity, Network, PortSpec, ProxyProtocol, Server,
        authn::{Permit, PermitMeshTls, PermitUnauthenticated, permit_mesh_tls},
        inbound_server_policies_server::{InboundServerPolicies, InboundServerPoliciesServer},
        proxy_protocol,
    },
    meta::{Metadata, Resource, metadata},
    net::IpNetwork,
};
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

type Ports = Watched<u32, Server>;

#[derive(Clone)]
struct Svc {
    workload: String,
    ports: Ports,
}

impl Svc {
    fn port(&self, spec: &PortSpec) -> Result<watch::Receiver<Server>, Status> {
        if spec.workload != self.workload {
            return Err(Status::invalid_argument(format!(
                "unknown workload {:?}",
                spec.workload
            )));
        }
        self.ports
            .lock()
            .expect("ports lock")
            .get(&spec.port)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| Status::not_found(format!("no server on port {}", spec.port)))
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for Svc {
    type WatchPortStream = Streamed<Server>;

    async fn get_port(&self, req: Request<PortSpec>) -> Result<Response<Server>, Status> {
        let rx = self.port(req.get_ref())?;
        let server = rx.borrow().clone();
        Ok(Response::new(server))
    }

    async fn watch_port(
        &self,
        req: Request<PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let rx = self.port(req.get_ref())?;
        Ok(Response::new(stream(rx)))
    }
}

/// The policy service, serving on its own task until dropped.
#[derive(Debug)]
pub struct PolicyServer {
    pub addr: SocketAddr,
    pub workload: String,
    ports: Ports,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    pub async fn start(workload: &str) -> Self {
        let ports: Ports = Arc::default();
        let svc = Svc {
            workload: workload.to_string(),
            ports: ports.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(InboundServerPoliciesServer::new(svc))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            workload: workload.to_string(),
            ports,
            task,
        }
    }

    /// Sets the policy of `port`, streaming it to every watcher.
    pub fn set(&self, port: u16, server: Server) {
        publish(&self.ports, u32::from(port), server);
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn network(ip: IpAddr, prefix_len: u32) -> Network {
    Network {
        net: Some(IpNetwork {
            ip: Some(ip.into()),
            prefix_len,
        }),
        except: vec![],
    }
}

/// Every client network, IPv4 and IPv6.
pub fn all_networks() -> Vec<Network> {
    vec![
        network(IpAddr::from([0, 0, 0, 0]), 0),
        network(IpAddr::from([0u16; 8]), 0),
    ]
}

fn resource(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        })),
    })
}

/// An authorization (an AuthorizationPolicy named `name`) for mTLS clients with exactly these
/// identities, from anywhere.
pub fn mtls_identities(name: &str, identities: &[&str]) -> Authz {
    let identities = identities
        .iter()
        .map(|i| Identity {
            name: i.to_string(),
        })
        .collect();
    mtls_clients(
        name,
        permit_mesh_tls::PermitClientIdentities {
            identities,
            suffixes: vec![],
        },
    )
}

/// An authorization (an AuthorizationPolicy named `name`) for any mTLS client with a verified
/// identity, from anywhere: what the policy controller sends for `all-authenticated` (no
/// identities, one empty suffix).
pub fn mtls_any(name: &str) -> Authz {
    mtls_clients(
        name,
        permit_mesh_tls::PermitClientIdentities {
            identities: vec![],
            suffixes: vec![linkerd2_proxy_api::inbound::IdentitySuffix { parts: vec![] }],
        },
    )
}

/// An authorization (an AuthorizationPolicy named `name`) for the mTLS `clients`, from
/// anywhere.
fn mtls_clients(name: &str, clients: permit_mesh_tls::PermitClientIdentities) -> Authz {
    Authz {
        networks: all_networks(),
        authentication: Some(Authn {
            permit: Some(Permit::MeshTls(PermitMeshTls {
                clients: Some(permit_mesh_tls::Clients::Identities(clients)),
            })),
        }),
        labels: Default::default(),
        metadata: resource("AuthorizationPolicy", name),
    }
}

/// An authorization for anyone, from anywhere.
pub fn unauthenticated(name: &str) -> Authz {
    Authz {
        networks: all_networks(),
        authentication: Some(Authn {
            permit: Some(Permit::Unauthenticated(PermitUnauthenticated {})),
        }),
        labels: Default::default(),
        metadata: resource("AuthorizationPolicy", name),
    }
}

/// A `Server` named `name` with protocol detection, no routes of its own (so the proxy's
/// routing is unrestricted) and these authorizations.
pub fn server(name: &str, opaque: bool, authorizations: Vec<Authz>) -> Server {
    let kind = if opaque {
        proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})
    } else {
        proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: vec![linkerd2_proxy_api::inbound::HttpRoute {
                metadata: Some(Metadata {
                    kind: Some(metadata::Kind::Default("default".into())),
                }),
                hosts: vec![],
                authorizations: vec![],
                rules: vec![linkerd2_proxy_api::inbound::http_route::Rule {
                    matches: vec![],
                    filters: vec![],
                }],
            }],
            local_rate_limit: None,
        })
    };
    Server {
        protocol: Some(ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations,
        labels: [
            ("group".to_string(), "policy.linkerd.io".to_string()),
            ("kind".to_string(), "server".to_string()),
            ("name".to_string(), name.to_string()),
        ]
        .into_iter()
        .collect(),
    }
}

/// `server` with a local rate limit: `total` requests per second for everyone, and
/// `per_identity` for each client identity.
pub fn with_rate_limit(mut server: Server, total: u32, per_identity: Option<u32>) -> Server {
    use linkerd2_proxy_api::inbound::{HttpLocalRateLimit, http_local_rate_limit::Limit};
    if let Some(ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Http1(h)),
    }) = server.protocol.as_mut()
    {
        h.local_rate_limit = Some(HttpLocalRateLimit {
            metadata: Some(Metadata {
                kind: Some(metadata::Kind::Resource(Resource {
                    group: "policy.linkerd.io".into(),
                    kind: "HTTPLocalRateLimitPolicy".into(),
                    name: "api-limit".into(),
                    ..Default::default()
                })),
            }),
            total: Some(Limit {
                requests_per_second: total,
            }),
            identity: per_identity.map(|rps| Limit {
                requests_per_second: rps,
            }),
            overrides: vec![],
        });
    }
    server
}
