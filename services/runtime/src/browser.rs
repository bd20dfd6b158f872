//! The headers of every page a browser renders (sso's login page, the web console): a
//! Content-Security-Policy, no content-type sniffing, no framing, no referrer, and how long it
//! may be cached.

use axum::{
    http::{HeaderValue, header},
    response::Response,
};

/// Sets the page headers on `response`: `policy` as its Content-Security-Policy, `caching` as its
/// Cache-Control. A policy that is no header value (which our fixed policies never are) leaves
/// the default of `default-src 'none'`.
pub fn page(mut response: Response, policy: &str, caching: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(policy).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(caching));
    response
}
