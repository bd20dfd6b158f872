//! The web console (`console/`, a TypeScript single-page application), embedded in the binary and
//! served at `/` on the same port as gRPC. The browser calls the gRPC services themselves as
//! gRPC-Web, with the token its user signed in for, so it can do nothing the CLI could not with
//! that token.
//!
//! Every response carries a Content-Security-Policy that allows scripts, styles and connections
//! to this origin only (no inline script, no third party) and forbids framing; the page is never
//! cached and its hashed assets are cached for good. No cookie is set here.
//!
//! The files come from `console/dist` when it was built before this crate (`.ci/setup console`,
//! which `.ci/test`, `.ci/dev` and the image build run); otherwise the binary serves a page that
//! says how to build it.

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "$SIPMBA_CONSOLE_DIST"]
struct Assets;

/// The console's own paths (the application routes in the browser; each serves the page).
const PAGES: &[&str] = &[
    "/",
    "/things/{id}",
    "/commands",
    "/rules",
    "/users",
    "/channels",
    "/session",
];

/// Only this origin: scripts, styles, images, connections (gRPC-Web and sso's endpoints).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes.
pub fn router() -> Router {
    let mut router = Router::new()
        .route("/assets/{*file}", get(asset))
        .route("/favicon.svg", get(|| async { file("favicon.svg", None) }));
    for page in PAGES {
        router = router.route(page, get(index));
    }
    router
}

/// Whether this binary carries the built console (rather than the page saying how to build it).
pub fn built() -> bool {
    option_env!("SIPMBA_CONSOLE_BUILT") == Some("1")
}

async fn index(headers: HeaderMap) -> Response {
    file("index.html", headers.get(header::IF_NONE_MATCH))
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    file(
        &format!("assets/{path}"),
        headers.get(header::IF_NONE_MATCH),
    )
}

fn file(path: &str, if_none_match: Option<&HeaderValue>) -> Response {
    let Some(content) = Assets::get(path) else {
        return secured(
            (StatusCode::NOT_FOUND, "not found").into_response(),
            "no-store",
        );
    };
    let etag = format!("\"{}\"", hex(&content.metadata.sha256_hash()[..16]));
    // The page names its assets by content hash: they never change, the page always may.
    let caching = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-store"
    };
    if if_none_match.is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return secured(StatusCode::NOT_MODIFIED.into_response(), caching);
    }
    let mut response = content.data.into_owned().into_response();
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(content.metadata.mimetype()) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    secured(response, caching)
}

fn secured(response: Response, caching: &'static str) -> Response {
    let mut response = sipmba_runtime::browser::page(response, POLICY, caching);
    response.headers_mut().insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pages_carry_the_policy_and_are_never_cached() {
        for path in ["/", "/things/0b6e4f", "/rules", "/session"] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let h = response.headers();
            assert_eq!(h[header::CONTENT_TYPE], "text/html", "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let policy = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(
                policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'self'")
            );
            assert!(!policy.contains("unsafe"), "{policy}");
            assert!(h.get(header::SET_COOKIE).is_none());
        }
    }

    #[tokio::test]
    async fn a_known_etag_is_not_sent_again_and_a_missing_asset_is_a_404() {
        let first = get("/", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::CACHE_CONTROL], "no-store");
        let changed = get("/", Some("\"another\"")).await;
        assert_eq!(changed.status(), StatusCode::OK);
        let missing = get("/assets/none.js", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            get("/elsewhere", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
