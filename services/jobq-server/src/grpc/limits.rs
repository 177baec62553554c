//! The message size limit, said plainly: tonic refuses a request over the
//! decoding limit with OUT_OF_RANGE and a terse message; the gRPC convention
//! (and what clients retry on) is RESOURCE_EXHAUSTED, naming the limit.

use axum::http::{HeaderValue, Response};

/// Rewrites tonic's "message too large" refusal into RESOURCE_EXHAUSTED
/// naming `limit` and the flag that sets it.
pub fn name_message_limit<B>(mut response: Response<B>, limit: usize) -> Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|code| code == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                message.contains("message%20length%20too%20large")
                    || message.contains("message length too large")
            });
    if too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        let message = format!(
            "the request is larger than the server's message limit of {limit} bytes (--max-message-bytes); send smaller batches"
        );
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

/// Percent-encodes a grpc-message value (spaces and non-ASCII).
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len() * 3 / 2);
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' && byte != b' ' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
