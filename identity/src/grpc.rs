//! `io.linkerd.proxy.identity.Identity/Certify` over tonic. The only place domain errors
//! become `tonic::Status`.

use crate::{
    ca::SignError,
    certify::{Certifier, CertifyError},
    metrics::Metrics,
    token::{AuthError, Authenticator},
};
use proto::api::identity::{CertifyRequest, CertifyResponse, identity_server};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// The tonic service.
#[derive(Debug)]
pub struct IdentityGrpc<A> {
    certifier: Arc<Certifier<A>>,
    metrics: Arc<Metrics>,
}

impl<A> IdentityGrpc<A> {
    pub fn new(certifier: Arc<Certifier<A>>, metrics: Arc<Metrics>) -> Self {
        Self { certifier, metrics }
    }
}

impl<A: Authenticator> IdentityGrpc<A> {
    /// Wraps the service for `tonic::transport::Server::add_service`.
    pub fn into_server(self) -> identity_server::IdentityServer<Self> {
        identity_server::IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl<A: Authenticator> identity_server::Identity for IdentityGrpc<A> {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = req.into_inner();
        let result = self
            .certifier
            .certify(&req.identity, &req.token, &req.certificate_signing_request)
            .await;
        match result {
            Ok(leaf) => {
                self.metrics.issued();
                tracing::debug!(identity = %req.identity, not_after = leaf.not_after, "issued");
                Ok(Response::new(CertifyResponse {
                    leaf_certificate: leaf.der,
                    intermediate_certificates: leaf.chain,
                    valid_until: Some(prost_types::Timestamp {
                        seconds: leaf.not_after,
                        nanos: 0,
                    }),
                }))
            }
            Err(e) => {
                self.metrics.rejected(e.reason());
                let status = to_status(&e);
                if status.code() == Code::Internal || status.code() == Code::Unavailable {
                    tracing::warn!(identity = %req.identity, error = %e, "certify failed");
                } else {
                    tracing::debug!(identity = %req.identity, error = %e, "certify rejected");
                }
                Err(status)
            }
        }
    }
}

/// The status code for each refusal (the table in the crate docs).
pub fn code(e: &CertifyError) -> Code {
    match e {
        CertifyError::Empty(_)
        | CertifyError::BadIdentity(..)
        | CertifyError::Csr(_)
        | CertifyError::IdentityMismatch { .. } => Code::InvalidArgument,
        CertifyError::NoIssuer | CertifyError::Sign(SignError::IssuerExpired(_)) => {
            Code::FailedPrecondition
        }
        CertifyError::Auth(AuthError::Unauthenticated(_)) => Code::Unauthenticated,
        CertifyError::Auth(AuthError::Unavailable(_)) => Code::Unavailable,
        CertifyError::Sign(SignError::Sign(_)) => Code::Internal,
    }
}

pub fn to_status(e: &CertifyError) -> Status {
    Status::new(code(e), e.to_string())
}
