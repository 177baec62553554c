//! The Prometheus endpoint: `GET /metrics` answers a registry in the
//! OpenMetrics text format (which Prometheus scrapes natively).

use std::future::Future;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { exposition(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `address` and serves `registry` there in the background; returns
/// the bound address (port 0 picks one).
pub async fn spawn(
    address: std::net::SocketAddr,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("--metrics-listen {address}: {error}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, registry, shutdown).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "metrics at http://{bound}/metrics");
    Ok(bound)
}

fn exposition(registry: &Registry) -> axum::response::Response {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {error}"),
        )
            .into_response(),
    }
}

/// `GET http://addr/metrics` as Prometheus sends it: the response's head
/// (status line and headers) and its body, de-chunked.
pub async fn get(addr: std::net::SocketAddr) -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response).context("the response is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((head.to_owned(), body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut joined = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a chunk without a size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(joined);
        }
        anyhow::ensure!(rest.len() >= size, "a chunk shorter than its size");
        joined.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
}
