//! Authenticating the token in a `CertifyRequest`.
//!
//! An [`Authenticator`] turns token bytes into the identity they prove. Two exist:
//! [`LocalTokens`] (HMAC-signed tokens, for running without Kubernetes) and
//! [`crate::kube::TokenReview`] (Kubernetes service-account tokens).
//!
//! Local token format: `v1.<identity>.<expiry-unix-seconds>.<hex HMAC-SHA256>`, the MAC taken
//! over everything before the last dot. The identity contains dots, so the token is split
//! from the right.

use proto::id::IdentityName;
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use std::{
    future::Future,
    path::Path,
    time::{Duration, SystemTime},
};

const VERSION: &str = "v1";
/// Minimum key length, bytes.
const MIN_KEY_LEN: usize = 32;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is invalid, expired, forged or not for a service account (`UNAUTHENTICATED`).
    #[error("token rejected: {0}")]
    Unauthenticated(String),
    /// The token could not be checked now (`UNAVAILABLE`).
    #[error("cannot authenticate the token: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Unavailable(_) => "auth_unavailable",
        }
    }
}

/// Token bytes → the identity they authenticate.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        token: &[u8],
    ) -> impl Future<Output = Result<IdentityName, AuthError>> + Send;
}

/// Why a local token key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read token key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token key must be hex, at least {MIN_KEY_LEN} bytes")]
    Format,
    #[error("cannot generate a token key")]
    Random,
}

/// HMAC-SHA256 tokens with a shared key (see the module docs for the format).
#[derive(Clone)]
pub struct LocalTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for LocalTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTokens").finish_non_exhaustive()
    }
}

impl LocalTokens {
    /// A key from raw bytes (at least 32).
    pub fn new(key: &[u8]) -> Result<Self, KeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::Format);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// A key from the contents of a key file: hex, surrounding whitespace ignored.
    pub fn from_key_file_contents(contents: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(contents).map_err(|_| KeyError::Format)?;
        Self::new(&hex_decode(text.trim()).ok_or(KeyError::Format)?)
    }

    /// Reads a key file (async).
    pub async fn read_key_file(path: &Path) -> Result<Self, KeyError> {
        let contents = tokio::fs::read(path)
            .await
            .map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_key_file_contents(&contents)
    }

    /// Mints a token for `identity` that expires `ttl` from `now`.
    pub fn mint(&self, identity: &IdentityName, ttl: Duration, now: SystemTime) -> String {
        let expiry = crate::ca::unix(now).saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64);
        let body = format!("{VERSION}.{identity}.{expiry}");
        let mac = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex_encode(mac.as_ref()))
    }

    /// Verifies a token as of `now` (the clock is a parameter so tests can move it).
    pub fn verify_at(&self, token: &[u8], now: SystemTime) -> Result<IdentityName, AuthError> {
        let bad = |m: &str| Err(AuthError::Unauthenticated(m.to_string()));
        let Ok(token) = std::str::from_utf8(token) else {
            return bad("not UTF-8");
        };
        // A token file written with `mesh identity token > file` ends with a newline.
        let token = token.trim_ascii();
        let Some((body, mac)) = token.rsplit_once('.') else {
            return bad("not a v1 token");
        };
        let Some(mac) = hex_decode(mac) else {
            return bad("MAC is not hex");
        };
        if hmac::verify(&self.key, body.as_bytes(), &mac).is_err() {
            return bad("bad MAC");
        }
        // The MAC is good, so the body is ours: parse it.
        let Some((rest, expiry)) = body.rsplit_once('.') else {
            return bad("not a v1 token");
        };
        let Some(identity) = rest.strip_prefix("v1.") else {
            return bad("unsupported token version");
        };
        let Ok(expiry) = expiry.parse::<i64>() else {
            return bad("bad expiry");
        };
        if crate::ca::unix(now) >= expiry {
            return bad("expired");
        }
        identity
            .parse()
            .map_err(|e| AuthError::Unauthenticated(format!("bad identity: {e}")))
    }
}

impl Authenticator for LocalTokens {
    async fn authenticate(&self, token: &[u8]) -> Result<IdentityName, AuthError> {
        self.verify_at(token, SystemTime::now())
    }
}

/// A fresh random 32-byte key, hex-encoded with a newline (the key file format).
pub fn generate_key_file_contents() -> Result<String, KeyError> {
    let mut key = [0u8; MIN_KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::Random)?;
    Ok(format!("{}\n", hex_encode(&key)))
}

/// Writes a fresh key file (mode 0600). Blocking: for CLIs and `spawn_blocking`.
pub fn write_key_file(path: &Path) -> Result<(), KeyError> {
    let contents = generate_key_file_contents()?;
    crate::trust::write_file(path, contents.as_bytes(), 0o600).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> LocalTokens {
        LocalTokens::new(&[7u8; 32]).unwrap()
    }

    fn name() -> IdentityName {
        "web.ns.serviceaccount.identity.linkerd.cluster.local"
            .parse()
            .unwrap()
    }

    #[test]
    fn mint_and_verify() {
        let t = tokens();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tok = t.mint(&name(), Duration::from_secs(60), now);
        assert!(
            tok.starts_with("v1.web.ns.serviceaccount.identity.linkerd.cluster.local.1000060.")
        );
        assert_eq!(t.verify_at(tok.as_bytes(), now).unwrap(), name());
        // Just before and at expiry, with a clock we control.
        let before = now + Duration::from_secs(59);
        assert_eq!(t.verify_at(tok.as_bytes(), before).unwrap(), name());
        let at = now + Duration::from_secs(60);
        assert!(
            matches!(t.verify_at(tok.as_bytes(), at), Err(AuthError::Unauthenticated(m)) if m == "expired")
        );
    }

    #[test]
    fn rejects_forged_and_garbled() {
        let t = tokens();
        let now = SystemTime::now();
        let tok = t.mint(&name(), Duration::from_secs(60), now);
        let unauth = |r: Result<IdentityName, AuthError>| {
            assert!(matches!(r, Err(AuthError::Unauthenticated(_))), "{r:?}");
        };
        // Another key.
        let other = LocalTokens::new(&[8u8; 32]).unwrap();
        unauth(other.verify_at(tok.as_bytes(), now));
        // A different identity or expiry under the same MAC.
        let (body, mac) = tok.rsplit_once('.').unwrap();
        unauth(t.verify_at(
            format!("{}.{mac}", body.replace("web", "api")).as_bytes(),
            now,
        ));
        let (rest, _) = body.rsplit_once('.').unwrap();
        unauth(t.verify_at(format!("{rest}.99999999999.{mac}").as_bytes(), now));
        for garbled in ["", "v1", "v1.x.y.z", "not a token", "v1..1.00"] {
            unauth(t.verify_at(garbled.as_bytes(), now));
        }
        unauth(t.verify_at(&[0xff, 0xfe], now));
    }

    #[test]
    fn key_files() {
        let contents = generate_key_file_contents().unwrap();
        assert_eq!(contents.trim().len(), 64);
        LocalTokens::from_key_file_contents(contents.as_bytes()).unwrap();
        assert!(LocalTokens::from_key_file_contents(b"abcd").is_err());
        assert!(LocalTokens::from_key_file_contents(b"zz").is_err());
        assert_eq!(
            hex_decode(&hex_encode(&[0, 1, 0xab, 0xff])).unwrap(),
            [0, 1, 0xab, 0xff]
        );
    }
}
