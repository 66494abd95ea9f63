//! Where a namespace's annotations come from: the API server (one GET per admission, as
//! Linkerd's injector does, so a namespace annotated a moment ago is seen), or a fixed map
//! when there is no cluster.

use k8s_openapi::api::core::v1::Namespace;
use std::{collections::BTreeMap, time::Duration};

/// Annotations by namespace name.
pub type NamespaceMap = BTreeMap<String, BTreeMap<String, String>>;

/// The source of namespace annotations.
#[derive(Clone)]
pub enum Namespaces {
    /// Namespaces not in the map have no annotations.
    Static(NamespaceMap),
    Kube(kube::Client),
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(m) => f.debug_tuple("Static").field(m).finish(),
            Self::Kube(_) => f.write_str("Kube"),
        }
    }
}

/// How long one namespace lookup may take (the API server gives the webhook 10 s in all).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

impl Namespaces {
    /// The annotations of namespace `ns` (none for a request without a namespace).
    pub async fn annotations(&self, ns: Option<&str>) -> Result<BTreeMap<String, String>, String> {
        let Some(ns) = ns else {
            return Ok(BTreeMap::new());
        };
        match self {
            Self::Static(map) => Ok(map.get(ns).cloned().unwrap_or_default()),
            Self::Kube(client) => {
                let api: kube::Api<Namespace> = kube::Api::all(client.clone());
                match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata(ns)).await {
                    Ok(Ok(meta)) => Ok(meta.metadata.annotations.unwrap_or_default()),
                    Ok(Err(e)) => Err(format!("cannot read namespace {ns}: {e}")),
                    Err(_) => Err(format!(
                        "cannot read namespace {ns}: no answer from the API server in {LOOKUP_TIMEOUT:?}"
                    )),
                }
            }
        }
    }
}
