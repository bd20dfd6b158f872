//! `sipmba server` on an existing Kafka cluster that wants TLS and SASL (SASL_SSL with
//! SCRAM-SHA-512), configured as an operator of such a cluster would: the readings of a thing
//! reach the log; a wrong password stops the start with a message naming the setting and the
//! user, and never the password.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use sipmba_queue::{Mechanism, Sasl, Security};
use sipmba_testkit::{KafkaCluster, TestIssuer, serve_jwks};

mod common;
use common::*;

const PASSWORD: &str = "log password 7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_streams_into_a_sasl_ssl_log_and_a_wrong_password_stops_it_clearly() {
    let (cluster, ca) = KafkaCluster::start_sasl_ssl("sipmba", PASSWORD)
        .await
        .unwrap();
    let security = Security {
        tls: Some(Security::tls_config(ca.as_bytes(), None).unwrap()),
        sasl: Some(Sasl {
            mechanism: Mechanism::ScramSha512,
            username: "sipmba".into(),
            password: PASSWORD.into(),
        }),
    };
    let broker = cluster.bootstrap[0].clone();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kafka-ca.crt"), &ca).unwrap();
    std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(dir.path().join("wrong-password"), "not it\n").unwrap();
    for (file, password) in [
        ("sipmba.toml", "password"),
        ("wrong.toml", "wrong-password"),
    ] {
        std::fs::write(
            dir.path().join(file),
            format!(
                "[queue]\nbrokers = [\"{broker}\"]\nreplication_factor = 1\n\
                 [queue.tls]\nca_file = \"kafka-ca.crt\"\n\
                 [queue.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"sipmba\"\n\
                 password_file = \"{password}\"\n"
            ),
        )
        .unwrap();
    }
    let issuer = TestIssuer::new();
    let (jwks_url, _jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = |config: &'static str| {
        [
            "server",
            "--target",
            "collect",
            "--plaintext",
            "--config",
            config,
            "--listen",
            &listen,
            "--database-url",
            "sqlite://collect.db?mode=rwc",
            "--jwks-url",
            &jwks_url,
            "--issuer",
            &issuer.issuer,
        ]
        .map(str::to_owned)
    };

    // The right password: collect serves, and a thing's readings reach the log.
    let collect = spawn(
        &args("sipmba.toml").each_ref().map(String::as_str),
        dir.path(),
    );
    let thing = uuid::Uuid::new_v4();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{listen}")).unwrap();
    let breaks = stream_through_breaks(endpoint, thing_token(&issuer, thing), 500, |_| {}).await;
    assert!(breaks.is_empty(), "{breaks:?}");
    let queue = sipmba_queue::Queue::connect_secure(std::slice::from_ref(&broker), "", security)
        .await
        .unwrap();
    assert_eq!(
        telemetry_seqs(&queue, thing, 500).await,
        (1..=500).collect()
    );
    sigterm_and_wait(collect).await;

    // A wrong password: exit 2 at once, naming the setting and the user, never a password.
    let wrong = args("wrong.toml");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(&wrong)
            .current_dir(dir.path())
            .output(),
    )
    .await
    .expect("a refused password stops the start")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("queue: ")
            && stderr.contains("refused SASL SCRAM-SHA-512 authentication as sipmba"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not it") && !stderr.contains(PASSWORD),
        "{stderr}"
    );
}
