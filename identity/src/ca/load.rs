//! Reading and checking PEM certificates and keys for [`super::Issuer::load`].

use super::{LoadError, MAX_CHAIN};
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

pub(super) fn pem_certs(what: &'static str, pem: &[u8]) -> Result<Vec<Vec<u8>>, LoadError> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if ders.is_empty() {
        return Err(LoadError::Empty { what });
    }
    Ok(ders)
}

pub(super) fn parse_cert<'a>(
    what: &'static str,
    index: usize,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, LoadError> {
    let x509 = |reason: String| LoadError::X509 {
        what,
        index,
        reason,
    };
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(x509("trailing bytes".into())),
        Err(e) => Err(x509(e.to_string())),
    }
}

/// Walks issuer → (intermediates) → anchor, checking CA flags, validity and signatures.
/// Returns the earliest NotAfter on the path.
pub(super) fn verify_path(
    certs: &[X509Certificate<'_>],
    anchors: &[X509Certificate<'_>],
    now: i64,
) -> Result<i64, LoadError> {
    let mut current = &certs[0];
    let mut not_after = i64::MAX;
    let signed_by = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
        child.issuer().as_raw() == parent.subject().as_raw()
            && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    for _ in 0..MAX_CHAIN {
        check_validity("issuer chain certificate", current, now)?;
        not_after = not_after.min(current.validity().not_after.timestamp());
        if let Some(anchor) = anchors.iter().find(|a| signed_by(current, a)) {
            check_validity("trust anchor", anchor, now)?;
            return Ok(not_after.min(anchor.validity().not_after.timestamp()));
        }
        match certs[1..]
            .iter()
            .find(|p| p.is_ca() && signed_by(current, p))
        {
            Some(parent) => current = parent,
            None => break,
        }
    }
    Err(LoadError::Untrusted {
        subject: certs[0].subject().to_string(),
    })
}

pub(super) fn check_validity(
    what: &'static str,
    cert: &X509Certificate<'_>,
    now: i64,
) -> Result<(), LoadError> {
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now < not_before || now >= not_after {
        return Err(LoadError::NotValidNow {
            what,
            subject: cert.subject().to_string(),
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// Reads a P-256 key from PEM: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`, what
/// `step` and `openssl ecparam` write).
pub(super) fn load_key(pem: &[u8]) -> Result<KeyPair, LoadError> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| LoadError::Key(e.to_string()))?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Sec1(k) => sec1_to_pkcs8_p256(k.secret_sec1_der()),
        _ => return Err(LoadError::Key("not an EC key (PKCS#8 or SEC1)".into())),
    };
    let der = PrivateKeyDer::Pkcs8(pkcs8.into());
    let key = KeyPair::try_from(&der).map_err(|e| LoadError::Key(e.to_string()))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(LoadError::Key("not an ECDSA P-256 key".into()));
    }
    Ok(key)
}

/// Wraps a SEC1 `ECPrivateKey` in a PKCS#8 `PrivateKeyInfo` for id-ecPublicKey/P-256 (ring
/// reads only PKCS#8). A key on another curve is rejected by ring afterwards.
pub(super) fn sec1_to_pkcs8_p256(sec1: &[u8]) -> Vec<u8> {
    const VERSION: &[u8] = &[0x02, 0x01, 0x00];
    const ALG_P256: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let octets = der_tlv(0x04, sec1);
    let body = [VERSION, ALG_P256, &octets].concat();
    der_tlv(0x30, &body)
}

pub(super) fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}
