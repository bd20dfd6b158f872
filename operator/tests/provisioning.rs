//! The Thing provisioning path against the real services and a real agent, each a process: a
//! `sipmba server --dev` platform (Objects, sso, Collect) and a `sipmba-edge` agent with its
//! provisioning endpoint. The operator registers the thing, gets its credential and token,
//! pushes them to the agent (whose Collect session then works), rotates them, and at the end
//! revokes the token and deregisters the thing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use sipmba_operator::provisioning::{self, Operator, PlatformAccess};
use sipmba_proto::v1 as pb;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// A workspace binary, built next to this test (`.ci/test` builds every binary first).
fn bin(name: &str) -> PathBuf {
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

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether Collect accepts `token` (a Publish of a reading it has already: accepted, dropped).
async fn collect_accepts(url: &str, token: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reading = pb::PublishRequest {
        readings: vec![pb::Reading {
            seq: 1,
            device_time: Some(std::time::SystemTime::now().into()),
            metrics: vec![pb::Metric {
                name: "probe".into(),
                value: Some(pb::metric::Value::Number(1.0)),
                unit: String::new(),
            }],
            ..Default::default()
        }],
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![reading]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    pb::collect_service_client::CollectServiceClient::new(channel)
        .publish(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_is_registered_provisioned_rotated_revoked_and_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "operator-secret-0123456789-abcdefghijklmnopqrstuv";
    std::fs::write(dir.path().join("operator.secret"), secret).unwrap();
    std::fs::write(
        dir.path().join("sipmba.toml"),
        "[[sso.service_clients]]\nid = \"sipmba-operator\"\nsecret_file = \"operator.secret\"\n\
         scopes = [\"objects:admin\", \"objects:authorize\", \"things:read\", \"things:write\", \"tokens:admin\"]\n",
    )
    .unwrap();
    let port = sipmba_testkit::free_port_pair();
    let url = format!("http://127.0.0.1:{port}");
    let _platform = spawn(
        &bin("sipmba"),
        &[
            "server",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            "sipmba.toml",
        ],
        dir.path(),
    );
    // The dev platform's admin user owns the thing.
    let state = dir.path().join(".sipmba/dev-state.json");
    let owner = until("the dev platform's admin user", 60, || async {
        let text = std::fs::read_to_string(&state).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        Uuid::parse_str(value["admin"].as_str()?).ok()
    })
    .await;

    // The agent, with its provisioning endpoint (plaintext: HMAC proofs only).
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let enrollment = b"enrollment-secret-of-greenhouse-7";
    std::fs::write(agent_dir.join("enrollment.secret"), enrollment).unwrap();
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
    let _agent = spawn(
        &bin("sipmba-edge"),
        &["run", "--config", "agent.toml"],
        &agent_dir,
    );
    let endpoint = format!("http://127.0.0.1:{agent_port}");

    let operator = Operator::new(
        &PlatformAccess {
            sso_url: url.clone(),
            objects_url: url.clone(),
            ca: None,
        },
        secret,
    )
    .unwrap();
    // Registered once: a second registration finds the same thing.
    let labels = BTreeMap::from([("site".to_owned(), "north".to_owned())]);
    let thing = until("the platform to register things", 60, || async {
        operator.register(owner, "greenhouse-7", &labels).await.ok()
    })
    .await;
    assert_eq!(
        operator
            .register(owner, "greenhouse-7", &labels)
            .await
            .unwrap(),
        thing
    );

    // Credential, token, delivery: the agent's Collect session works with it.
    let (client_id, thing_secret) = operator.credential(thing).await.unwrap();
    let token = operator
        .thing_token(&client_id, &thing_secret)
        .await
        .unwrap();
    let provision = |token: &provisioning::ThingToken| pb::ProvisionRequest {
        thing: Some(pb::ThingId {
            value: thing.to_string(),
        }),
        access_token: token.access_token.clone(),
        token_expires: Some(token.expires),
        collect_endpoint: url.clone(),
        client_id: client_id.clone(),
        ..Default::default()
    };
    let accepted = until("the agent's endpoint", 30, || async {
        provisioning::deliver(&endpoint, enrollment, None, provision(&token))
            .await
            .ok()
    })
    .await;
    assert!(accepted.accepted);
    let uploaded = until("an upload with the delivered token", 30, || async {
        let status = provisioning::agent_status(&endpoint, enrollment, None)
            .await
            .ok()?;
        (status.last_acked_seq >= 2).then_some(status.last_acked_seq)
    })
    .await;

    // A wrong enrollment secret is refused.
    let forged = provisioning::deliver(&endpoint, b"not the secret", None, provision(&token)).await;
    assert!(forged.is_err(), "a forged proof is refused");

    // Rotation: a new credential and token replace the old; the agent goes on uploading.
    let (_, rotated_secret) = operator.credential(thing).await.unwrap();
    assert!(
        operator
            .thing_token(&client_id, &thing_secret)
            .await
            .is_err(),
        "the old secret stops working at once"
    );
    let rotated = operator
        .thing_token(&client_id, &rotated_secret)
        .await
        .unwrap();
    assert!(
        provisioning::deliver(&endpoint, enrollment, None, provision(&rotated))
            .await
            .unwrap()
            .accepted
    );
    until("uploads with the rotated token", 30, || async {
        let status = provisioning::agent_status(&endpoint, enrollment, None)
            .await
            .ok()?;
        (status.token_expires == Some(rotated.expires) && status.last_acked_seq > uploaded + 1)
            .then_some(())
    })
    .await;
    collect_accepts(&url, &rotated.access_token).await.unwrap();

    // Deletion: the token is refused within a second or so, and the thing is gone (twice: a
    // thing already gone counts as deregistered).
    operator.revoke(thing).await.unwrap();
    until("Collect to refuse the revoked token", 10, || async {
        match collect_accepts(&url, &rotated.access_token).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => Some(()),
            _ => None,
        }
    })
    .await;
    operator.deregister(thing).await.unwrap();
    operator.deregister(thing).await.unwrap();
    assert!(
        operator
            .thing_token(&client_id, &rotated_secret)
            .await
            .is_err(),
        "a deregistered thing gets no token"
    );
}
