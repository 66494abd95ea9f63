use super::{load::*, *};
use crate::trust::{TrustOptions, generate_trust};
use rcgen::{BasicConstraints, CertifiedIssuer, KeyUsagePurpose as Ku};
use rustls_pki_types::pem::PemObject;
use x509_parser::{
    extensions::{GeneralName, ParsedExtension},
    prelude::{FromDer, X509Certificate},
};

const ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn name() -> IdentityName {
    ID.parse().unwrap()
}

/// A validated CSR's key, as the service would get it.
fn key() -> CsrPublicKey {
    let csr = crate::bench::csr_for(ID).unwrap();
    crate::csr::validate(&csr, &name()).unwrap()
}

fn trust(issuer_lifetime: Duration) -> (TrustAnchors, Issuer, crate::trust::TrustFiles) {
    let files = generate_trust(&TrustOptions {
        issuer_lifetime,
        ..Default::default()
    })
    .unwrap();
    let anchors = TrustAnchors::from_pem(files.anchor_pem.as_bytes()).unwrap();
    let issuer = Issuer::load(
        &anchors,
        files.issuer_cert_pem.as_bytes(),
        files.issuer_key_pem.as_bytes(),
        SystemTime::now(),
    )
    .unwrap();
    (anchors, issuer, files)
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, c) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    c
}

fn pem_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn leaf_chains_to_issuer_and_anchor() {
    let (_anchors, issuer, files) = trust(Duration::from_secs(90 * 86400));
    let pk = key();
    let leaf = issuer
        .sign(&name(), &pk, &LeafPolicy::default(), SystemTime::now())
        .unwrap();
    let anchor_der = pem_der(&files.anchor_pem);
    let (anchor, inter, cert) = (parse(&anchor_der), parse(&leaf.chain[0]), parse(&leaf.der));
    assert_eq!(leaf.chain.len(), 1);
    assert_eq!(leaf.chain[0], issuer.cert_der());
    assert_eq!(cert.issuer().as_raw(), inter.subject().as_raw());
    cert.verify_signature(Some(inter.public_key())).unwrap();
    inter.verify_signature(Some(anchor.public_key())).unwrap();
    anchor.verify_signature(None).unwrap();
    assert!(cert.verify_signature(Some(anchor.public_key())).is_err());
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        pk.as_bytes()
    );
    assert!(!cert.is_ca());
}

#[test]
fn leaf_names_and_usages() {
    let (_, issuer, _) = trust(Duration::from_secs(86400 * 90));
    let pk = key();
    let leaf = issuer
        .sign(&name(), &pk, &LeafPolicy::default(), SystemTime::now())
        .unwrap();
    let cert = parse(&leaf.der);
    let mut sans = Vec::new();
    let (mut ku, mut eku) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(s) => {
                sans.extend(s.general_names.iter().map(|g| match g {
                    GeneralName::DNSName(d) => format!("dns:{d}"),
                    GeneralName::URI(u) => format!("uri:{u}"),
                    other => format!("other:{other}"),
                }))
            }
            ParsedExtension::KeyUsage(k) => ku = Some(*k),
            ParsedExtension::ExtendedKeyUsage(e) => {
                eku = Some((e.server_auth, e.client_auth, e.other.len()))
            }
            _ => {}
        }
    }
    assert_eq!(
        sans,
        [
            format!("dns:{ID}"),
            "uri:spiffe://cluster.local/ns/emojivoto/sa/web".to_string()
        ]
    );
    let ku = ku.unwrap();
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert_eq!(eku, Some((true, true, 0)));
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, [ID]);

    // A non-service-account name gets only the DNS SAN.
    let plain: IdentityName = "web.example.com".parse().unwrap();
    let leaf = issuer
        .sign(&plain, &pk, &LeafPolicy::default(), SystemTime::now())
        .unwrap();
    let cert = parse(&leaf.der);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);
}

