//! Reading a Prometheus endpoint the way Prometheus does: an HTTP GET, then
//! the exposition parsed by a real parser.

use std::net::SocketAddr;

use anyhow::{Context, ensure};

/// The body of `GET http://addr/metrics`, checked to be an OpenMetrics answer.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (head, body) = jobq_telemetry::metrics::get(addr).await?;
    ensure!(head.starts_with("HTTP/1.1 200"), "answered {head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "content type in {head}"
    );
    Ok(body)
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
