//! The certificate authority: trust anchors, the issuer, and leaf signing.
//!
//! ```text
//! ca.crt ──► TrustAnchors ──┐
//!                           ├─► Issuer::load (CA? chains to an anchor? P-256 key matches?)
//! issuer.crt/key ───────────┘        │
//!                                    ▼
//!                     Ca { issuer: RwLock<Option<Arc<Issuer>>> } ── swap on reload
//!                                    │
//! validated CSR + identity ──► Issuer::sign ──► Leaf (DER, chain, NotAfter)
//! ```
//!
//! Everything is parsed once, at load: a request only clones an `Arc` and signs.

use crate::csr::CsrPublicKey;
use load::{load_key, parse_cert, pem_certs, verify_path};
use proto::id::IdentityName;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, string::Ia5String,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use std::{
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use time::OffsetDateTime;

/// How many certificates may sit between the issuer and a trust anchor.
const MAX_CHAIN: usize = 4;

/// Why trust anchors or an issuer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what}: no PEM certificate found")]
    Empty { what: &'static str },
    #[error("{what}: bad PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what}: certificate {index} is not valid X.509: {reason}")]
    X509 {
        what: &'static str,
        index: usize,
        reason: String,
    },
    #[error("{what} {subject:?} is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa { what: &'static str, subject: String },
    #[error("{what} {subject:?} is not valid now (valid from {not_before} to {not_after}, unix)")]
    NotValidNow {
        what: &'static str,
        subject: String,
        not_before: i64,
        not_after: i64,
    },
    #[error("issuer {subject:?} does not chain to any trust anchor")]
    Untrusted { subject: String },
    #[error("issuer {subject:?} must have an ECDSA P-256 key")]
    IssuerKeyType { subject: String },
    #[error("issuer key: {0}")]
    Key(String),
    #[error("the issuer key does not match the issuer certificate's public key")]
    KeyMismatch,
    #[error("cannot prepare the issuer for signing: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Why a leaf could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the issuer chain expires at {0} (unix); no certificate can be issued")]
    IssuerExpired(i64),
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// Lifetime rules for leaf certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafPolicy {
    /// NotAfter = now + lifetime + skew (default 24h).
    pub lifetime: Duration,
    /// NotBefore = now - skew; also added to NotAfter (default 20s).
    pub skew: Duration,
}

impl Default for LeafPolicy {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 60 * 60),
            skew: Duration::from_secs(20),
        }
    }
}

/// A signed leaf certificate.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// Intermediates from the issuer upward, the root left out.
    pub chain: Vec<Vec<u8>>,
    pub not_before: i64,
    /// Unix seconds; exactly the certificate's NotAfter.
    pub not_after: i64,
}

// === impl TrustAnchors ===

/// The PEM bundle of roots that issuers must chain to.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    ders: Vec<Vec<u8>>,
}

impl TrustAnchors {
    /// Parses a PEM bundle; every certificate in it must be a CA.
    pub fn from_pem(pem: &[u8]) -> Result<Self, LoadError> {
        let what = "trust anchors";
        let ders = pem_certs(what, pem)?;
        for (index, der) in ders.iter().enumerate() {
            let cert = parse_cert(what, index, der)?;
            if !cert.is_ca() {
                return Err(LoadError::NotCa {
                    what: "trust anchor",
                    subject: cert.subject().to_string(),
                });
            }
        }
        Ok(Self { ders })
    }

    pub fn ders(&self) -> &[Vec<u8>] {
        &self.ders
    }
}

// === impl Issuer ===

