//! Stopping: the process's shutdown signal, and the stop flag every loop selects on.

use std::future::Future;
use tokio::sync::watch;

/// What a service serves until: a future that completes when it should stop
/// ([`shutdown_signal`] in production, a channel in tests).
pub trait Shutdown: Future<Output = ()> + Send {}

impl<F: Future<Output = ()> + Send> Shutdown for F {}

/// Completes on SIGTERM or SIGINT (Ctrl-C), then logs that the service is shutting down.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// Completes once `stop` holds `true` (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let done = *stop.borrow_and_update();
        if done || stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopped_completes_on_true_or_when_the_sender_is_gone() {
        let (tx, mut rx) = watch::channel(false);
        let waiting = tokio::spawn(async move { stopped(&mut rx).await });
        tx.send(true).unwrap();
        waiting.await.unwrap();
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        stopped(&mut rx).await;
    }
}
