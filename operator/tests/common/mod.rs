//! The mocked Kubernetes API server of the reconciler scenarios (tower-test): it plays the
//! expected requests in order, asserting each one's method, path and field manager, and answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub const NS: &str = "iot";

/// A client whose every request goes to the returned handle.
pub fn mock_client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// What the mocked API server answers.
pub enum Reply {
    /// 404 NotFound.
    Missing,
    /// This object.
    Object(Value),
    /// The request's own body (what a create or an apply returns).
    Echo,
    /// An error status.
    Fail(u16),
}

/// One request the reconciler must make, and the answer.
pub struct Expect {
    pub method: &'static str,
    pub path: String,
    pub reply: Reply,
    /// A server-side apply (with the operator's field manager); false for JSON patches.
    pub apply: bool,
}

pub fn get(path: String, reply: Reply) -> Expect {
    Expect {
        method: "GET",
        path,
        reply,
        apply: false,
    }
}

pub fn apply(path: String) -> Expect {
    Expect {
        method: "PATCH",
        path,
        reply: Reply::Echo,
        apply: true,
    }
}

pub fn create(path: String) -> Expect {
    Expect {
        method: "POST",
        path,
        reply: Reply::Echo,
        apply: false,
    }
}

pub fn core(kind: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{kind}/{name}")
}

pub fn apps(kind: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/{kind}/{name}")
}

pub fn policy(name: &str) -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{name}")
}

pub fn status_body(code: u16, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code,
    }))
    .unwrap()
}

/// Plays `expected` and returns every request `(method, path?query, body)` seen.
pub async fn serve(mut handle: Handle, expected: Vec<Expect>) -> Vec<(String, String, Value)> {
    let mut seen = Vec::new();
    for (i, expect) in expected.into_iter().enumerate() {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!("request {i} ({} {}) never came", expect.method, expect.path)
            })
            .expect("the client is gone");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        assert_eq!(
            (method.as_str(), path.as_str()),
            (expect.method, expect.path.as_str()),
            "request {i}: {uri}"
        );
        if expect.apply {
            assert!(
                uri.contains("fieldManager=sipmba-operator") && uri.contains("force=true"),
                "server-side apply with the operator's field manager: {uri}"
            );
        }
        let response = match expect.reply {
            Reply::Missing => Response::builder()
                .status(404)
                .body(Body::from(status_body(404, "NotFound"))),
            Reply::Fail(code) => Response::builder()
                .status(code)
                .body(Body::from(status_body(code, "InternalError"))),
            Reply::Object(object) => {
                Response::builder().body(Body::from(serde_json::to_vec(&object).unwrap()))
            }
            Reply::Echo => Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())),
        };
        send.send_response(response.unwrap());
        seen.push((method, uri, body));
    }
    // Nothing more.
    let extra = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen
}
