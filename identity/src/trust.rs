//! Generating a fresh trust anchor and issuer (`mesh identity init`).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// File names written by [`TrustFiles::write`].
pub const ANCHOR_FILE: &str = "ca.crt";
/// The anchor's key: needed only to make new issuers (`mesh identity rotate`); keep it
/// offline for anything that matters.
pub const ANCHOR_KEY_FILE: &str = "ca.key";
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
pub const ISSUER_KEY_FILE: &str = "issuer.key";

/// What to generate.
#[derive(Clone, Debug)]
pub struct TrustOptions {
    /// Names the certificates: `root.linkerd.<trust-domain>` and
    /// `identity.linkerd.<trust-domain>`, as Linkerd's docs do.
    pub trust_domain: String,
    pub anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
}

impl Default for TrustOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            anchor_lifetime: Duration::from_secs(365 * 24 * 60 * 60),
            issuer_lifetime: Duration::from_secs(90 * 24 * 60 * 60),
        }
    }
}

/// A trust anchor and an issuer signed by it, all PEM.
#[derive(Clone)]
pub struct TrustFiles {
    pub anchor_pem: String,
    /// PKCS#8 PEM.
    pub anchor_key_pem: String,
    pub issuer_cert_pem: String,
    /// PKCS#8 PEM.
    pub issuer_key_pem: String,
}

impl std::fmt::Debug for TrustFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustFiles")
            .field("anchor_pem", &self.anchor_pem)
            .field("anchor_key_pem", &"[elided]")
            .field("issuer_cert_pem", &self.issuer_cert_pem)
            .field("issuer_key_pem", &"[elided]")
            .finish()
    }
}

/// Where [`TrustFiles::write`] put the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustPaths {
    pub anchor: PathBuf,
    pub anchor_key: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot generate the trust anchor and issuer: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("lifetime out of range: {0}")]
    Lifetime(#[from] time::error::ComponentRange),
}

/// Generates a self-signed P-256 trust anchor (CA, path length 1) and an issuer (CA, path
/// length 0) signed by it, valid from now (minus a minute for clock skew).
pub fn generate_trust(opts: &TrustOptions) -> Result<TrustFiles, GenerateError> {
    let anchor_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let anchor_params = ca_params(
        &format!("root.linkerd.{}", opts.trust_domain),
        1,
        SystemTime::now(),
        opts.anchor_lifetime,
    )?;
    let anchor_key_pem = anchor_key.serialize_pem();
    let anchor = CertifiedIssuer::self_signed(anchor_params, anchor_key)?;
    // The issuer must not outlive its anchor.
    let opts = TrustOptions {
        issuer_lifetime: opts.issuer_lifetime.min(opts.anchor_lifetime),
        ..opts.clone()
    };
    let (issuer_cert_pem, issuer_key_pem) = issue(&anchor, &opts)?;
    Ok(TrustFiles {
        anchor_pem: anchor.pem(),
        anchor_key_pem,
        issuer_cert_pem,
        issuer_key_pem,
    })
}

/// A new issuer (certificate PEM, PKCS#8 key PEM) under an existing anchor, for rotation.
pub fn generate_issuer(
    anchor_pem: &str,
    anchor_key_pem: &str,
    opts: &TrustOptions,
) -> Result<(String, String), GenerateError> {
    let key = KeyPair::from_pem(anchor_key_pem)?;
    let anchor = rcgen::Issuer::from_ca_cert_pem(anchor_pem, key)?;
    issue(&anchor, opts)
}

fn issue(
    anchor: &rcgen::Issuer<'_, KeyPair>,
    opts: &TrustOptions,
) -> Result<(String, String), GenerateError> {
    let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(
        &format!("identity.linkerd.{}", opts.trust_domain),
        0,
        SystemTime::now(),
        opts.issuer_lifetime,
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&issuer_key, anchor)?;
    Ok((cert.pem(), issuer_key.serialize_pem()))
}

fn ca_params(
    cn: &str,
    path_len: u8,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams, GenerateError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let from = crate::ca::unix(now) - 60;
    let until = from.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until)?;
    Ok(params)
}

impl TrustFiles {
    /// Writes `ca.crt`, `ca.key`, `issuer.crt` and `issuer.key` (keys mode 0600) into `dir`,
    /// creating it.
    /// Blocking: call it from a CLI or `spawn_blocking`.
    pub fn write(&self, dir: &Path) -> io::Result<TrustPaths> {
        std::fs::create_dir_all(dir)?;
        let paths = TrustPaths {
            anchor: dir.join(ANCHOR_FILE),
            anchor_key: dir.join(ANCHOR_KEY_FILE),
            issuer_cert: dir.join(ISSUER_CERT_FILE),
            issuer_key: dir.join(ISSUER_KEY_FILE),
        };
        write_file(&paths.anchor, self.anchor_pem.as_bytes(), 0o644)?;
        write_file(&paths.anchor_key, self.anchor_key_pem.as_bytes(), 0o600)?;
        write_file(&paths.issuer_cert, self.issuer_cert_pem.as_bytes(), 0o644)?;
        write_file(&paths.issuer_key, self.issuer_key_pem.as_bytes(), 0o600)?;
        Ok(paths)
    }
}

/// Writes through a temporary file and a rename, so a watcher never sees half a file.
/// Blocking.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::{
        fs::Permissions,
        io::Write,
        os::unix::fs::{OpenOptionsExt, PermissionsExt},
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // `mode` applies only to a new file; a stale temporary file keeps its own.
    f.set_permissions(Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
