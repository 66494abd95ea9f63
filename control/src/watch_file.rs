//! A registry file, watched by polling: a change is applied without a restart, and a bad edit
//! is logged (with the section at fault, as the service's parser names it), counted and
//! ignored: the last good state stays served.
//!
//! ```text
//! every poll: stat ─ unchanged and older than 2 s? ─► Unchanged
//!             read, 20 ms, read again ─ differ? ─► Unchanged (being written; next poll)
//!             hash ─ same content as last parsed? ─► Unchanged
//!             parse on a blocking thread ─► Registry::apply ─► Applied(n)   (reloads{ok}++)
//!                                       └► error ─► Rejected, last good state kept (reloads{error}++)
//! ```

use crate::{metrics::SourceMetrics, shutdown::stopped};
use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

/// What a service does with its registry file.
pub trait Registry: Send + Sync + 'static {
    /// A parsed file.
    type State: Send + 'static;

    /// Parses the file's text. Runs on a blocking thread: a big file takes a while. The error
    /// names the section at fault (`services[2] (web.emojivoto): port 0`).
    fn parse(&self, text: &str) -> Result<Self::State, String>;

    /// Applies a parsed file; returns how many things (services, topics) changed.
    fn apply(&self, state: Self::State) -> usize;
}

/// Why a registry file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// What one poll did.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    Unchanged,
    /// Applied; this many things changed.
    Applied(usize),
    Rejected,
}

/// How long a changed file must stay the same before it is parsed.
const SETTLE: Duration = Duration::from_millis(20);

/// A file modified less than this long ago is read even if its mtime and size look unchanged
/// (mtime granularity).
const RECENT: Duration = Duration::from_secs(2);

/// Reads and parses a registry file (the parse on a blocking thread).
pub async fn load<R: Registry>(path: &Path, registry: &Arc<R>) -> Result<R::State, RegistryError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| RegistryError::Read {
            path: path.display().to_string(),
            source,
        })?;
    parse_blocking(path, text, registry).await
}

async fn parse_blocking<R: Registry>(
    path: &Path,
    text: String,
    registry: &Arc<R>,
) -> Result<R::State, RegistryError> {
    let invalid = |message| RegistryError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || registry.parse(&text))
        .await
        .map_err(|e| invalid(format!("parser failed: {e}")))?
        .map_err(invalid)
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Polls a registry file and applies its changes.
#[derive(Debug)]
pub struct FileWatcher<R> {
    path: PathBuf,
    registry: Arc<R>,
    metrics: Arc<SourceMetrics>,
    /// The file's modification time and length at the last read.
    stat: Option<(SystemTime, u64)>,
    /// The hash of the content last parsed, good or bad.
    hash: Option<u64>,
    /// The last read error reported (so a missing file is reported once).
    read_error: Option<String>,
}

impl<R: Registry> FileWatcher<R> {
    /// A watcher that has read nothing yet: its first poll applies the file.
    pub fn new(path: PathBuf, registry: Arc<R>, metrics: Arc<SourceMetrics>) -> Self {
        Self {
            path,
            registry,
            metrics,
            stat: None,
            hash: None,
            read_error: None,
        }
    }

    /// Loads the file and applies it; the source is then ready. A first load that fails is an
    /// error: there is no last good state to keep.
    pub async fn start(
        path: PathBuf,
        registry: Arc<R>,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Self, RegistryError> {
        let mut w = Self::new(path, registry, metrics);
        let read = |source| RegistryError::Read {
            path: w.path.display().to_string(),
            source,
        };
        let stat = stat(&tokio::fs::metadata(&w.path).await.map_err(read)?);
        let text = tokio::fs::read_to_string(&w.path).await.map_err(read)?;
        let hash = hash(&text);
        let state = parse_blocking(&w.path, text, &w.registry).await?;
        let changed = w.registry.apply(state);
        w.stat = Some(stat);
        w.hash = Some(hash);
        w.metrics.set_ready();
        tracing::info!(path = %w.path.display(), changed, "registry loaded");
        Ok(w)
    }

    /// Polls every `every` until `stop` turns true.
    pub async fn run(mut self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.poll().await;
                }
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// Checks the file once. It is read when its mtime or size changed, or it was modified in
    /// the last two seconds (mtime granularity); it is parsed only if its content changed.
    pub async fn poll(&mut self) -> Polled {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) => return self.read_failed(e),
        };
        let stat = stat(&meta);
        let recent = SystemTime::now()
            .duration_since(stat.0)
            .map_or(true, |age| age < RECENT);
        if self.stat == Some(stat) && !recent {
            return Polled::Unchanged;
        }
        let text = match self.read_settled().await {
            Ok(Some(t)) => t,
            // Still being written: look again on the next poll.
            Ok(None) => return Polled::Unchanged,
            Err(e) => return self.read_failed(e),
        };
        self.stat = Some(stat);
        self.read_error = None;
        let hash = hash(&text);
        if self.hash == Some(hash) {
            return Polled::Unchanged;
        }
        self.hash = Some(hash);
        match parse_blocking(&self.path, text, &self.registry).await {
            Ok(state) => {
                let changed = self.registry.apply(state);
                self.metrics.reloaded(true);
                self.metrics.set_ready();
                tracing::info!(path = %self.path.display(), changed, "registry applied");
                Polled::Applied(changed)
            }
            Err(e) => {
                self.metrics.reloaded(false);
                tracing::error!(error = %e, "registry rejected; keeping the last good state");
                Polled::Rejected
            }
        }
    }

    /// Reads the file twice, a moment apart; `None` if it changed in between (a writer that
    /// truncates and then writes is not read half-way).
    async fn read_settled(&self) -> std::io::Result<Option<String>> {
        let first = tokio::fs::read_to_string(&self.path).await?;
        if self.hash == Some(hash(&first)) {
            return Ok(Some(first));
        }
        tokio::time::sleep(SETTLE).await;
        let second = tokio::fs::read_to_string(&self.path).await?;
        Ok((first == second).then_some(second))
    }

    fn read_failed(&mut self, e: std::io::Error) -> Polled {
        let msg = e.to_string();
        if self.read_error.as_ref() == Some(&msg) {
            return Polled::Unchanged;
        }
        self.read_error = Some(msg);
        self.stat = None;
        self.metrics.reloaded(false);
        let e = RegistryError::Read {
            path: self.path.display().to_string(),
            source: e,
        };
        tracing::error!(error = %e, "registry unreadable; keeping the last good state");
        Polled::Rejected
    }
}

fn stat(meta: &std::fs::Metadata) -> (SystemTime, u64) {
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    )
}

#[cfg(test)]
mod tests;