#[test]
fn lifetime_and_skew() {
    let (_, issuer, _) = trust(Duration::from_secs(90 * 86400));
    let pk = key();
    let now = SystemTime::now();
    let t = unix(now);
    let policy = LeafPolicy {
        lifetime: Duration::from_secs(3600),
        skew: Duration::from_secs(30),
    };
    let leaf = issuer.sign(&name(), &pk, &policy, now).unwrap();
    let cert = parse(&leaf.der);
    assert_eq!(cert.validity().not_before.timestamp(), t - 30);
    assert_eq!(cert.validity().not_after.timestamp(), t + 3600 + 30);
    assert_eq!(leaf.not_after, t + 3630);
    assert_eq!(leaf.not_before, t - 30);

    let d = LeafPolicy::default();
    assert_eq!(
        (d.lifetime, d.skew),
        (Duration::from_secs(86400), Duration::from_secs(20))
    );
    let leaf = issuer.sign(&name(), &pk, &d, now).unwrap();
    assert_eq!(leaf.not_after, t + 86400 + 20);
}

#[test]
fn not_after_capped_by_issuer() {
    let (_, issuer, files) = trust(Duration::from_secs(3600));
    let issuer_not_after = parse(&pem_der(&files.issuer_cert_pem))
        .validity()
        .not_after
        .timestamp();
    assert_eq!(issuer.not_after(), issuer_not_after);
    let pk = key();
    let now = SystemTime::now();
    let leaf = issuer
        .sign(&name(), &pk, &LeafPolicy::default(), now)
        .unwrap();
    assert_eq!(leaf.not_after, issuer_not_after);
    assert_eq!(
        parse(&leaf.der).validity().not_after.timestamp(),
        issuer_not_after
    );

    // Past the issuer's expiry nothing can be issued.
    let later = now + Duration::from_secs(7200);
    assert!(matches!(
        issuer.sign(&name(), &pk, &LeafPolicy::default(), later),
        Err(SignError::IssuerExpired(_))
    ));
}

#[test]
fn serials_are_unique() {
    let (_, issuer, _) = trust(Duration::from_secs(86400));
    let pk = key();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..200 {
        let leaf = issuer
            .sign(&name(), &pk, &LeafPolicy::default(), SystemTime::now())
            .unwrap();
        let serial = parse(&leaf.der).raw_serial().to_vec();
        assert_eq!(serial.len(), 16);
        assert!(serials.insert(serial));
    }
}

fn ca_cert(
    cn: &str,
    alg: &'static rcgen::SignatureAlgorithm,
    is_ca: bool,
    parent: Option<&CertifiedIssuer<'static, KeyPair>>,
) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
    }
    let key = KeyPair::generate_for(alg).unwrap();
    match parent {
        None => CertifiedIssuer::self_signed(p, key).unwrap(),
        Some(parent) => CertifiedIssuer::signed_by(p, key, parent).unwrap(),
    }
}

fn load(anchors: &str, cert: &str, key: &str) -> Result<Issuer, LoadError> {
    let anchors = TrustAnchors::from_pem(anchors.as_bytes())?;
    Issuer::load(&anchors, cert.as_bytes(), key.as_bytes(), SystemTime::now())
}

#[test]
fn issuer_validation() {
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let root = ca_cert("root", p256, true, None);
    let issuer = ca_cert("issuer", p256, true, Some(&root));
    let key = issuer.key().serialize_pem();
    load(&root.pem(), &issuer.pem(), &key).unwrap();

    // Not a CA.
    let leafy = ca_cert("leafy", p256, false, Some(&root));
    let e = load(&root.pem(), &leafy.pem(), &leafy.key().serialize_pem()).unwrap_err();
    assert!(matches!(e, LoadError::NotCa { .. }), "{e}");
    // Another root.
    let other = ca_cert("other", p256, true, None);
    let e = load(&other.pem(), &issuer.pem(), &key).unwrap_err();
    assert!(matches!(e, LoadError::Untrusted { .. }), "{e}");
    // The wrong key.
    let e = load(&root.pem(), &issuer.pem(), &other.key().serialize_pem()).unwrap_err();
    assert!(matches!(e, LoadError::KeyMismatch), "{e}");
    // P-384.
    let p384 = ca_cert("p384", &rcgen::PKCS_ECDSA_P384_SHA384, true, Some(&root));
    let e = load(&root.pem(), &p384.pem(), &p384.key().serialize_pem()).unwrap_err();
    assert!(matches!(e, LoadError::IssuerKeyType { .. }), "{e}");
    // Anchors that are not CAs, and garbage.
    let e = TrustAnchors::from_pem(leafy.pem().as_bytes()).unwrap_err();
    assert!(matches!(e, LoadError::NotCa { .. }), "{e}");
    assert!(matches!(
        TrustAnchors::from_pem(b"nothing"),
        Err(LoadError::Empty { .. })
    ));
    assert!(load(&root.pem(), "junk", &key).is_err());
    assert!(load(&root.pem(), &issuer.pem(), "junk").is_err());
    // Expired.
    let far = SystemTime::now() + Duration::from_secs(5000 * 365 * 86400);
    let anchors = TrustAnchors::from_pem(root.pem().as_bytes()).unwrap();
    let e = Issuer::load(&anchors, issuer.pem().as_bytes(), key.as_bytes(), far).unwrap_err();
    assert!(matches!(e, LoadError::NotValidNow { .. }), "{e}");
}

