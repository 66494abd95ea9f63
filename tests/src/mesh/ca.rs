//! A certificate authority made at test time: a trust anchor, an issuer, and leaves a test
//! signs itself.

use linkerd_identity::trust::{TrustFiles, TrustOptions, generate_trust};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A trust anchor and an issuer signed by it (what `mesh identity init` makes), with which a
/// test can also sign certificates itself.
#[derive(Clone, Debug)]
pub struct Ca {
    pub files: TrustFiles,
}

/// A certificate chain (leaf first, then the issuer) and the leaf's key.
#[derive(Debug)]
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    pub fn clone_leaf(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Ca {
    /// A fresh anchor and issuer for `cluster.local`.
    pub fn generate() -> Self {
        Self::generate_for("cluster.local")
    }

    /// A fresh anchor and issuer named for `trust_domain`.
    pub fn generate_for(trust_domain: &str) -> Self {
        let opts = TrustOptions {
            trust_domain: trust_domain.to_string(),
            ..TrustOptions::default()
        };
        Self {
            files: generate_trust(&opts).expect("generate a trust anchor"),
        }
    }

    pub fn anchor_pem(&self) -> &str {
        &self.files.anchor_pem
    }

    /// The trust anchor as a root store.
    pub fn roots(&self) -> Arc<RootCertStore> {
        roots(&self.files.anchor_pem)
    }

    fn issuer_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.files.issuer_cert_pem.as_bytes())
            .expect("issuer certificate PEM")
    }

    /// A leaf for `identity` signed by the issuer, valid from `not_before` to `not_after`,
    /// shaped like the identity service's leaves (P-256, DNS SAN, server and client auth).
    pub fn leaf(&self, identity: &str, not_before: SystemTime, not_after: SystemTime) -> Leaf {
        let issuer_key =
            KeyPair::from_pem(&self.files.issuer_key_pem).expect("issuer key PEM is valid");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.files.issuer_cert_pem, issuer_key)
            .expect("issuer certificate PEM is valid");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let mut params =
            CertificateParams::new(vec![identity.to_string()]).expect("a valid DNS name");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity);
        params.distinguished_name = dn;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
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
        let cert = params.signed_by(&key, &issuer).expect("sign a leaf");
        Leaf {
            chain: vec![cert.der().clone(), self.issuer_der()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf valid from a minute ago for an hour.
    pub fn valid_leaf(&self, identity: &str) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            identity,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).expect("a representable time")
}

/// A root store holding every certificate in `pem`.
pub fn roots(pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.expect("anchor PEM"))
            .expect("a valid trust anchor");
    }
    Arc::new(roots)
}

/// Whether `cert` names `identity` (the DNS SAN is stored as plain bytes in the DER).
pub fn names(cert: &CertificateDer<'_>, identity: &str) -> bool {
    cert.as_ref()
        .windows(identity.len())
        .any(|w| w == identity.as_bytes())
}
