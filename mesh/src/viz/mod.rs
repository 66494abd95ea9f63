//! Looking at a running mesh: `mesh stat`, `top`, `edges`, `graph` and `check` (one module
//! each), read from the sidecars' and control plane's admin servers, and `mesh list` and
//! `mesh down`. They find a local mesh by name (`--mesh`; by default the only one running)
//! through its state file, or take any set of proxy admin addresses (`--admin`).

pub mod check;
pub mod edges;
pub mod graph;
pub mod list;
pub mod stat;
pub mod top;

use crate::instance::{self, State};
use crate::metrics::{self, Scrape};
use crate::schema;
use crate::stats::Info;
use std::net::SocketAddr;

/// Where to look: a local mesh, or proxies' admin addresses.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The mesh to look at (see `mesh list`). Default: the only one running.
    #[arg(long = "mesh", value_name = "NAME")]
    mesh: Option<String>,
    /// Sidecar admin addresses (host:port, comma-separated or repeated) instead of a local
    /// mesh.
    #[arg(long, value_delimiter = ',', conflicts_with = "mesh")]
    admin: Vec<SocketAddr>,
}

/// One proxy to look at.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub name: String,
    pub admin: SocketAddr,
    pub info: Info,
}

impl Target {
    /// A local mesh by name (default: the only one running).
    pub fn named(mesh: Option<String>) -> Self {
        Target {
            mesh,
            admin: Vec::new(),
        }
    }

    pub fn resolve(&self) -> anyhow::Result<(Vec<Proxy>, Option<State>)> {
        if !self.admin.is_empty() {
            let proxies = self
                .admin
                .iter()
                .map(|a| Proxy {
                    name: a.to_string(),
                    admin: *a,
                    info: Info {
                        name: a.to_string(),
                        ..Info::default()
                    },
                })
                .collect();
            return Ok((proxies, None));
        }
        let runtime = instance::runtime_dir()?;
        let found = instance::find(&runtime, self.mesh.as_deref())?;
        let Some(state) = found.state else {
            anyhow::bail!(
                "mesh {} is still starting: try again once `mesh up` prints its table",
                found.name
            );
        };
        let proxies = state
            .workloads
            .iter()
            .map(|w| Proxy {
                name: w.name.clone(),
                admin: w.admin,
                info: Info {
                    name: w.name.clone(),
                    service: Some(w.service.clone()),
                    identity: Some(w.identity.clone()),
                    ingress: w.ingress,
                    state: Some(if w.ready {
                        schema::State::Ready
                    } else {
                        schema::State::Unready
                    }),
                    ..Info::default()
                },
            })
            .collect();
        Ok((proxies, Some(state)))
    }
}

/// One scrape of every proxy, in order.
pub async fn scrape_all(proxies: &[Proxy]) -> Vec<Result<Scrape, String>> {
    let mut out = Vec::with_capacity(proxies.len());
    for p in proxies {
        out.push(
            metrics::scrape(p.admin)
                .await
                .map(|t| Scrape::parse(&t))
                .map_err(|e| format!("cannot scrape {}: {}", p.admin, crate::out::chain(&e))),
        );
    }
    out
}
