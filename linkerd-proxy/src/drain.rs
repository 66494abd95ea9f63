//! Graceful shutdown: a signal every connection watches, and a count of those still open.
//!
//! Each connection task holds a [`Drain`]. When shutdown begins, listeners stop accepting, every
//! holder sees [`Drain::signaled`] complete and winds down (HTTP servers stop taking new requests
//! but finish those in flight), and [`Controller::drain`] waits until every holder is dropped or
//! the grace period ends.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::sync::{mpsc, watch};

/// Held by everything that must finish before the process exits.
#[derive(Clone, Debug)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    _hold: mpsc::Sender<()>,
}

/// Observes the drain without holding it open (for the admin server's readiness).
#[derive(Clone, Debug)]
pub struct Signal(watch::Receiver<bool>);

/// Starts the drain and waits for it.
#[derive(Debug)]
pub(crate) struct Controller {
    signal: watch::Sender<bool>,
    hold: Option<mpsc::Sender<()>>,
    released: mpsc::Receiver<()>,
}

pub(crate) fn channel() -> (Controller, Drain) {
    let (signal, rx) = watch::channel(false);
    let (hold, released) = mpsc::channel(1);
    let drain = Drain {
        signal: rx,
        _hold: hold.clone(),
    };
    let ctl = Controller {
        signal,
        hold: Some(hold),
        released,
    };
    (ctl, drain)
}

/// A wait registered with the drain channel.
type Wait = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Completes once shutdown has begun ([`Drain::signaled`]).
pub struct Signaled {
    rx: watch::Receiver<bool>,
    /// The registered wait, once polled, and the waker it was registered with.
    wait: Option<(Wait, Waker)>,
}

impl std::fmt::Debug for Signaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaled").finish_non_exhaustive()
    }
}

impl Future for Signaled {
    type Output = ();

    /// Every connection polls this beside its I/O, so on each of its wake-ups. Registering
    /// with the channel takes a lock; a waker that is already registered does not need it: then
    /// a poll only compares the channel's version (one atomic load).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some((_, waker)) = &this.wait
            && waker.will_wake(cx.waker())
        {
            // An error means the controller is gone, which also means shutdown.
            return match this.rx.has_changed() {
                Ok(false) => Poll::Pending,
                _ => Poll::Ready(()),
            };
        }
        let (mut wait, _) = this.wait.take().unwrap_or_else(|| {
            let mut rx = this.rx.clone();
            let wait: Wait = Box::pin(async move {
                let _ = rx.wait_for(|draining| *draining).await;
            });
            (wait, Waker::noop().clone())
        });
        if wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.wait = Some((wait, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drain {
    /// Completes once shutdown has begun.
    pub fn signaled(&self) -> Signaled {
        Signaled {
            rx: self.signal.clone(),
            wait: None,
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// A handle that sees the drain start but does not delay its end.
    pub fn signal(&self) -> Signal {
        Signal(self.signal.clone())
    }
}

impl Signal {
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

impl Controller {
    /// Signals every holder, then waits for all of them to finish, for at most `grace`.
    /// Returns false when the grace period ran out first.
    pub(crate) async fn drain(mut self, grace: Duration) -> bool {
        let _ = self.signal.send(true);
        self.hold = None;
        tokio::time::timeout(grace, self.released.recv())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn waits_for_holders_then_completes() {
        let (ctl, drain) = channel();
        let held = drain.clone();
        drop(drain);
        let task = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(held);
        });
        let started = tokio::time::Instant::now();
        assert!(ctl.drain(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_polled_signal_completes_when_the_drain_starts() {
        let (ctl, drain) = channel();
        let mut signaled = Box::pin(drain.signaled());
        // Pending, polled repeatedly (as beside a connection's I/O).
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(Duration::from_millis(10), signaled.as_mut())
                    .await
                    .is_err()
            );
        }
        let task = tokio::spawn(async move {
            signaled.await;
            drop(drain);
        });
        tokio::task::yield_now().await;
        assert!(ctl.drain(Duration::from_secs(1)).await);
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let (ctl, drain) = channel();
        let started = tokio::time::Instant::now();
        assert!(!ctl.drain(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(drain.is_draining());
    }
}