/// A validated issuer: its signing key and certificate chain, parsed once.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer certificate first, then any intermediates from its file.
    chain: Vec<Vec<u8>>,
    subject: String,
    /// The earliest NotAfter on the path to the anchor (unix seconds).
    not_after: i64,
    rng: SystemRandom,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Validates an issuer: `cert_pem` holds the issuer certificate (optionally followed by
    /// intermediates), `key_pem` its P-256 key (PKCS#8 or SEC1). The issuer must be a CA, be
    /// valid at `now` and chain to one of `anchors`.
    pub fn load(
        anchors: &TrustAnchors,
        cert_pem: &[u8],
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, LoadError> {
        let what = "issuer certificate";
        let chain = pem_certs(what, cert_pem)?;
        let certs = chain
            .iter()
            .enumerate()
            .map(|(i, der)| parse_cert(what, i, der))
            .collect::<Result<Vec<_>, _>>()?;
        let anchor_certs = anchors
            .ders
            .iter()
            .enumerate()
            .map(|(i, der)| parse_cert("trust anchors", i, der))
            .collect::<Result<Vec<_>, _>>()?;
        let issuer = &certs[0];
        let subject = issuer.subject().to_string();
        if !issuer.is_ca() {
            return Err(LoadError::NotCa {
                what: "issuer",
                subject,
            });
        }
        if !crate::csr::is_p256(issuer.public_key()) {
            return Err(LoadError::IssuerKeyType { subject });
        }
        let not_after = verify_path(&certs, &anchor_certs, unix(now))?;

        let key = load_key(key_pem)?;
        if key.public_key_raw() != issuer.public_key().subject_public_key.data.as_ref() {
            return Err(LoadError::KeyMismatch);
        }
        let signer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(&*chain[0]), key)?;
        Ok(Self {
            signer,
            chain,
            subject,
            not_after,
            rng: SystemRandom::new(),
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The earliest expiry on the issuer's path to its anchor, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Signs a leaf for `identity` over the CSR's key. The SANs are the identity (DNS) and,
    /// for service-account identities, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (URI).
    pub fn sign(
        &self,
        identity: &IdentityName,
        key: &CsrPublicKey,
        policy: &LeafPolicy,
        now: SystemTime,
    ) -> Result<Leaf, SignError> {
        let now = unix(now);
        let skew = secs(policy.skew);
        let not_before = now.saturating_sub(skew);
        let not_after = now
            .saturating_add(secs(policy.lifetime))
            .saturating_add(skew)
            .min(self.not_after);
        if not_after <= now {
            return Err(SignError::IssuerExpired(self.not_after));
        }

        let sign_err = |e: &dyn std::fmt::Display| SignError::Sign(e.to_string());
        let mut params = CertificateParams::default();
        params.not_before = datetime(not_before).map_err(|e| sign_err(&e))?;
        params.not_after = datetime(not_after).map_err(|e| sign_err(&e))?;
        params.serial_number = Some(self.serial().map_err(|e| sign_err(&e))?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.as_str());
        params.distinguished_name = dn;
        let dns = Ia5String::try_from(identity.as_str()).map_err(|e| sign_err(&e))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
        if let Some(uri) = spiffe_id(identity) {
            let uri = Ia5String::try_from(uri).map_err(|e| sign_err(&e))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &self.signer)
            .map_err(|e| sign_err(&e))?;
        Ok(Leaf {
            der: cert.der().to_vec(),
            chain: self.chain.clone(),
            not_before,
            not_after,
        })
    }

    /// A random positive 128-bit serial number.
    fn serial(&self) -> Result<SerialNumber, ring::error::Unspecified> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes)?;
        bytes[0] &= 0x7f;
        bytes[0] |= 0x01 << 6; // keep 16 significant bytes: never a leading zero
        Ok(SerialNumber::from_slice(&bytes))
    }
}

/// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, for service-account identities.
pub fn spiffe_id(identity: &IdentityName) -> Option<String> {
    let p = identity.service_account_parts().ok()?;
    Some(format!(
        "spiffe://{}/ns/{}/sa/{}",
        p.trust_domain, p.namespace, p.service_account
    ))
}

// === impl Ca ===

/// The trust anchors, the current issuer (swapped atomically on reload) and the leaf policy.
#[derive(Debug)]
pub struct Ca {
    anchors: TrustAnchors,
    issuer: RwLock<Option<Arc<Issuer>>>,
    policy: LeafPolicy,
}

impl Ca {
    /// A CA with no issuer yet: requests fail until [`Ca::set_issuer`].
    pub fn new(anchors: TrustAnchors, policy: LeafPolicy) -> Self {
        Self {
            anchors,
            issuer: RwLock::new(None),
            policy,
        }
    }

    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    pub fn policy(&self) -> &LeafPolicy {
        &self.policy
    }

    /// The current issuer, if one is loaded.
    pub fn issuer(&self) -> Option<Arc<Issuer>> {
        self.issuer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the issuer; requests already holding the old one finish with it.
    pub fn set_issuer(&self, issuer: Issuer) -> Arc<Issuer> {
        let issuer = Arc::new(issuer);
        *self.issuer.write().unwrap_or_else(PoisonError::into_inner) = Some(issuer.clone());
        issuer
    }

    /// Validates PEM issuer material against the anchors and, if it is good, swaps it in.
    pub fn load_issuer(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Issuer>, LoadError> {
        let issuer = Issuer::load(&self.anchors, cert_pem, key_pem, SystemTime::now())?;
        Ok(self.set_issuer(issuer))
    }
}

// === time helpers ===

pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => secs(d),
        Err(e) => -secs(e.duration()),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn datetime(unix: i64) -> Result<OffsetDateTime, time::error::ComponentRange> {
    OffsetDateTime::from_unix_timestamp(unix)
}

mod load;
#[cfg(test)]
mod tests;
