//! The policy resources, as Kubernetes custom resources (derived with kube's
//! `CustomResource`) and as the registry file's `spec:` blocks: one set of types, so both
//! sources express exactly the same things.
//!
//! Only the fields the index uses are modelled. Unknown fields are ignored by serde (objects
//! from the API server may carry fields of newer versions); the registry refuses them by
//! comparing what it read with what these types keep (`registry::unknown_fields`).
//!
//! * `policy.linkerd.io`: [`Server`] (v1beta3), [`AuthorizationPolicy`],
//!   [`MeshTLSAuthentication`], [`NetworkAuthentication`], [`HTTPLocalRateLimitPolicy`]
//!   (v1alpha1);
//! * `gateway.networking.k8s.io`: [`HTTPRoute`] (v1) and [`GRPCRoute`] (v1), plus Linkerd's
//!   failure injector as a filter of type `FailureInjector` (an extension of ours: the Gateway
//!   API has no such filter; Linkerd's API carries one).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::{borrow::Cow, collections::BTreeMap};

/// Declares the resource types. Each derives what the sources and the CRDs need and names its
/// fields in camelCase; every `Option` field reads as `None` when absent and is left out when
/// written (`#[serde(default, skip_serializing_if = "Option::is_none")]`, added here once).
macro_rules! resources {
    (@fields [$($meta:tt)*] $name:ident [$($out:tt)*]) => {
        #[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
        $($meta)*
        #[serde(rename_all = "camelCase")]
        pub struct $name { $($out)* }
    };
    (@fields $meta:tt $name:ident [$($out:tt)*]
        $(#[$attr:meta])* pub $field:ident : Option<$ty:ty> $(, $($rest:tt)*)?) => {
        resources!(@fields $meta $name [
            $($out)*
            $(#[$attr])*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub $field: Option<$ty>,
        ] $($($rest)*)?);
    };
    (@fields $meta:tt $name:ident [$($out:tt)*]
        $(#[$attr:meta])* pub $field:ident : $ty:ty $(, $($rest:tt)*)?) => {
        resources!(@fields $meta $name [$($out)* $(#[$attr])* pub $field: $ty,] $($($rest)*)?);
    };
    ($($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* })*) => {
        $(resources!(@fields [$(#[$meta])*] $name [] $($fields)*);)*
    };
}

/// A port by number or by container-port name (Kubernetes' int-or-string).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Name(String),
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

resources! {
    /// `matchLabels` plus `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    #[derive(Default)]
    pub struct LabelSelector {
        pub match_labels: Option<BTreeMap<String, String>>,
        pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
    }

    pub struct LabelSelectorRequirement {
        pub key: String,
        /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
        pub operator: String,
        pub values: Option<Vec<String>>,
    }

    // === policy.linkerd.io ===

    /// Selects a port on a set of pods, with its protocol.
    #[derive(CustomResource)]
    #[kube(
        group = "policy.linkerd.io",
        version = "v1beta3",
        kind = "Server",
        namespaced,
        shortname = "srv"
    )]
    pub struct ServerSpec {
        pub pod_selector: LabelSelector,
        pub port: Port,
        /// `unknown` (detect; the default), `HTTP/1`, `HTTP/2`, `gRPC`, `opaque` or `TLS`.
        pub proxy_protocol: Option<String>,
    }

    /// A reference to another object (`group`, `kind`, `name`, optional `namespace`).
    #[derive(Default)]
    pub struct ObjectRef {
        pub group: Option<String>,
        pub kind: String,
        pub name: String,
        pub namespace: Option<String>,
    }

    /// Allows the clients that satisfy every required authentication to reach the target
    /// (a `Server`, an inbound `HTTPRoute`/`GRPCRoute`, or every Server of a `Namespace`).
    #[derive(CustomResource)]
    #[kube(
        group = "policy.linkerd.io",
        version = "v1alpha1",
        kind = "AuthorizationPolicy",
        namespaced,
        shortname = "authzpolicy"
    )]
    pub struct AuthorizationPolicySpec {
        pub target_ref: ObjectRef,
        /// `MeshTLSAuthentication`s, `NetworkAuthentication`s, or `ServiceAccount`s.
        #[serde(default)]
        pub required_authentication_refs: Vec<ObjectRef>,
    }

    /// Mesh TLS clients by identity (`*` for any, `*.suffix`) or by ServiceAccount.
    #[derive(CustomResource)]
    #[kube(
        group = "policy.linkerd.io",
        version = "v1alpha1",
        kind = "MeshTLSAuthentication",
        namespaced,
        shortname = "meshtlsauthn"
    )]
    pub struct MeshTLSAuthenticationSpec {
        pub identities: Option<Vec<String>>,
        pub identity_refs: Option<Vec<ObjectRef>>,
    }

    /// Clients by source network.
    #[derive(CustomResource)]
    #[kube(
        group = "policy.linkerd.io",
        version = "v1alpha1",
        kind = "NetworkAuthentication",
        namespaced,
        shortname = "netauthn"
    )]
    pub struct NetworkAuthenticationSpec {
        pub networks: Vec<NetworkDef>,
    }

    pub struct NetworkDef {
        /// `10.0.0.0/8`, or a single address.
        pub cidr: String,
        pub except: Option<Vec<String>>,
    }

    /// A local rate limit on one inbound `Server`: total, per client identity, and per-client
    /// overrides.
    #[derive(CustomResource)]
    #[kube(
        group = "policy.linkerd.io",
        version = "v1alpha1",
        kind = "HTTPLocalRateLimitPolicy",
        namespaced
    )]
    pub struct HTTPLocalRateLimitPolicySpec {
        pub target_ref: ObjectRef,
        pub total: Option<Limit>,
        pub identity: Option<Limit>,
        pub overrides: Option<Vec<RateLimitOverride>>,
    }

    pub struct Limit {
        pub requests_per_second: u32,
    }

    pub struct RateLimitOverride {
        pub requests_per_second: u32,
        /// ServiceAccounts.
        pub client_refs: Vec<ObjectRef>,
    }

    // === gateway.networking.k8s.io ===

    /// A parent: a `Service` (outbound routing; `group` empty or `core`) or a
    /// `policy.linkerd.io` `Server` (inbound routes).
    #[derive(Default)]
    pub struct ParentRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        /// Only this service port (all ports when absent).
        pub port: Option<u16>,
    }

    /// Routing for HTTP: matches, filters, weighted backends, timeouts.
    #[derive(CustomResource)]
    #[kube(
        group = "gateway.networking.k8s.io",
        version = "v1",
        kind = "HTTPRoute",
        namespaced
    )]
    pub struct HTTPRouteSpec {
        #[serde(default)]
        pub parent_refs: Vec<ParentRef>,
        pub hostnames: Option<Vec<String>>,
        #[serde(default)]
        pub rules: Vec<HTTPRouteRule>,
    }

    #[derive(Default)]
    pub struct HTTPRouteRule {
        /// The rule's name (for people and status; routing ignores it).
        pub name: Option<String>,
        pub matches: Option<Vec<HTTPRouteMatch>>,
        pub filters: Option<Vec<HTTPRouteFilter>>,
        pub backend_refs: Option<Vec<BackendRef>>,
        pub timeouts: Option<HTTPRouteTimeouts>,
    }

    #[derive(Default)]
    pub struct HTTPRouteMatch {
        pub path: Option<PathMatch>,
        pub headers: Option<Vec<ValueMatch>>,
        pub query_params: Option<Vec<ValueMatch>>,
        pub method: Option<String>,
    }

    pub struct PathMatch {
        /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: Option<String>,
    }

    /// A header or query-parameter match.
    pub struct ValueMatch {
        /// `Exact` (the default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub name: String,
        pub value: String,
    }

    #[derive(Default)]
    pub struct HTTPRouteFilter {
        /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect` or
        /// `FailureInjector`.
        #[serde(rename = "type")]
        pub kind: String,
        pub request_header_modifier: Option<HeaderModifier>,
        pub response_header_modifier: Option<HeaderModifier>,
        pub request_redirect: Option<RequestRedirect>,
        pub failure_injector: Option<FailureInjector>,
    }

    #[derive(Default)]
    pub struct HeaderModifier {
        pub set: Option<Vec<Header>>,
        pub add: Option<Vec<Header>>,
        pub remove: Option<Vec<String>>,
    }

    pub struct Header {
        pub name: String,
        pub value: String,
    }

    #[derive(Default)]
    pub struct RequestRedirect {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
        pub port: Option<u16>,
        pub status_code: Option<u16>,
    }

    pub struct PathModifier {
        /// `ReplaceFullPath` or `ReplacePrefixMatch`.
        #[serde(rename = "type")]
        pub kind: String,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }

    /// Fails `percent` of the matching requests with `status` (HTTP) or `code` (gRPC).
    #[derive(Default)]
    pub struct FailureInjector {
        /// HTTP status (HTTPRoute; default 500).
        pub status: Option<u16>,
        /// gRPC code (GRPCRoute; default 13, INTERNAL).
        pub code: Option<u32>,
        pub message: Option<String>,
        /// Percentage of requests, 0–100 (default 100).
        pub percent: Option<u32>,
    }

    pub struct BackendRef {
        pub group: Option<String>,
        /// `Service` (the default).
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        /// Default: the parent's port.
        pub port: Option<u16>,
        /// Default 1.
        pub weight: Option<u32>,
        /// Filters for the requests sent to this backend only (a route's own filters apply
        /// first).
        pub filters: Option<Vec<HTTPRouteFilter>>,
    }

    /// Gateway API durations (`10s`, `500ms`, `1m30s`).
    #[derive(Default)]
    pub struct HTTPRouteTimeouts {
        pub request: Option<String>,
        pub backend_request: Option<String>,
    }

    /// Routing for gRPC: service/method matches, header modifiers, failure injection, weighted
    /// backends (timeouts and retries from `timeout.linkerd.io/*` / `retry.linkerd.io/*`).
    #[derive(CustomResource)]
    #[kube(
        group = "gateway.networking.k8s.io",
        version = "v1",
        kind = "GRPCRoute",
        namespaced
    )]
    pub struct GRPCRouteSpec {
        #[serde(default)]
        pub parent_refs: Vec<ParentRef>,
        pub hostnames: Option<Vec<String>>,
        #[serde(default)]
        pub rules: Vec<GRPCRouteRule>,
    }

    #[derive(Default)]
    pub struct GRPCRouteRule {
        /// The rule's name (for people and status; routing ignores it).
        pub name: Option<String>,
        pub matches: Option<Vec<GRPCRouteMatch>>,
        pub filters: Option<Vec<HTTPRouteFilter>>,
        pub backend_refs: Option<Vec<BackendRef>>,
    }

    #[derive(Default)]
    pub struct GRPCRouteMatch {
        pub method: Option<GRPCMethodMatch>,
        pub headers: Option<Vec<ValueMatch>>,
    }

    #[derive(Default)]
    pub struct GRPCMethodMatch {
        pub service: Option<String>,
        pub method: Option<String>,
    }
}

/// Every CRD this service reads, for `mesh policy crds`: (file stem, YAML).
pub fn crd_yamls() -> Result<Vec<(&'static str, String)>, String> {
    use kube::CustomResourceExt;
    let crds = [
        ("server", Server::crd()),
        ("authorizationpolicy", AuthorizationPolicy::crd()),
        ("meshtlsauthentication", MeshTLSAuthentication::crd()),
        ("networkauthentication", NetworkAuthentication::crd()),
        ("httplocalratelimitpolicy", HTTPLocalRateLimitPolicy::crd()),
        ("httproute", HTTPRoute::crd()),
        ("grpcroute", GRPCRoute::crd()),
    ];
    crds.into_iter()
        .map(|(name, crd)| {
            let mut value = serde_json::to_value(&crd).map_err(|e| format!("{name}: {e}"))?;
            integral_numbers(&mut value);
            let yaml = serde_saphyr::to_string(&value).map_err(|e| format!("{name}: {e}"))?;
            Ok((
                name,
                format!("# Generated by `mesh policy crds`; do not edit.\n---\n{yaml}"),
            ))
        })
        .collect()
}

/// schemars writes the bounds of integer fields as floats (`minimum: 0.0`, `maximum:
/// 65535.0`, since `JSONSchemaProps` holds them as `f64`); write whole numbers as integers,
/// as hand-written CRDs do and as kustomize re-renders them, so that `kubectl kustomize` of
/// deploy/ (which copies these files) prints exactly what `mesh install` does.
fn integral_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    /// Integers beyond 2^53 are not exact in an f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0)
                && f.abs() <= EXACT
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}
