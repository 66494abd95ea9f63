//! `mesh identity …`: the command line (clap, with `MESH_IDENTITY_*` environment fallbacks).

use crate::{
    Error,
    bench::{BenchOptions, bench},
    ca::LeafPolicy,
    kube::TokenReviewConfig,
    server::{AuthConfig, Config},
    token::{self, LocalTokens},
    trust::{self, TrustOptions},
};
use clap::{ArgGroup, Subcommand};
use linkerd_control::{ReadError, args::IdentityArgs};
use proto::id::IdentityName;
use std::{path::PathBuf, process::ExitCode, time::Duration};

/// The control plane's duration grammar (`20s`, `24h`, `90d`, `1h30m`, `500ms`).
pub use linkerd_control::duration::parse as parse_duration;

/// `mesh identity …`.
pub type Args = linkerd_control::args::Cli<Command>;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a trust anchor (ca.crt), an issuer (issuer.crt, issuer.key) and a local
    /// token key (token.key) in a directory.
    Init(InitArgs),
    /// Replace the issuer in a directory made by `init` with a new one signed by its anchor
    /// (ca.crt + ca.key); a running `serve` picks it up.
    Rotate(RotateArgs),
    /// Run the identity service (Certify on --addr, metrics and probes on --admin-addr).
    Serve(Box<ServeArgs>),
    /// Mint a local token (for `serve --token-key`).
    Token(TokenArgs),
    /// Measure Certify throughput and latency on one core, in-process over loopback; prints JSON.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The directory, trust domain and issuer lifetime, as `rotate` takes them.
    #[command(flatten)]
    pub issuer: RotateArgs,
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub anchor_lifetime: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[arg(long, env = "MESH_IDENTITY_DIR")]
    pub dir: PathBuf,
    #[arg(
        long,
        env = "MESH_IDENTITY_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub issuer_lifetime: Duration,
}

linkerd_control::names!(
    /// The identity service's environment variables (`MESH_IDENTITY_*`) and defaults.
    Names,
    "MESH_IDENTITY",
    "0.0.0.0:8080",
    "127.0.0.1:9990"
);

/// `serve`: the shared flags (`--addr`, `--admin-addr`, `--log-level`, `--kubernetes` and the
/// `--kube-*` flags, for TokenReview) and the identity service's.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("auth").required(true).args(["token_key", "kubernetes"])))]
pub struct ServeArgs {
    #[command(flatten)]
    pub serve: linkerd_control::args::ServeArgs<Names>,
    /// PEM bundle of trust anchors.
    #[arg(long, env = "MESH_IDENTITY_TRUST_ANCHORS")]
    pub trust_anchors: PathBuf,
    /// PEM issuer certificate (watched; may be followed by intermediates).
    #[arg(long, env = "MESH_IDENTITY_ISSUER_CERT")]
    pub issuer_cert: PathBuf,
    /// PEM issuer key, PKCS#8 or SEC1, P-256 (watched).
    #[arg(long, env = "MESH_IDENTITY_ISSUER_KEY")]
    pub issuer_key: PathBuf,
    /// Accept local HMAC tokens signed with this key file (see `mesh identity token`).
    #[arg(long, env = "MESH_IDENTITY_TOKEN_KEY")]
    pub token_key: Option<PathBuf>,
    #[command(flatten)]
    pub ids: IdentityArgs<Names>,
    /// Leaf lifetime.
    #[arg(long, env = "MESH_IDENTITY_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub lifetime: Duration,
    /// Clock-skew allowance (NotBefore = now - skew; NotAfter gains it too).
    #[arg(long, env = "MESH_IDENTITY_SKEW", default_value = "20s", value_parser = parse_duration)]
    pub skew: Duration,
    /// How often the issuer files are checked for changes.
    #[arg(long, env = "MESH_IDENTITY_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,
}

linkerd_control::deref_args!(ServeArgs => serve: linkerd_control::args::ServeArgs<Names>);

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(long, env = "MESH_IDENTITY_TOKEN_KEY")]
    pub key: PathBuf,
    #[arg(long)]
    pub identity: String,
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Requests in flight. Latency grows with it (Little's law): 4 keeps the core busy.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Distinct keys/CSRs cycled through.
    #[arg(long, default_value_t = 256)]
    pub csrs: usize,
}

