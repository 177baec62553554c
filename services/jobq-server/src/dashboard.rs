//! The dashboard: the built bundle of `web/` (web/dist), embedded in the
//! binary and served at `/` on the gRPC port, so running jobq needs no Node.js.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use include_dir::{Dir, include_dir};

static BUNDLE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../web/dist");

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn not_found(what: &'static str) -> Response {
    let mut response = Response::new(Body::from(what));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Serves a file of the bundle; any other path gets index.html, so the
/// page's own routes survive a reload. A missing asset is a 404: an old page
/// asking for a file of another build must not get HTML instead of its script.
pub async fn serve(uri: Uri) -> Response {
    let wanted = uri.path().trim_start_matches('/');
    let (path, file) = match BUNDLE.get_file(wanted) {
        Some(file) if !wanted.is_empty() => (wanted, file),
        None if wanted.starts_with("assets/") => return not_found("no such asset"),
        _ => match BUNDLE.get_file("index.html") {
            Some(file) => ("index.html", file),
            None => return not_found("dashboard not built"),
        },
    };
    let mut response = Response::new(Body::from(file.contents()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Vite puts a content hash in asset names: they never change. index.html does.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
