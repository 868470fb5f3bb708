//! Signals: the first SIGTERM or SIGINT asks the agent to stop cleanly (promptly, keeping any
//! in-progress maintenance state); a second one exits at once.

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::watch;

/// The exit code after a second signal (128 + SIGINT, as shells report an interrupt).
const ABORT_EXIT_CODE: i32 = 130;

/// A handle that resolves when a stop was requested.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// A stop switch: sending `true` requests the stop that the [`Shutdown`] handles see.
pub fn channel() -> (watch::Sender<bool>, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown(rx))
}

/// Installs the handlers. Returns the handle and the task that listens for signals.
pub fn install() -> std::io::Result<(Shutdown, impl Future<Output = ()> + Send + 'static)> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let (tx, shutdown) = channel();
    let task = async move {
        let mut seen = 0;
        while let Some(sig) = signals.next().await {
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = sig, "stopping (a second signal exits at once)");
                let _ = tx.send(true);
            } else {
                tracing::warn!(signal = sig, "second signal: exiting now");
                std::process::exit(ABORT_EXIT_CODE);
            }
        }
    };
    Ok((shutdown, task))
}
