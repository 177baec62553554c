//! The process's tracing subscriber: log lines on stderr, and spans over
//! OTLP when an endpoint is configured.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::export::{BoundedProcessor, CountingExporter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Readable lines (coloured on a terminal).
    #[default]
    Human,
    /// One JSON object per line, with the fields of the span it is in
    /// (job id, type, queue, attempt and trace id inside a job's span).
    Json,
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` of exported spans unless `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES` name one.
    pub service_name: &'static str,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter when `JOBQ_LOG` is unset.
    pub default_log_filter: &'static str,
    /// Where spans go (see [`otlp_endpoint`]); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
}

/// While spans are exported (and `JOBQ_LOG` is unset), these crates keep to
/// warnings: their spans would bury a job's trace in transport detail.
const TRANSPORT_QUIET: &str = "h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,\
     sqlx=warn,sea_orm=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// Spans that may wait for export at once; beyond this they are dropped and
/// counted (`OTEL_BSP_MAX_QUEUE_SIZE` changes it).
const DEFAULT_MAX_QUEUED_SPANS: usize = 2048;

/// The OTLP/gRPC endpoint to export to: `flag` when given, else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`;
/// none when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
pub fn otlp_endpoint(flag: Option<&str>) -> Option<String> {
    let set = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    if let Some(endpoint) = flag.filter(|value| !value.trim().is_empty()) {
        return Some(endpoint.to_owned());
    }
    if set("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|value| value.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Keeps the exporter alive; dropping it (or [`TelemetryGuard::shutdown`])
/// sends what is still queued, waiting a few seconds at most.
#[must_use = "spans stop being exported when the guard is dropped"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        crate::EXPORTING.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = provider.shutdown_with_timeout(std::time::Duration::from_secs(3)) {
            tracing::debug!(%error, "flushing spans at exit");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the subscriber for this process (a no-op when one is already
/// installed, as in tests that run several servers in one process). Call it
/// inside the tokio runtime when an OTLP endpoint is set: the exporter's
/// channel needs it.
pub fn init(settings: Settings) -> TelemetryGuard {
    let provider = settings.otlp_endpoint.as_deref().and_then(|endpoint| {
        match tracer_provider(&settings, endpoint) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!(
                    "{}: not exporting traces to {endpoint}: {error:#}",
                    settings.service_name
                );
                None
            }
        }
    });
    // One filter for log lines and spans alike. Per-layer filters would let
    // the span layer see different spans from the log layer, but they lost
    // the first span of a callsite now and then under concurrency: a call
    // with no trace context answered.
    let filter = match std::env::var("JOBQ_LOG") {
        Ok(directives) => EnvFilter::new(directives),
        Err(_) if provider.is_some() => {
            EnvFilter::new(format!("{},{TRANSPORT_QUIET}", settings.default_log_filter))
        }
        Err(_) => EnvFilter::new(settings.default_log_filter),
    };
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(settings.service_name))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(settings.log_format))
        .with(spans)
        .try_init()
        .is_ok();
    if installed {
        crate::EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
        TelemetryGuard { provider }
    } else {
        TelemetryGuard::default()
    }
}

fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal, never in a file or a pipe.
        LogFormat::Human => Box::new(lines.with_ansi(std::io::stderr().is_terminal())),
        LogFormat::Json => Box::new(
            lines
                .json()
                .with_ansi(false)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        ),
    }
}

fn tracer_provider(settings: &Settings, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let max_queued = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|size| *size > 0)
        .unwrap_or(DEFAULT_MAX_QUEUED_SPANS);
    let batches = BatchSpanProcessor::builder(CountingExporter::new(exporter))
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(max_queued)
                .build(),
        )
        .build();
    let mut resource = Resource::builder();
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        });
    if !named_by_env {
        resource = resource.with_service_name(settings.service_name);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BoundedProcessor::new(batches, max_queued))
        .with_resource(resource.build())
        .build())
}
