//! CSR validation: every CSR here is generated at test time.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use linkerd_identity::{
    certify::CertifyError,
    csr::{CsrError, validate},
    grpc,
};
use proto::id::IdentityName;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SignatureAlgorithm};
use tonic::Code;

const ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn name() -> IdentityName {
    ID.parse().unwrap()
}

fn params(cn: Option<&str>, sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = sans;
    p
}

fn dns(n: &str) -> SanType {
    SanType::DnsName(n.try_into().unwrap())
}

fn csr_with(alg: &'static SignatureAlgorithm, p: &CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn p256(p: &CertificateParams) -> Vec<u8> {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, p)
}

/// Every CSR error is INVALID_ARGUMENT on the wire.
fn rejected(der: &[u8]) -> CsrError {
    let e = validate(der, &name()).unwrap_err();
    assert_eq!(
        grpc::code(&CertifyError::Csr(e.clone())),
        Code::InvalidArgument
    );
    e
}

#[test]
fn good_csrs_are_accepted() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let der = params(Some(ID), vec![dns(ID)])
        .serialize_request(&key)
        .unwrap();
    let pk = validate(der.der(), &name()).unwrap();
    assert_eq!(pk.as_bytes(), key.public_key_raw());
    // No CommonName is fine too.
    validate(&p256(&params(None, vec![dns(ID)])), &name()).unwrap();
    // So is an empty one.
    validate(&p256(&params(Some(""), vec![dns(ID)])), &name()).unwrap();
}

#[test]
fn pem_is_rejected() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = params(Some(ID), vec![dns(ID)])
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    assert_eq!(rejected(pem.as_bytes()), CsrError::Pem);
    assert!(matches!(rejected(b"\x30\x82\x01"), CsrError::Malformed(_)));
    let mut trailing = p256(&params(Some(ID), vec![dns(ID)]));
    trailing.push(0);
    assert!(matches!(rejected(&trailing), CsrError::Malformed(_)));
}

#[test]
fn wrong_names_are_rejected() {
    let other = "api.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    let mismatch = |p: CertificateParams| {
        let e = rejected(&p256(&p));
        assert!(matches!(e, CsrError::NameMismatch(_)), "{e}");
    };
    mismatch(params(Some(ID), vec![dns(other)]));
    mismatch(params(Some(other), vec![dns(ID)]));
    mismatch(params(Some(ID), vec![]));
    // Extra SANs of every kind.
    mismatch(params(Some(ID), vec![dns(ID), dns(other)]));
    mismatch(params(Some(ID), vec![dns(ID), dns(ID)]));
    mismatch(params(
        Some(ID),
        vec![dns(ID), SanType::IpAddress([10, 0, 0, 1].into())],
    ));
    mismatch(params(
        Some(ID),
        vec![dns(ID), SanType::Rfc822Name("a@b.c".try_into().unwrap())],
    ));
    mismatch(params(
        Some(ID),
        vec![
            dns(ID),
            SanType::URI(
                "spiffe://cluster.local/ns/emojivoto/sa/web"
                    .try_into()
                    .unwrap(),
            ),
        ],
    ));
}

#[test]
fn other_keys_are_rejected() {
    let p = params(Some(ID), vec![dns(ID)]);
    let e = rejected(&csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, &p));
    assert_eq!(e, CsrError::UnsupportedKey("ECDSA P-384"));
    let e = rejected(&csr_with(&rcgen::PKCS_ED25519, &p));
    assert_eq!(e, CsrError::UnsupportedKey("Ed25519"));
    // ring cannot generate RSA keys; a CSR whose SPKI says RSA is enough, since the key
    // type is checked before the signature. (tests/openssl.rs also sends a real one.)
    let rsa = p.serialize_request(&FakeRsa).unwrap();
    assert_eq!(rejected(rsa.der()), CsrError::UnsupportedKey("RSA"));
}

#[test]
fn corrupted_signature_is_rejected() {
    let mut der = p256(&params(Some(ID), vec![dns(ID)]));
    // The signature is last; change its final byte (part of `s`).
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(rejected(&der), CsrError::BadSignature);
    // And a change to the signed body.
    let mut der = p256(&params(Some(ID), vec![dns(ID)]));
    let at = der
        .windows(ID.len())
        .position(|w| w == ID.as_bytes())
        .unwrap();
    der[at] = b'x';
    let e = rejected(&der);
    assert_eq!(e, CsrError::BadSignature);
}

/// A "key" that claims to be RSA and signs with zeros.
struct FakeRsa;

impl rcgen::PublicKeyData for FakeRsa {
    fn der_bytes(&self) -> &[u8] {
        // RSAPublicKey { n = 0x00c3…, e = 65537 } (not a real modulus).
        static KEY: [u8; 140] = {
            let mut k = [0x5au8; 140];
            let head = [0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00, 0xc3];
            let mut i = 0;
            while i < head.len() {
                k[i] = head[i];
                i += 1;
            }
            let tail = [0x02, 0x03, 0x01, 0x00, 0x01];
            let mut j = 0;
            while j < tail.len() {
                k[135 + j] = tail[j];
                j += 1;
            }
            k
        };
        &KEY
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for FakeRsa {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0; 128])
    }
}
