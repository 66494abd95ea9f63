//! Logging: a `tracing` subscriber whose filter can be changed at runtime through the admin
//! server's `/proxy-log-level`.

use std::sync::Arc;
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, reload, util::SubscriberInitExt};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevel {
    current: Arc<std::sync::Mutex<String>>,
    handle: Option<reload::Handle<Targets, tracing_subscriber::Registry>>,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("current", &self.get())
            .finish()
    }
}

pub fn parse_filter(s: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    s.parse::<Targets>()
}

/// Installs the global subscriber. If one is already installed (tests running several proxies
/// in one process), the returned handle only records the level.
/// How log lines are written (`LINKERD2_PROXY_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

pub fn init(level: &str, format: LogFormat) -> LogLevel {
    let targets = parse_filter(level).unwrap_or_else(|_| Targets::new());
    let (layer, handle) = reload::Layer::new(targets);
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match format {
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(false))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .try_init(),
    };
    LogLevel {
        current: Arc::new(std::sync::Mutex::new(level.to_string())),
        handle: installed.is_ok().then_some(handle),
    }
}

impl LogLevel {
    /// A handle that is not connected to a subscriber.
    pub fn detached(level: &str) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(level.to_string())),
            handle: None,
        }
    }

    pub fn get(&self) -> String {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, level: &str) -> Result<(), String> {
        let targets = parse_filter(level.trim()).map_err(|e| e.to_string())?;
        if let Some(h) = &self.handle {
            h.reload(targets).map_err(|e| e.to_string())?;
        }
        match self.current.lock() {
            Ok(mut g) => *g = level.trim().to_string(),
            Err(p) => *p.into_inner() = level.trim().to_string(),
        }
        Ok(())
    }
}
