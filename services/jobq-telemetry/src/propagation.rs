//! W3C trace context (`traceparent`, `tracestate`) between processes: in
//! gRPC metadata on every call, in HTTP headers, and in the `traceparent`
//! a job keeps from its enqueue to its last attempt.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span's context as a `traceparent` value; `None` when the span is not
/// traced (no exporter configured, or not sampled and not recording).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The context a `traceparent` value names (an empty context if it is not one).
pub fn context_of(traceparent: &str) -> Context {
    let mut carrier = HashMap::with_capacity(1);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    TraceContextPropagator::new().extract(&carrier)
}

/// The span context a `traceparent` value names, if it is a valid one.
pub fn span_context_of(traceparent: &str) -> Option<SpanContext> {
    let context = context_of(traceparent);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The trace id in a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let trace_id = traceparent.split('-').nth(1)?;
    (trace_id.len() == 32 && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then_some(trace_id)
}

/// Makes `span` a child of the context in `traceparent`, when it names one
/// (before the span is first entered).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = span_context_of(traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// Links `span` to the span `traceparent` names, when it names one.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(linked) = span_context_of(traceparent) {
        span.add_link(linked);
    }
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
    }
}

/// The context incoming HTTP/2 (gRPC) headers carry.
pub fn extract_headers(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the context incoming headers carry, when they
/// carry one (before the span is first entered).
pub fn adopt_headers(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s context into outgoing HTTP headers (a response's, say).
pub fn inject_headers(span: &tracing::Span, headers: &mut axum::http::HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut axum::http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_its_trace() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(traceparent),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let parent = span_context_of(traceparent).expect("valid");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled());
        assert_eq!(trace_id_of("not-a-traceparent"), None);
        assert!(span_context_of("00-zz-00-01").is_none());
    }
}
