//! One process per service: bad invocations, waiting for the database, TLS on every listener.

use super::*;

#[tokio::test]
async fn bad_invocations_exit_with_a_message_that_names_the_problem() {
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "processing",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "control",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "control",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
        "--brokers",
        "127.0.0.1:9",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("control.client_secret_file"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "collect",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:1/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "sso",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sso.objects_url"), "{err}");

    let base = [
        "server",
        "--target",
        "objects",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:1/jwks",
    ];
    let (code, err) = run_to_end(&base).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.tls_cert") && err.contains("plaintext"),
        "{err}"
    );

    let mut args = base.to_vec();
    args.extend(["--plaintext", "--listen", "not-an-address"]);
    let (code, err) = run_to_end(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.listen") && err.contains("SIPMBA_LISTEN"),
        "{err}"
    );

    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "objects",
        "--plaintext",
        "--database-url",
        "mysql://x",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("database.url"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sipmba.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\ntypo = 1\n").unwrap();
    let (code, err) = run_to_end(&["server", "--config", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("typo"), "{err}");

    let (code, err) = run_to_end(&["server", "--target", "nonsense"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nonsense"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_waits_for_its_database_then_serves_reflection_metrics_and_stops_on_sigterm() {
    sipmba_testkit::init_logs();
    let db = TestDb::new(Backend::Postgres).await.unwrap();
    let issuer = TestIssuer::new();
    let (jwks_url, _jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    // The database is reached through a port where nothing listens yet.
    let db_port = free_port();
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{db_port}"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--plaintext",
            "--listen",
            &listen,
            "--database-url",
            &url,
            "--jwks-url",
            &jwks_url,
            "--issuer",
            &issuer.issuer,
            "--audience",
            &issuer.audience,
        ],
        dir.path(),
    );
    let channel = connect(Endpoint::from_shared(format!("http://{listen}")).unwrap()).await;
    for service in ["", "sipmba.v1.UserService", "sipmba.v1.ThingService"] {
        assert_eq!(
            health(&channel, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let ready = http_get(listen.parse().unwrap(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");

    // The database comes up: health follows, without a restart.
    let proxy = TcpListener::bind(("127.0.0.1", db_port)).await.unwrap();
    tokio::spawn(forward(proxy, "127.0.0.1:5432".parse().unwrap()));
    wait_for_health(&channel, "sipmba.v1.UserService", ServingStatus::Serving).await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);

    // A real call with a real token.
    let request = with_token(
        &issuer.admin_token(),
        pb::CreateUserRequest {
            username: "proc-root".into(),
            parent: None,
        },
    );
    let user = pb::user_service_client::UserServiceClient::new(channel.clone())
        .create_user(request)
        .await
        .expect("create user")
        .into_inner();
    assert_eq!(user.username, "proc-root");

    // Reflection lists the services with no proto files at hand.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let responses = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    let Some(Ok(first)) = responses.first() else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = &first.message_response else {
        panic!("unexpected reflection answer {first:?}")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "sipmba.v1.UserService",
        "sipmba.v1.ThingService",
        "sipmba.v1.ChannelService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    // A change-feed stream is open when the shutdown starts: it must end cleanly, not break.
    let watch = with_token(
        &issuer.admin_token(),
        pb::WatchEventsRequest { after_sequence: 0 },
    );
    let mut events = pb::event_service_client::EventServiceClient::new(channel.clone())
        .watch_events(watch)
        .await
        .unwrap()
        .into_inner();

    // Metrics over plain HTTP/1.1 on the same port, with bounded labels.
    let metrics = http_get(listen.parse().unwrap(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(
            r#"sipmba_grpc_requests_total{method="/sipmba.v1.UserService/CreateUser",code="0"} 1"#
        ),
        "{metrics}"
    );

    sigterm_and_wait(child).await;
    let end = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream ends with the server");
    assert!(end.is_none(), "a clean end of stream, got {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_spoken_on_every_listener_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--listen",
            &listen,
            "--tls-cert",
            "tls.crt",
            "--tls-key",
            "tls.key",
            "--database-url",
            "sqlite://objects.db",
            "--jwks-url",
            "http://127.0.0.1:1/jwks",
        ],
        dir.path(),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{listen}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = connect(endpoint).await;
    wait_for_health(&channel, "sipmba.v1.UserService", ServingStatus::Serving).await;

    // Plaintext HTTP/2 is not answered.
    let plain = Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "plaintext must not be served when TLS is configured"
    );

    // A client without HTTP/2 (a probe, a scraper) still gets /healthz over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            cert.cert.der().to_vec(),
        ))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(&listen).await.unwrap();
    let mut stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS with HTTP/1.1 only");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
        "{out}"
    );

    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_call_each_other_over_tls_trusting_the_platform_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = sipmba_testkit::test_ca();
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    // Another CA, which signed nothing here.
    let (other_ca, _, _) = sipmba_testkit::test_ca();
    std::fs::write(dir.path().join("other-ca.crt"), &other_ca).unwrap();
    for (file, ca) in [("tls.toml", "ca.crt"), ("wrong-ca.toml", "other-ca.crt")] {
        std::fs::write(
            dir.path().join(file),
            format!(
                "[server]\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\npeer_ca_file = \"{ca}\"\n"
            ),
        )
        .unwrap();
    }
    let (objects_addr, sso_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let sso_url = format!("https://{sso_addr}");
    let jwks = format!("{sso_url}/.well-known/jwks.json");
    // Objects verifies tokens with sso's keys, fetched over https://.
    let objects = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--config",
            "tls.toml",
            "--listen",
            &objects_addr,
            "--database-url",
            "sqlite://objects.db?mode=rwc",
            "--jwks-url",
            &jwks,
            "--issuer",
            &sso_url,
        ],
        dir.path(),
    );
    // sso creates users in Objects over https://.
    let objects_url = format!("https://{objects_addr}");
    // sso, with the CA its configuration file trusts.
    let start_sso = |config: &str, sso_addr: &str| {
        spawn(
            &[
                "server",
                "--target",
                "sso",
                "--config",
                config,
                "--listen",
                sso_addr,
                "--database-url",
                "sqlite://sso.db?mode=rwc",
                "--objects-url",
                &objects_url,
                "--issuer",
                &sso_url,
                "--open-registration",
            ],
            dir.path(),
        )
    };
    let sso = start_sso("tls.toml", &sso_addr);
    let tls = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca));
    let channel = |addr: &str| {
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
    };
    let sso_channel = connect(channel(&sso_addr)).await;
    let objects_channel = connect(channel(&objects_addr)).await;
    wait_for_health(&sso_channel, "", ServingStatus::Serving).await;
    wait_for_health(&objects_channel, "", ServingStatus::Serving).await;

    let registered = pb::account_service_client::AccountServiceClient::new(sso_channel.clone())
        .register_user(pb::RegisterUserRequest {
            username: "tls-user".into(),
            password: "tls password 1".into(),
        })
        .await
        .expect("sso reaches Objects over TLS")
        .into_inner();
    let token = pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .token(pb::TokenRequest {
            grant: Some(pb::token_request::Grant::Password(pb::PasswordGrant {
                username: "tls-user".into(),
                password: "tls password 1".into(),
                scope: String::new(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let me = pb::user_service_client::UserServiceClient::new(objects_channel)
        .get_user(with_token(
            &token,
            pb::GetUserRequest {
                id: registered.user.clone(),
            },
        ))
        .await
        .expect("Objects verifies the token with keys it fetched from sso over TLS")
        .into_inner();
    assert_eq!(me.username, "tls-user");
    sigterm_and_wait(sso).await;

    // An sso trusting another CA cannot reach Objects: registration fails, nothing half-made.
    let sso_addr = format!("127.0.0.1:{}", free_port());
    let wrong = start_sso("wrong-ca.toml", &sso_addr);
    let wrong_channel = connect(channel(&sso_addr)).await;
    wait_for_health(&wrong_channel, "", ServingStatus::Serving).await;
    let refused = pb::account_service_client::AccountServiceClient::new(wrong_channel)
        .register_user(pb::RegisterUserRequest {
            username: "untrusted".into(),
            password: "tls password 2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    sigterm_and_wait(wrong).await;
    sigterm_and_wait(objects).await;

    // An https:// service URL without the platform CA is refused at start, naming the setting.
    let out = Command::new(BIN)
        .args([
            "server",
            "--target",
            "sso",
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
            "--database-url",
            "sqlite://x.db?mode=rwc",
            "--objects-url",
            &objects_url,
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.peer_ca_file"), "{stderr}");
}
