//! The operator provisions and rotates the agent's credentials; TLS to collect is verified against
//! the provisioned CA.

use super::*;

/// An agent's provisioning endpoint on loopback, and a client of it.
async fn provisioning(
    agent: &Agent,
    secret_file: &std::path::Path,
    tls: Option<(String, String)>,
) -> pb::edge_service_client::EdgeServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service =
        sipmba_edge::provision::Provisioning::new(agent.clone(), secret_file, tls.is_some())
            .unwrap();
    let ca = tls.as_ref().map(|(cert, _)| cert.clone());
    tokio::spawn(sipmba_edge::provision::serve(service, listener, tls));
    let endpoint = match ca {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        Some(ca) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )
            .unwrap(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(c) => return pb::edge_service_client::EdgeServiceClient::new(c),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn signed(mut r: pb::ProvisionRequest, secret: &[u8]) -> pb::ProvisionRequest {
    r.enrollment_proof =
        sipmba_edge::provision::hmac_proof(secret, &sipmba_edge::provision::provision_message(&r));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_provisions_and_rotates_credentials_without_a_restart() {
    let platform = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.upload_interval = Duration::from_secs(1);
    config.max_backoff = Duration::from_secs(1);
    let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
    let secret = b"enrollment-secret-0123456789abcdef";
    std::fs::write(dir.path().join("enrollment.secret"), secret).unwrap();
    let mut edge = provisioning(&agent, &dir.path().join("enrollment.secret"), None).await;
    let thing = Uuid::new_v4();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // A token that expires in 3 s, then its replacement.
    let token = |exp: i64| {
        let mut claims = platform.issuer.claims(
            Kind::Thing,
            thing,
            &[scopes::TELEMETRY_WRITE, scopes::COMMANDS_READ],
        );
        claims.exp = exp;
        platform.issuer.sign(&claims.with_owner(Uuid::new_v4()))
    };
    let request = |token: String, exp: i64| pb::ProvisionRequest {
        thing: Some(pb::ThingId {
            value: thing.to_string(),
        }),
        access_token: token,
        token_expires: Some(prost_types::Timestamp {
            seconds: exp,
            nanos: 0,
        }),
        collect_endpoint: platform.url.clone(),
        client_id: format!("thing-{thing}"),
        ..Default::default()
    };
    let first = request(token(now + 3), now + 3);

    // Wrong proofs.
    let mut forged = first.clone();
    forged.enrollment_proof = sipmba_edge::provision::hmac_proof(
        b"not-the-enrollment-secret",
        &sipmba_edge::provision::provision_message(&first),
    );
    let e = edge.provision(forged).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut tampered = signed(first.clone(), secret);
    tampered.collect_endpoint = "http://attacker.example:1".into();
    assert_eq!(
        edge.provision(tampered).await.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "the proof covers every field"
    );
    let mut plain = first.clone();
    plain.enrollment_proof = format!("secret:{}", std::str::from_utf8(secret).unwrap());
    let e = edge.provision(plain).await.unwrap_err();
    assert!(e.message().contains("TLS"), "{e:?}");
    let mut bad = signed(
        pb::ProvisionRequest {
            collect_endpoint: "collect:443".into(),
            ..first.clone()
        },
        secret,
    );
    assert_eq!(
        edge.provision(bad.clone()).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    bad = signed(
        pb::ProvisionRequest {
            client_secret: Some("s".into()),
            ..first.clone()
        },
        secret,
    );
    assert!(
        edge.provision(bad)
            .await
            .unwrap_err()
            .message()
            .contains("token_endpoint")
    );

    // Provisioned: the agent uploads.
    let accepted = edge
        .provision(signed(first.clone(), secret))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted.accepted);
    assert!(
        !edge
            .provision(signed(first.clone(), secret))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        "the same request again changes nothing"
    );
    let uploader = tokio::spawn(agent.clone().uploader());
    for _ in 0..3 {
        agent.sample().await.unwrap();
    }
    platform.logged(thing, 3).await;
    // The first token expires: uploads fail, readings wait in the outbox.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for _ in 0..3 {
        agent.sample().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent.outbox.depth().unwrap(),
        3,
        "refused with the expired token"
    );
    // A stale request is refused; the rotation is taken at once, without a restart.
    let second = request(token(now + 3600), now + 3600);
    let stale = request(token(now + 1), now + 1);
    assert_eq!(
        edge.provision(signed(stale, secret))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::FailedPrecondition
    );
    assert!(
        edge.provision(signed(second, secret))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    assert_eq!(platform.logged(thing, 6).await, (1..=6).collect::<Vec<_>>());

    // Status, with a proof over the request time.
    let status_request = |seconds: i64| {
        let mut r = pb::GetStatusRequest {
            enrollment_proof: String::new(),
            request_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        };
        r.enrollment_proof =
            sipmba_edge::provision::hmac_proof(secret, &sipmba_edge::provision::status_message(&r));
        r
    };
    let status = edge
        .get_status(status_request(now + 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.thing.unwrap().value, thing.to_string());
    assert_eq!(status.last_acked_seq, 6);
    assert_eq!(status.outbox_depth, 0);
    assert!(status.last_upload.is_some());
    assert_eq!(
        edge.get_status(status_request(now - 3600))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated,
        "a replayed status request is refused"
    );
    uploader.abort();

    // Over TLS the secret itself is accepted.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let mut tls_edge = provisioning(
        &agent,
        &dir.path().join("enrollment.secret"),
        Some((cert.cert.pem(), cert.signing_key.serialize_pem())),
    )
    .await;
    let mut by_secret = request(token(now + 7200), now + 7200);
    by_secret.enrollment_proof = format!("secret:{}", std::str::from_utf8(secret).unwrap());
    assert!(
        tls_edge
            .provision(by_secret)
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_over_tls_is_verified_against_the_provisioned_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let platform = Platform::start_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TestIssuer::new(),
        Settings::default(),
        Some(sipmba_runtime::TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        }),
    )
    .await;
    assert!(platform.url.starts_with("https://"));
    let config = config(&dir.path().join("state"));
    let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
    agent.sample().await.unwrap();
    let thing = Uuid::new_v4();
    let creds = |ca: Option<String>| pb::ProvisionRequest {
        thing: Some(pb::ThingId {
            value: thing.to_string(),
        }),
        access_token: platform.thing_token(thing),
        collect_endpoint: platform.url.clone(),
        ca_certificate_pem: ca,
        ..Default::default()
    };
    // Without the platform CA an https endpoint is not even tried.
    let e = agent.session(&creds(None)).await.unwrap_err();
    assert!(e.to_string().contains("platform CA"), "{e}");
    // Another CA: the server is not trusted.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let e = agent
        .session(&creds(Some(other.cert.pem())))
        .await
        .unwrap_err();
    assert!(
        matches!(e, sipmba_edge::agent::SessionError::Unreachable(_)),
        "{e}"
    );
    assert_eq!(agent.outbox.depth().unwrap(), 1, "nothing was sent");
    // The provisioned CA: the session is verified and the reading goes through.
    let report = agent.session(&creds(Some(cert.cert.pem()))).await.unwrap();
    assert_eq!(report.acked_seq, 1);
    assert_eq!(platform.logged(thing, 1).await, [1]);
}
