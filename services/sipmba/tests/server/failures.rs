//! Services killed, restarted or revoked mid-stream: nothing acknowledged is lost, revocation
//! crosses processes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_sso_is_refused_by_objects_in_another_process_within_a_second() {
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    let db = TestDb::new(Backend::Postgres).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sso_port, objects_port) = (free_port(), free_port());
    let sso_addr = format!("127.0.0.1:{sso_port}");
    let objects_addr = format!("127.0.0.1:{objects_port}");
    let issuer = format!("http://{sso_addr}");
    let config = dir.path().join("sipmba.toml");
    std::fs::write(&config, broker.queue_toml()).unwrap();
    let config = config.to_str().unwrap();
    let objects = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--plaintext",
            "--config",
            config,
            "--listen",
            &objects_addr,
            "--database-url",
            &db.url,
            "--issuer",
            &issuer,
            "--jwks-url",
            &format!("{issuer}/.well-known/jwks.json"),
        ],
        dir.path(),
    );
    let sso = spawn(
        &[
            "server",
            "--target",
            "sso",
            "--plaintext",
            "--config",
            config,
            "--listen",
            &sso_addr,
            "--database-url",
            &db.url,
            "--objects-url",
            &format!("http://{objects_addr}"),
            "--open-registration",
        ],
        dir.path(),
    );
    let objects_channel =
        connect(Endpoint::from_shared(format!("http://{objects_addr}")).unwrap()).await;
    let sso_channel = connect(Endpoint::from_shared(issuer.clone()).unwrap()).await;
    wait_for_health(&objects_channel, "", ServingStatus::Serving).await;
    wait_for_health(&sso_channel, "", ServingStatus::Serving).await;

    let user = pb::account_service_client::AccountServiceClient::new(sso_channel.clone())
        .register_user(pb::RegisterUserRequest {
            username: "two-proc".into(),
            password: "two process password".into(),
        })
        .await
        .expect("open registration")
        .into_inner()
        .user
        .unwrap();
    let token = pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .token(pb::TokenRequest {
            grant: Some(pb::token_request::Grant::Password(pb::PasswordGrant {
                username: "two-proc".into(),
                password: "two process password".into(),
                scope: String::new(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut users = pb::user_service_client::UserServiceClient::new(objects_channel.clone());
    let get = || {
        with_token(
            &token,
            pb::GetUserRequest {
                id: Some(user.clone()),
            },
        )
    };
    assert_eq!(
        users.get_user(get()).await.unwrap().into_inner().username,
        "two-proc"
    );

    pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .revoke(pb::RevokeRequest {
            token: token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    loop {
        match users.get_user(get()).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                assert!(status.message().contains("revoked"), "{status:?}");
                break;
            }
            other => assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "objects still accepts the token a second after its revocation: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sigterm_and_wait(sso).await;
    sigterm_and_wait(objects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_killed_mid_stream_loses_no_acknowledged_reading() {
    let p = CollectProcess::new(sipmba_testkit::TestBroker::start().await.unwrap()).await;
    let mut collect = p.spawn();
    let total = 20_000;
    let (thing, sender, progress) = p.stream(total);
    // SIGKILL collect in the middle of the stream, then start it again.
    until_acked(&progress, total / 3).await;
    collect.kill().await.unwrap();
    let killed_at = progress.acked();
    let collect = p.spawn();
    let breaks = sender.await.unwrap();
    assert!(!breaks.is_empty(), "the kill broke the session");
    assert!(killed_at < total, "killed before the end");
    let seqs = p.logged(thing, total).await;
    assert_eq!(
        seqs,
        (1..=total).collect(),
        "every reading, acknowledged before the kill or after"
    );
    sigterm_and_wait(collect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_stream_loses_no_acknowledged_reading() {
    let mut p = CollectProcess::new(sipmba_testkit::TestBroker::start_own().await.unwrap()).await;
    let collect = p.spawn();
    let total = 20_000;
    let (thing, sender, progress) = p.stream(total);
    until_acked(&progress, total / 3).await;
    // SIGKILL the broker and bring it back on the same storage.
    p.broker.kill();
    tokio::time::sleep(Duration::from_millis(300)).await; // the broker stays down a moment
    p.broker.restart().await.unwrap();
    sender.await.unwrap();
    let seqs = p.logged(thing, total).await;
    assert_eq!(seqs, (1..=total).collect());
    sigterm_and_wait(collect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_killed_mid_stream_stores_every_reading_once() {
    let p = CollectProcess::new(sipmba_testkit::TestBroker::start().await.unwrap()).await;
    let args = p.processing_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let collect = p.spawn();
    let dir = p.dir.path();
    let mut processing = spawn(&args, dir);

    // The paper's broken-connection test (Fig. 8), with the consumer killed rather than stopped.
    let total = 100_000;
    let (thing, sender, _progress) = p.stream(total);
    let stored = async |at_least: u64| p.stored(thing, at_least).await;
    // SIGKILL processing once it has stored a third, while readings keep arriving.
    stored(total / 3).await;
    processing.kill().await.unwrap();
    let killed_at = stored(0).await;
    assert!(
        killed_at < total,
        "killed before the end ({killed_at} stored)"
    );
    let processing = spawn(&args, dir);
    sender.await.unwrap();
    assert_eq!(stored(total).await, total, "every reading stored");
    // Nothing stored twice: the count stays put.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(total).await, total, "no reading stored twice");
    sigterm_and_wait(processing).await;
    sigterm_and_wait(collect).await;
}
