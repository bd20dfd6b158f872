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

// ----- the real platform and agent, as processes ---------------------------------------------

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

/// A workspace binary, built next to this test (`.ci/test` builds every binary first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace)",
        path.display()
    );
    path
}

fn spawn(program: &Path, args: &[&str], dir: &Path) -> Child {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The operator's client secret in the platform.
pub const OPERATOR_SECRET: &str = "operator-secret-0123456789-abcdefghijklmnopqrstuv";
/// The agent's enrollment secret.
pub const ENROLLMENT: &str = "enrollment-secret-of-greenhouse-7";

/// `sipmba server --dev` (with the `sipmba-operator` service client) and a `sipmba-edge`
/// agent with its provisioning endpoint, both running.
pub struct Stack {
    /// The platform's address.
    pub url: String,
    /// The dev platform's admin user: the things' owner.
    pub owner: uuid::Uuid,
    /// The agent's provisioning endpoint.
    pub endpoint: String,
    _platform: sipmba_testkit::DevServer,
    _agent: Child,
    _dir: tempfile::TempDir,
}

/// Starts the stack and waits until the platform registers things and the agent listens.
pub async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("operator.secret"), OPERATOR_SECRET).unwrap();
    std::fs::write(
        dir.path().join("sipmba.toml"),
        "[[sso.service_clients]]\nid = \"sipmba-operator\"\nsecret_file = \"operator.secret\"\n\
         scopes = [\"objects:admin\", \"objects:authorize\", \"things:read\", \"things:write\", \"tokens:admin\"]\n",
    )
    .unwrap();
    let platform = sipmba_testkit::DevServer::start(
        &bin("sipmba"),
        sipmba_testkit::DevOptions {
            dir: Some(dir.path().to_path_buf()),
            args: vec!["--config".into(), "sipmba.toml".into()],
            log: Some("warn".into()),
            ..Default::default()
        },
    );
    let url = platform.url.clone();
    let owner = platform.admin().await;
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(agent_dir.join("enrollment.secret"), ENROLLMENT).unwrap();
    let agent_port = sipmba_testkit::free_port_pair();
    std::fs::write(
        agent_dir.join("agent.toml"),
        format!(
            "state_dir = \"state\"\nsample_interval_secs = 1\nupload_interval_secs = 1\nmax_backoff_secs = 2\n\n\
             [provisioning]\nlisten = \"127.0.0.1:{agent_port}\"\nenrollment_secret_file = \"enrollment.secret\"\n\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nmin = 20.0\nmax = 25.0\n"
        ),
    )
    .unwrap();
    let agent = spawn(
        &bin("sipmba-edge"),
        &["run", "--config", "agent.toml"],
        &agent_dir,
    );
    sipmba_testkit::eventually("the agent's endpoint", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", agent_port))
            .await
            .ok()
    })
    .await;
    let stack = Stack {
        url,
        owner,
        endpoint: format!("http://127.0.0.1:{agent_port}"),
        _platform: platform,
        _agent: agent,
        _dir: dir,
    };
    // The platform takes registrations once its services are up.
    let operator = stack.operator();
    sipmba_testkit::eventually(
        "the platform to register things",
        Duration::from_secs(60),
        || async {
            operator
                .register(owner, "warm-up", &Default::default())
                .await
                .ok()
        },
    )
    .await;
    stack
}

impl Stack {
    /// The operator on this platform.
    pub fn operator(&self) -> sipmba_operator::provisioning::Operator {
        sipmba_operator::provisioning::Operator::new(&self.access(), OPERATOR_SECRET).unwrap()
    }

    /// Where the platform answers.
    pub fn access(&self) -> sipmba_operator::provisioning::PlatformAccess {
        sipmba_operator::provisioning::PlatformAccess {
            sso_url: self.url.clone(),
            objects_url: self.url.clone(),
            ca: None,
        }
    }
}
