//! [`Shutdown`]: the two stop requests a worker obeys — graceful, then forced.

use tokio_util::sync::CancellationToken;

/// Tells a running [`super::Worker`] to stop. A graceful stop ends leasing,
/// lets running jobs finish within the grace period, then cancels and
/// releases the rest; a forced stop does that last part at once. Cloning
/// shares the requests.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    /// Nothing requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop requests driven by the process's signals: the first SIGTERM or
    /// SIGINT asks for a graceful stop, the second for a forced one. Must be
    /// called inside a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Self::new();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let requests = shutdown.clone();
        tokio::spawn(async move {
            for request in 0..2 {
                let name = tokio::select! {
                    _ = terminate.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                };
                if request == 0 {
                    tracing::info!(
                        signal = name,
                        "stopping: no new jobs; running jobs get the grace period (signal again to stop at once)"
                    );
                    requests.request_graceful();
                } else {
                    tracing::warn!(signal = name, "second signal: stopping at once");
                    requests.request_force();
                }
            }
        });
        Ok(shutdown)
    }

    /// Asks for a graceful stop.
    pub fn request_graceful(&self) {
        self.graceful.cancel();
    }

    /// Asks for an immediate stop (implies graceful).
    pub fn request_force(&self) {
        self.graceful.cancel();
        self.force.cancel();
    }

    /// Whether a graceful (or forced) stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Resolves once a graceful (or forced) stop is asked for.
    pub async fn requested(&self) {
        self.graceful.cancelled().await;
    }

    /// Resolves once a forced stop is asked for.
    pub async fn forced(&self) {
        self.force.cancelled().await;
    }

    pub(crate) fn graceful_token(&self) -> CancellationToken {
        self.graceful.clone()
    }

    pub(crate) fn force_token(&self) -> CancellationToken {
        self.force.clone()
    }
}
