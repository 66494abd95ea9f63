//! Validating the certificate signing request in a `CertifyRequest`.
//!
//! The CSR is **DER** PKCS#10 (the proto comment says PEM; the proxy sends DER). It must:
//! parse completely, carry an ECDSA P-256 key, verify its own signature, name exactly one
//! DNS SAN equal to the requested identity, have a CommonName that is empty or equal to it,
//! and carry no IP, email, URI or other SANs. Every failure is `INVALID_ARGUMENT` on the wire.

use proto::id::IdentityName;
use x509_parser::{
    certification_request::X509CertificationRequest,
    cri_attributes::ParsedCriAttribute,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519, OID_X509_EXT_SUBJECT_ALT_NAME,
    },
    prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

/// Why a CSR was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is PEM; Certify expects a DER-encoded PKCS#10 request")]
    Pem,
    #[error("the CSR is not a DER-encoded PKCS#10 request: {0}")]
    Malformed(String),
    #[error("the CSR's key must be ECDSA P-256, not {0}")]
    UnsupportedKey(&'static str),
    #[error("the CSR's signature does not verify")]
    BadSignature,
    #[error("the CSR does not name the requested identity: {0}")]
    NameMismatch(String),
}

impl CsrError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Pem | Self::Malformed(_) => "csr_malformed",
            Self::UnsupportedKey(_) => "csr_key_type",
            Self::BadSignature => "csr_signature",
            Self::NameMismatch(_) => "csr_name_mismatch",
        }
    }
}

/// The public key of a validated CSR: an uncompressed P-256 point, ready for rcgen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrPublicKey(Vec<u8>);

impl CsrPublicKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl rcgen::PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Parses and checks a DER CSR for `identity`, returning its public key.
pub fn validate(der: &[u8], identity: &IdentityName) -> Result<CsrPublicKey, CsrError> {
    if der.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(CsrError::Pem);
    }
    let csr = match X509CertificationRequest::from_der(der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(CsrError::Malformed(
                "trailing bytes after the request".into(),
            ));
        }
        Err(e) => return Err(CsrError::Malformed(e.to_string())),
    };
    let info = &csr.certification_request_info;
    if !is_p256(&info.subject_pki) {
        return Err(CsrError::UnsupportedKey(key_kind(&info.subject_pki)));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check_names(&csr, identity)?;
    Ok(CsrPublicKey(
        info.subject_pki.subject_public_key.data.to_vec(),
    ))
}

/// Is this an id-ecPublicKey on prime256v1?
pub(crate) fn is_p256(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> &'static str {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        "RSA"
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519"
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384",
            _ => "ECDSA on another curve",
        }
    } else {
        "an unknown key type"
    }
}

fn check_names(
    csr: &X509CertificationRequest<'_>,
    identity: &IdentityName,
) -> Result<(), CsrError> {
    let mismatch = |m: String| Err(CsrError::NameMismatch(m));
    let want = identity.as_str();
    for cn in csr.certification_request_info.subject.iter_common_name() {
        match cn.as_str() {
            Ok("") => {}
            Ok(cn) if cn == want => {}
            Ok(cn) => return mismatch(format!("CommonName {cn:?} is not {want:?}")),
            Err(_) => return mismatch("CommonName is not a string".into()),
        }
    }

    let mut dns = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) => dns.push(*n),
                            other => return mismatch(format!("SAN {other} is not allowed")),
                        }
                    }
                }
                _ if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME => {
                    return Err(CsrError::Malformed("unparseable subjectAltName".into()));
                }
                _ => {}
            }
        }
    }
    match dns.as_slice() {
        [one] if *one == want => Ok(()),
        [one] => mismatch(format!("DNS SAN {one:?} is not {want:?}")),
        [] => mismatch(format!("no DNS SAN; expected exactly {want:?}")),
        many => mismatch(format!(
            "{} DNS SANs; expected exactly {want:?}",
            many.len()
        )),
    }
}
