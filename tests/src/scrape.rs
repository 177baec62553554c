//! Reading a Prometheus endpoint the way Prometheus does: an HTTP GET, then
//! the exposition parsed by a real parser.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET http://addr/metrics`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
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
    ensure!(head.starts_with("HTTP/1.1 200"), "answered {head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "content type in {head}"
    );
    // Small bodies come whole; a chunked one is joined here.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(body);
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut joined = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a chunk without a size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(joined);
        }
        ensure!(rest.len() >= size, "a chunk shorter than its size");
        joined.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
}

/// The exposition, parsed; fails on anything Prometheus would refuse.
pub fn parse(text: &str) -> anyhow::Result<prometheus_parse::Scrape> {
    ensure!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("parsing the exposition")
}

/// The value of the sample `name` with exactly these labels (0 when absent:
/// a counter not yet touched is not exposed).
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map_or(0.0, |sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            _ => f64::NAN,
        })
}
