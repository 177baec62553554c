//! A job's one-line payload summary, made once at enqueue and stored with
//! the job: list views show it without reading payloads.

use serde_json::{Map, Value};

/// At most this many characters (an ellipsis marks a cut).
pub const MAX_SUMMARY_CHARS: usize = 120;

/// How many top-level scalar fields a generic summary shows.
const GENERIC_FIELDS: usize = 4;

/// The summary of a job of `job_type` with the JSON `payload`: the
/// title/channel/URL of the built-in media types (as the payload names
/// them), the path and limits of a cleanup, else the first top-level scalar
/// fields as `key=value`. Empty for a payload with nothing to show.
pub fn summarize(job_type: &str, payload: &str) -> String {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(payload) else {
        // Payloads are validated as JSON; a scalar or array shows as itself.
        return cut(payload.trim());
    };
    let parts = match job_type {
        "channel_download" | "playlist_download" => {
            named(&fields, &["title", "channel", "playlist", "url"])
        }
        "metadata_extraction" => named(
            &fields,
            &["title", "channel", "url", "path", "download_job_id"],
        ),
        "cleanup" => {
            let mut parts = named(&fields, &["path"]);
            if let Some(days) = fields.get("older_than_days").and_then(scalar) {
                parts.push(format!("older than {days} days"));
            }
            if let Some(bytes) = fields.get("max_total_bytes").and_then(scalar) {
                parts.push(format!("max {bytes} bytes"));
            }
            if fields.get("dry_run") == Some(&Value::Bool(true)) {
                parts.push("dry run".to_owned());
            }
            parts
        }
        _ => Vec::new(),
    };
    if parts.is_empty() {
        return cut(&generic(&fields));
    }
    cut(&parts.join(" · "))
}

/// The values of those of `names` that are non-empty scalars, in order.
fn named(fields: &Map<String, Value>, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| fields.get(*name).and_then(scalar))
        .filter(|text| !text.is_empty())
        .collect()
}

/// `key=value` of the first few scalar fields, in key order (the order
/// payloads are stored in).
fn generic(fields: &Map<String, Value>) -> String {
    fields
        .iter()
        .filter_map(|(key, value)| scalar(value).map(|text| format!("{key}={text}")))
        .take(GENERIC_FIELDS)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A string as it is, a number or boolean as JSON; `None` for the rest.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(one_line(text)),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Line breaks and tabs as spaces: the summary is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most [`MAX_SUMMARY_CHARS`] characters, cut at a character boundary.
fn cut(text: &str) -> String {
    let text = one_line(text);
    if text.chars().count() <= MAX_SUMMARY_CHARS {
        return text;
    }
    let mut short: String = text.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_show_title_channel_and_url() {
        assert_eq!(
            summarize(
                "channel_download",
                r#"{"url":"https://youtube.com/@kurzgesagt","channel":"Kurzgesagt","format":"best"}"#
            ),
            "Kurzgesagt · https://youtube.com/@kurzgesagt"
        );
        assert_eq!(
            summarize("metadata_extraction", r#"{"path":"a/b.mp4"}"#),
            "a/b.mp4"
        );
        assert_eq!(
            summarize(
                "cleanup",
                r#"{"path":"old","older_than_days":30,"dry_run":true}"#
            ),
            "old · older than 30 days · dry run"
        );
    }

    #[test]
    fn other_payloads_show_their_first_scalar_fields() {
        assert_eq!(
            summarize(
                "email",
                r#"{"to":"a@b.c","nested":{"x":1},"n":3,"ok":false,"tags":[1],"e":null,"more":"x","last":"y"}"#
            ),
            "last=y more=x n=3 ok=false"
        );
        // A built-in type without its usual fields falls back to the same.
        assert_eq!(
            summarize("channel_download", r#"{"x":"line\nbreak"}"#),
            "x=line break"
        );
        assert_eq!(summarize("noop", "{}"), "");
        assert_eq!(summarize("noop", "[1, 2]"), "[1, 2]");
    }

    #[test]
    fn long_summaries_are_cut_to_one_line() {
        let long = format!(r#"{{"url":"https://example.com/{}"}}"#, "é".repeat(300));
        let summary = summarize("playlist_download", &long);
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS);
        assert!(summary.ends_with('…'));
    }
}
