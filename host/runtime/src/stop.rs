//! The stop signal of an instance: set once by the host, read by the guest through
//! `environment.stop-requested`, and awaited by blocking host calls so they return early.

use tokio::sync::watch;

/// The host's side: requests the stop.
#[derive(Clone, Debug)]
pub struct StopHandle {
    tx: watch::Sender<bool>,
}

/// The instance's side: tells whether a stop was requested, and waits for it.
#[derive(Clone, Debug)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

/// A new, unset stop signal.
pub fn stop_signal() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(false);
    (StopHandle { tx }, StopSignal { rx })
}

impl StopHandle {
    /// Asks the instance to stop. Idempotent.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Takes a stop request back: only for a freeze refused at the quiet point, where the
    /// instance's supervisor calls `run` again.
    pub fn withdraw(&self) {
        self.tx.send_replace(false);
    }

    /// A signal reading this handle.
    pub fn signal(&self) -> StopSignal {
        StopSignal {
            rx: self.tx.subscribe(),
        }
    }
}

impl StopSignal {
    /// Whether a stop was requested (or the host side is gone).
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once a stop is requested (or the host side is gone).
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        // An error means the handle was dropped: nobody can run this instance any more.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_wakes_waiters_and_sticks() {
        let (handle, signal) = stop_signal();
        assert!(!signal.is_requested());
        let waiter = tokio::spawn({
            let s = signal.clone();
            async move { s.requested().await }
        });
        handle.request();
        waiter.await.unwrap();
        assert!(signal.is_requested());
        // Waiting after the fact returns at once.
        signal.requested().await;
    }

    #[tokio::test]
    async fn dropped_handle_counts_as_stop() {
        let (handle, signal) = stop_signal();
        drop(handle);
        assert!(signal.is_requested());
        signal.requested().await;
    }
}