#[test]
fn issuer_with_intermediates() {
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let root = ca_cert("root", p256, true, None);
    let mid = ca_cert("mid", p256, true, Some(&root));
    let issuer = ca_cert("issuer", p256, true, Some(&mid));
    let key = issuer.key().serialize_pem();
    // Without the intermediate it does not chain.
    assert!(matches!(
        load(&root.pem(), &issuer.pem(), &key),
        Err(LoadError::Untrusted { .. })
    ));
    let bundle = format!("{}{}", issuer.pem(), mid.pem());
    let loaded = load(&root.pem(), &bundle, &key).unwrap();
    let pk = self::key();
    let leaf = loaded
        .sign(&name(), &pk, &LeafPolicy::default(), SystemTime::now())
        .unwrap();
    assert_eq!(leaf.chain, [issuer.der().to_vec(), mid.der().to_vec()]);
}

#[test]
fn ca_swaps_issuers() {
    let (anchors, first, files) = trust(Duration::from_secs(86400));
    let ca = Ca::new(anchors, LeafPolicy::default());
    assert!(ca.issuer().is_none());
    let first_der = first.cert_der().to_vec();
    ca.set_issuer(first);
    let held = ca.issuer().unwrap();
    // A bad replacement is refused and the current one stays.
    assert!(
        ca.load_issuer(b"junk", files.issuer_key_pem.as_bytes())
            .is_err()
    );
    assert_eq!(ca.issuer().unwrap().cert_der(), first_der);
    // A good one replaces it; holders of the old one keep theirs.
    let again = ca
        .load_issuer(
            files.issuer_cert_pem.as_bytes(),
            files.issuer_key_pem.as_bytes(),
        )
        .unwrap();
    assert!(!Arc::ptr_eq(&held, &again));
    assert!(Arc::ptr_eq(&ca.issuer().unwrap(), &again));
}

#[test]
fn sec1_wrapping() {
    // ring writes PKCS#8 whose inner key is SEC1 without [0] parameters; unwrap and rewrap it.
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pkcs8 = k.serialize_der();
    let sec1 = &pkcs8[pkcs8.len() - sec1_len(&pkcs8)..];
    let rewrapped = sec1_to_pkcs8_p256(sec1);
    assert_eq!(rewrapped, pkcs8);
    let pem = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        base64(sec1)
    );
    assert_eq!(
        load_key(pem.as_bytes()).unwrap().public_key_raw(),
        k.public_key_raw()
    );
}

/// The length of the OCTET STRING contents at the end of a PKCS#8 key.
fn sec1_len(pkcs8: &[u8]) -> usize {
    // SEQUENCE header, version (3 bytes), algorithm (21 bytes), then 0x04 <len> <sec1>.
    let header = if pkcs8[1] & 0x80 == 0 {
        2
    } else {
        2 + usize::from(pkcs8[1] & 0x7f)
    };
    let i = header + 3 + 21;
    assert_eq!(pkcs8[i], 0x04);
    if pkcs8[i + 1] < 0x80 {
        usize::from(pkcs8[i + 1])
    } else {
        usize::from(pkcs8[i + 2])
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                s.push(T[(n >> shift & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
