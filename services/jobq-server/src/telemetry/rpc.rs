//! One span and one measurement per gRPC call: a tower layer in front of
//! the services (inside grpc-web, so it sees gRPC's own status codes). The
//! caller's W3C trace context becomes the span's parent, and the span's
//! context goes back in the response headers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tracing::Instrument;

use super::metrics::ServerMetrics;

/// Wraps every gRPC method.
#[derive(Clone, Default)]
pub struct RpcLayer {
    metrics: Option<Arc<ServerMetrics>>,
}

impl RpcLayer {
    /// Spans always; measurements into `metrics` when given.
    pub fn new(metrics: Option<Arc<ServerMetrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcLayer`].
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Option<Arc<ServerMetrics>>,
}

/// Methods whose calls are streams, counted while open.
const STREAMING_METHODS: [&str; 5] = [
    "/jobq.v1.JobQueueService/StreamJobLogs",
    "/jobq.v1.JobQueueService/WatchJobs",
    "/jobq.v1.WorkerService/PushJobLogs",
    "/grpc.health.v1.Health/Watch",
    "ServerReflectionInfo",
];

fn is_streaming(method: &str) -> bool {
    STREAMING_METHODS
        .iter()
        .any(|streaming| method.ends_with(streaming))
}

impl<S> tower::Service<Request<Body>> for RpcService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let call = Call::start(&request, self.metrics.clone());
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).instrument(call.span.clone()).await?;
            let (mut parts, body) = response.into_parts();
            if jobq_telemetry::exporting() {
                jobq_telemetry::propagation::inject_headers(&call.span, &mut parts.headers);
            }
            let mut call = Some(call);
            // A call that fails before any message answers with its status in the headers.
            if let Some(code) = status_in(&parts.headers)
                && let Some(call) = call.take()
            {
                call.finish(code);
            }
            Ok(Response::from_parts(
                parts,
                ObservedBody { inner: body, call },
            ))
        })
    }
}

fn status_in(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// One call in progress.
struct Call {
    span: tracing::Span,
    method: String,
    started: Instant,
    metrics: Option<Arc<ServerMetrics>>,
    stream: Option<Gauge>,
    finished: bool,
}

impl Call {
    fn start(request: &Request<Body>, metrics: Option<Arc<ServerMetrics>>) -> Self {
        let method = request.uri().path().to_owned();
        use tonic::transport::server::TcpConnectInfo;
        let extensions = request.extensions();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| {
                extensions
                    .get::<crate::tls::TlsPeer<TcpConnectInfo>>()
                    .map(|tls| &tls.inner)
            })
            .and_then(|info| info.remote_addr());
        // Mutual TLS: the machine its certificate names.
        let client_cert = crate::tls::ClientIdentity::of(extensions);
        let span = tracing::info_span!(
            "rpc",
            otel.name = method.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            peer = peer.map(tracing::field::display),
            client_cert = client_cert.map(tracing::field::display),
            duration_ms = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if jobq_telemetry::exporting() {
            jobq_telemetry::propagation::adopt_headers(&span, request.headers());
            if let Some(traceparent) = jobq_telemetry::propagation::traceparent_of(&span)
                && let Some(trace_id) = jobq_telemetry::propagation::trace_id_of(&traceparent)
            {
                span.record("trace_id", trace_id);
            }
        }
        let stream = metrics
            .as_ref()
            .filter(|_| is_streaming(&method))
            .map(|metrics| metrics.streams_open(&method));
        if let Some(open) = &stream {
            open.inc();
        }
        Self {
            span,
            method,
            started: Instant::now(),
            metrics,
            stream,
            finished: false,
        }
    }

    fn finish(mut self, code: i32) {
        self.record(tonic::Code::from_i32(code));
    }

    fn record(&mut self, code: tonic::Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        self.span
            .record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        if let Some(metrics) = &self.metrics {
            metrics.rpc_finished(&self.method, code_name(code), elapsed);
        }
        if let Some(open) = self.stream.take() {
            open.dec();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Not finished here: the client went away before the status was sent.
        self.record(tonic::Code::Cancelled);
    }
}

/// The canonical name of a status code, as gRPC documents it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The response body, watched for the status in its trailers.
pub struct ObservedBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| status_in(trailers).unwrap_or(tonic::Code::Unknown as i32)),
            Poll::Ready(Some(Err(_))) => Some(tonic::Code::Unknown as i32),
            Poll::Ready(None) => Some(tonic::Code::Unknown as i32),
            Poll::Pending => None,
        };
        if let Some(code) = ended
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
