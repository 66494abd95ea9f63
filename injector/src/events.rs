//! Kubernetes Events for what the webhook did, recorded on the pod's owner (the pod itself
//! does not exist yet while it is being admitted): `Injected`, or a warning
//! `InjectionFailed` when a pod was admitted without its proxy. Skips make no event (most
//! pods are skipped). Best effort: recorded in the background, never delaying the answer.

use crate::admission::Handled;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Where events go: nowhere (no cluster), or the API server.
#[derive(Clone)]
pub struct Events(Option<Recorder>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(kube)"
        } else {
            "Events(none)"
        })
    }
}

impl Events {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn kube(client: kube::Client) -> Self {
        Self(Some(Recorder::new(
            client,
            Reporter {
                controller: "linkerd-proxy-injector".into(),
                instance: None,
            },
        )))
    }

    /// Records `handled` on `owner` (in `namespace`) in the background.
    pub fn record(
        &self,
        namespace: &str,
        owner: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
        handled: &Handled,
    ) {
        let (Some(recorder), Some(owner)) = (&self.0, owner) else {
            return;
        };
        let (type_, reason, note) = match handled {
            Handled::Injected => (
                EventType::Normal,
                "Injected",
                "Linkerd sidecar proxy injected".to_string(),
            ),
            Handled::Failed(e) => (
                EventType::Warning,
                "InjectionFailed",
                format!("pod admitted without the Linkerd proxy: {e}"),
            ),
            Handled::Skipped(_) => return,
        };
        let reference = ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_string()),
            uid: Some(owner.uid.clone()),
            ..ObjectReference::default()
        };
        let recorder = recorder.clone();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Inject".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "cannot record an event");
            }
        });
    }
}
