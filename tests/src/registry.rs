//! Our real policy service (`linkerd-policy`), in-process, serving a registry file the test
//! writes: routes as a user would write them, turned into policies by the same code as in a
//! mesh.

use crate::mesh::TempDir;
use linkerd_policy::{Config, Source, model::ClusterConfig};
use std::{net::SocketAddr, time::Duration};
use tokio::{sync::watch, task::JoinHandle};

/// The policy service serving one registry file, stopped when dropped.
#[derive(Debug)]
pub struct RegistryPolicy {
    pub addr: SocketAddr,
    _dir: TempDir,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RegistryPolicy {
    /// Writes `registry` (the file format of `policy/README.md`) and serves it.
    pub async fn start(registry: &str) -> Self {
        let dir = TempDir::new("registry-policy");
        let path = dir.path().join("registry.yaml");
        std::fs::write(&path, registry).expect("write the registry");
        let bound = linkerd_policy::bind(Config {
            addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            source: Source::Registry {
                path,
                interval: Duration::from_millis(200),
            },
            cluster: ClusterConfig::default(),
            grace: Duration::from_secs(1),
        })
        .await
        .unwrap_or_else(|e| panic!("the policy service refused the registry: {e}"));
        let addr = bound.grpc_addr().expect("policy address");
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = bound
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Self {
            addr,
            _dir: dir,
            stop,
            task,
        }
    }

    /// Why the policy service refuses `registry` (`None` if it accepts it).
    pub fn refusal(registry: &str) -> Option<String> {
        linkerd_policy::registry::parse(registry, &ClusterConfig::default()).err()
    }
}

impl Drop for RegistryPolicy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}
