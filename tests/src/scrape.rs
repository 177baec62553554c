//! Reading a Prometheus endpoint the way Prometheus does: an HTTP GET, then
//! the exposition parsed by a real parser.

use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};

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

/// The exposition, checked line by line, then parsed with `prometheus-parse`.
///
/// That parser skips what it does not understand instead of failing, and
/// knows neither OpenMetrics' `# UNIT` nor `# EOF`; so each line must be one
/// it recognises (help, type, sample), or one of those two, with `# EOF` last;
/// and every sample must belong to a declared family (`_total`, `_bucket`,
/// `_count`, `_sum` suffixes included).
pub fn parse(text: &str) -> anyhow::Result<prometheus_parse::Scrape> {
    use prometheus_parse::LineInfo;

    let mut families = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.last() == Some(&"# EOF"),
        "no `# EOF` at the end:\n{text}"
    );
    for (number, line) in lines.iter().enumerate() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => families.push(metric_alias.unwrap_or(metric_name)),
            LineInfo::Sample { metric_name, .. } => {
                let declared = families.iter().any(|family| {
                    ["", "_total", "_bucket", "_count", "_sum", "_created"]
                        .iter()
                        .any(|suffix| metric_name == format!("{family}{suffix}"))
                });
                ensure!(
                    declared,
                    "line {}: a sample of no declared family: {line}",
                    number + 1
                );
            }
            LineInfo::Empty => bail!("line {}: empty", number + 1),
            LineInfo::Ignored if line.starts_with("# UNIT ") => {}
            LineInfo::Ignored if *line == "# EOF" && number + 1 == lines.len() => {}
            LineInfo::Ignored => bail!("line {}: not exposition: {line}", number + 1),
        }
    }
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("parsing the exposition")
}

/// The value of the sample `name` with exactly `labels` (`None` when absent).
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .and_then(|sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => Some(value),
            _ => None,
        })
}

/// Like [`sample`], 0 when absent: a counter not yet touched is not exposed.
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels).unwrap_or(0.0)
}
