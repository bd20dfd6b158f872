//! sso's HTTP endpoints with untrusted requests: a form body and an `Authorization` header sent
//! to the token, introspection, revocation and login endpoints of a real sso (on an in-memory
//! SQLite database, through its axum router). Every answer is a client error a person can act
//! on or a success that does not hand out a token — never a server error or a panic.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use std::sync::OnceLock;

use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use sipmba_auth::Revocations;
use sipmba_sso::{Sso, SsoConfig};
use tower::ServiceExt;

struct State {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async {
            let db = sipmba_runtime::db::connect("sqlite::memory:", 1)
                .await
                .unwrap();
            sipmba_objects::migrate(&db).await.unwrap();
            sipmba_sso::migrate(&db).await.unwrap();
            let mut config = SsoConfig::new("http://127.0.0.1:9", "sipmba", "http://127.0.0.1:9");
            // Cheap hashing: the fuzzer is after parsing, not argon2.
            config.password_cost = sipmba_sso::secrets::PasswordCost {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            };
            let sso = Sso::start(db, config, Revocations::default())
                .await
                .unwrap();
            sipmba_sso::router(sso)
        });
        State { runtime, router }
    })
}

const ROUTES: [(&str, Method); 5] = [
    ("/oauth2/token", Method::POST),
    ("/oauth2/introspect", Method::POST),
    ("/oauth2/revoke", Method::POST),
    ("/oauth2/authorize", Method::POST),
    ("/oauth2/authorize", Method::GET),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (path, method) = ROUTES[usize::from(selector) % ROUTES.len()].clone();
    // The Authorization header's value, a NUL, then the body (a query string for GET).
    let (authorization, body) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut request = Request::builder().method(method.clone());
    request = if method == Method::GET {
        let Ok(query) = std::str::from_utf8(body) else {
            return;
        };
        match http::Uri::try_from(format!("{path}?{query}")) {
            Ok(uri) => request.uri(uri),
            Err(_) => return, // not a request line a client can send
        }
    } else {
        request
            .uri(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
    };
    if let Some(value) = authorization {
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            return; // not a header a client can send
        };
        request = request.header(header::AUTHORIZATION, value);
    }
    let body = if method == Method::GET {
        Vec::new()
    } else {
        body.to_vec()
    };
    let request = request.body(axum::body::Body::from(body)).unwrap();
    let state = state();
    let (status, bytes) = state.runtime.block_on(async {
        let response = state.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    });
    assert!(
        !status.is_server_error(),
        "{status} for {path}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if path == "/oauth2/token" {
        // No account or client exists: nothing may be issued.
        assert!(
            !status.is_success(),
            "a token issued: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status != StatusCode::TOO_MANY_REQUESTS {
            let answer: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
            let code = answer["error"].as_str().unwrap_or_default();
            assert!(
                [
                    "invalid_request",
                    "invalid_client",
                    "invalid_grant",
                    "unsupported_grant_type",
                    "invalid_scope",
                    "unauthorized_client",
                ]
                .contains(&code),
                "{answer}"
            );
        }
    }
});
