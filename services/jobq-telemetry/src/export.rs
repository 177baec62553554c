//! The span export path: a bounded queue in front of the SDK's batch
//! processor, so a slow or dead collector never holds up the code that ends
//! a span, and every span it costs is counted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};

/// Spans handed to the exporter and not yet answered for.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What became of the spans this process ended, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost: the queue was full, or the collector refused or did not answer.
    pub dropped: u64,
}

/// The counts so far (all zero when nothing is exported).
pub fn export_counts() -> ExportCounts {
    ExportCounts {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
    }
}

/// Wraps the batch processor: refuses spans beyond `max_queued`, counting them.
#[derive(Debug)]
pub(crate) struct BoundedProcessor {
    inner: BatchSpanProcessor,
    max_queued: usize,
}

impl BoundedProcessor {
    /// `inner` must be able to hold `max_queued` spans itself, so that it never drops one uncounted.
    pub(crate) fn new(inner: BatchSpanProcessor, max_queued: usize) -> Self {
        Self { inner, max_queued }
    }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = QUEUED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.max_queued).then_some(queued + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Wraps the OTLP exporter: counts what each batch became.
#[derive(Debug)]
pub(crate) struct CountingExporter<E> {
    inner: E,
}

impl<E> CountingExporter<E> {
    pub(crate) fn new(inner: E) -> Self {
        Self { inner }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let _ = QUEUED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            Some(queued.saturating_sub(spans))
        });
        let counter = if result.is_ok() { &EXPORTED } else { &DROPPED };
        counter.fetch_add(spans as u64, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