/// Runs a `mesh identity` subcommand.
pub async fn run(args: Args) -> Result<ExitCode, Error> {
    match args.command {
        Command::Init(a) => init(a).await,
        Command::Rotate(a) => rotate(a).await,
        Command::Serve(a) => serve(*a).await,
        Command::Token(a) => {
            let tokens = LocalTokens::read_key_file(&a.key).await?;
            let id: IdentityName = a
                .identity
                .parse()
                .map_err(|e| Error::Usage(format!("--identity: {e}")))?;
            let token = tokens.mint(&id, a.ttl, std::time::SystemTime::now());
            print(&format!("{token}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => {
            let report = bench(BenchOptions {
                duration: Duration::from_secs(a.seconds),
                concurrency: a.concurrency,
                csrs: a.csrs,
            })
            .await?;
            let json =
                serde_json::to_string_pretty(&report).map_err(|e| Error::Bench(e.to_string()))?;
            print(&format!("{json}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Stdout for the subcommands' output; see [`linkerd_control::print`].
fn print(text: &str) -> Result<(), Error> {
    linkerd_control::print(text).map_err(Error::Write)
}

async fn init(a: InitArgs) -> Result<ExitCode, Error> {
    let opts = TrustOptions {
        trust_domain: a.issuer.trust_domain,
        anchor_lifetime: a.anchor_lifetime,
        issuer_lifetime: a.issuer.issuer_lifetime,
    };
    let dir = a.issuer.dir;
    let force = a.force;
    let written = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        for f in [
            trust::ANCHOR_FILE,
            trust::ANCHOR_KEY_FILE,
            trust::ISSUER_CERT_FILE,
            trust::ISSUER_KEY_FILE,
            "token.key",
        ] {
            if !force && dir.join(f).exists() {
                return Err(Error::Usage(format!(
                    "{} exists (use --force to overwrite)",
                    dir.join(f).display()
                )));
            }
        }
        let paths = trust::generate_trust(&opts)?
            .write(&dir)
            .map_err(Error::Write)?;
        let key = dir.join("token.key");
        token::write_key_file(&key)?;
        Ok((paths, key))
    })
    .await
    .map_err(|e| Error::Usage(e.to_string()))??;
    let (paths, key) = written;
    for p in [
        &paths.anchor,
        &paths.anchor_key,
        &paths.issuer_cert,
        &paths.issuer_key,
        &key,
    ] {
        print(&format!("wrote {}\n", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate(a: RotateArgs) -> Result<ExitCode, Error> {
    let dir = a.dir;
    let read = |f: &str| {
        let path = dir.join(f);
        async move {
            tokio::fs::read_to_string(&path)
                .await
                .map_err(ReadError::at(&path))
                .map_err(Error::from)
        }
    };
    let anchor = read(trust::ANCHOR_FILE).await?;
    let anchor_key = read(trust::ANCHOR_KEY_FILE).await?;
    let opts = TrustOptions {
        trust_domain: a.trust_domain,
        issuer_lifetime: a.issuer_lifetime,
        ..TrustOptions::default()
    };
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let (cert, key) = trust::generate_issuer(&anchor, &anchor_key, &opts)?;
        // Key first: a watcher that sees only one half waits for the other.
        trust::write_file(&dir.join(trust::ISSUER_KEY_FILE), key.as_bytes(), 0o600)
            .map_err(Error::Write)?;
        trust::write_file(&dir.join(trust::ISSUER_CERT_FILE), cert.as_bytes(), 0o644)
            .map_err(Error::Write)?;
        print(&format!(
            "wrote {}\nwrote {}\n",
            dir.join(trust::ISSUER_CERT_FILE).display(),
            dir.join(trust::ISSUER_KEY_FILE).display()
        ))?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Usage(e.to_string()))??;
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    a.init_log();
    let auth = match &a.token_key {
        Some(key_file) => AuthConfig::Local {
            key_file: key_file.clone(),
        },
        None => AuthConfig::Kubernetes(kube_config(&a)?),
    };
    let config = Config {
        addr: a.addr,
        admin_addr: a.admin_addr,
        trust_anchors: a.trust_anchors,
        issuer_cert: a.issuer_cert,
        issuer_key: a.issuer_key,
        auth,
        policy: LeafPolicy {
            lifetime: a.lifetime,
            skew: a.skew,
        },
        reload_interval: a.reload_interval,
    };
    crate::serve(config, linkerd_control::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// In-cluster by default; with `--kube-api-url`, only what the flags say.
fn kube_config(a: &ServeArgs) -> Result<TokenReviewConfig, Error> {
    let mut c = match a.kube.api_url().map_err(Error::Usage)? {
        None => TokenReviewConfig::in_cluster(&a.ids.control_plane_ns, &a.ids.trust_domain)?,
        Some(url) => TokenReviewConfig::new(url, &a.ids.control_plane_ns, &a.ids.trust_domain),
    };
    if let Some(ca) = &a.kube.kube_ca {
        c.ca_file = Some(ca.clone());
    }
    if let Some(t) = &a.kube.kube_token_file {
        c.token_file = Some(t.clone());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from([
            "identity",
            "serve",
            "--trust-anchors",
            "ca.crt",
            "--issuer-cert",
            "i.crt",
            "--issuer-key",
            "i.key",
            "--token-key",
            "t.key",
        ])
        .unwrap();
        let Command::Serve(s) = a.command else {
            panic!()
        };
        assert_eq!(s.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.lifetime, Duration::from_secs(86400));
        assert_eq!(s.skew, Duration::from_secs(20));
        // Exactly one of --token-key / --kubernetes.
        let files = [
            "identity",
            "serve",
            "--trust-anchors",
            "a",
            "--issuer-cert",
            "b",
            "--issuer-key",
            "c",
        ];
        assert!(Args::try_parse_from(files).is_err());
        let both = [&files[..], &["--token-key", "k", "--kubernetes"]].concat();
        assert!(Args::try_parse_from(both).is_err());
    }
}
