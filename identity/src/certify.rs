//! One Certify request, start to finish, in domain terms (no gRPC here).
//!
//! Order (it decides which error a bad request gets):
//! 1. an issuer is loaded;
//! 2. identity, token and CSR are present, and the identity is a valid name;
//! 3. the CSR is valid for that identity ([`crate::csr`]);
//! 4. the token authenticates someone ([`crate::token`]);
//! 5. that someone is the requested identity;
//! 6. the current issuer signs.

use crate::{
    ca::{Ca, Leaf, SignError},
    csr::{self, CsrError},
    token::{AuthError, Authenticator},
};
use proto::id::{IdentityName, InvalidName};
use std::{sync::Arc, time::SystemTime};

/// Why a Certify request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("no issuer is loaded")]
    NoIssuer,
    #[error("the request's {0} is empty")]
    Empty(&'static str),
    #[error("bad identity {0:?}: {1}")]
    BadIdentity(String, InvalidName),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the token is for {authenticated}, not the requested {requested}")]
    IdentityMismatch {
        requested: IdentityName,
        authenticated: IdentityName,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl CertifyError {
    /// A short, stable label for metrics (one of [`crate::metrics::REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoIssuer => "no_issuer",
            Self::Empty(_) => "empty_field",
            Self::BadIdentity(..) => "bad_identity",
            Self::Csr(e) => e.reason(),
            Self::Auth(e) => e.reason(),
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::Sign(SignError::IssuerExpired(_)) => "issuer_expired",
            Self::Sign(SignError::Sign(_)) => "internal",
        }
    }
}

/// Validates, authenticates and signs.
#[derive(Debug)]
pub struct Certifier<A> {
    ca: Arc<Ca>,
    auth: A,
}

impl<A: Authenticator> Certifier<A> {
    pub fn new(ca: Arc<Ca>, auth: A) -> Self {
        Self { ca, auth }
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    pub async fn certify(
        &self,
        identity: &str,
        token: &[u8],
        csr_der: &[u8],
    ) -> Result<Leaf, CertifyError> {
        if self.ca.issuer().is_none() {
            return Err(CertifyError::NoIssuer);
        }
        for (what, empty) in [
            ("identity", identity.is_empty()),
            ("token", token.is_empty()),
            ("certificate_signing_request", csr_der.is_empty()),
        ] {
            if empty {
                return Err(CertifyError::Empty(what));
            }
        }
        let name: IdentityName = identity
            .parse()
            .map_err(|e| CertifyError::BadIdentity(identity.to_string(), e))?;
        let key = csr::validate(csr_der, &name)?;

        let authenticated = self.auth.authenticate(token).await?;
        if authenticated != name {
            return Err(CertifyError::IdentityMismatch {
                requested: name,
                authenticated,
            });
        }

        // Take the issuer only now: it may have been rotated while the token was checked.
        let issuer = self.ca.issuer().ok_or(CertifyError::NoIssuer)?;
        Ok(issuer.sign(&name, &key, self.ca.policy(), SystemTime::now())?)
    }
}
