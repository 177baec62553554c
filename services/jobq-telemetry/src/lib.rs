//! What the jobq server, SDK, worker and CLI share to be observed:
//!
//! - [`init`]: the process's tracing subscriber — readable or JSON lines on
//!   stderr (colours only on a terminal), and, when an OTLP endpoint is
//!   configured, spans exported over OTLP/gRPC through a bounded batch
//!   exporter that drops (and counts) rather than waits;
//! - [`propagation`]: W3C trace context in and out of gRPC metadata, HTTP
//!   headers and the `traceparent` a job keeps;
//! - [`metrics`]: the Prometheus text endpoint.

#[cfg(feature = "collector")]
pub mod collector;
mod export;
pub mod metrics;
pub mod propagation;
mod subscriber;

pub use export::{ExportCounts, export_counts};
pub use subscriber::{LogFormat, Settings, TelemetryGuard, init, otlp_endpoint};

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans: code that makes spans only for a
/// trace (one per job, say) checks it first and costs nothing when off.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}
