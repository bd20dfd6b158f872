//! The token endpoint: password logins, refresh rotation, throttling, thing tokens, introspection,
//! key rotation, issuer and audience.

use super::*;

sipmba_testkit::on_both_databases!(
    password_login_and_rotating_refresh_with_reuse_detection,
    wrong_passwords_are_throttled_and_disabled_users_refused,
    things_get_thing_tokens_with_client_credentials,
    introspection_revocation_and_key_rotation,
    sso_tokens_expire_and_are_bound_to_their_issuer_and_audience,
);

async fn password_login_and_rotating_refresh_with_reuse_detection(backend: Backend) {
    let p = start(backend).await;
    let user = p
        .sso
        .register("alice", "correct horse battery")
        .await
        .unwrap();
    let first = p.login("alice", "correct horse battery").await.unwrap();
    let verifier = p.verifier();
    let principal = verifier
        .verify(first.access_token().secret())
        .await
        .unwrap();
    assert_eq!((principal.kind, principal.subject), (Kind::User, user));
    assert!(principal.has_scope("things:write"));
    let expires = first.expires_in().unwrap();
    assert!(expires <= Duration::from_secs(15 * 60) && expires > Duration::from_secs(14 * 60));

    // The token works against Objects.
    let me = pb::user_service_client::UserServiceClient::new(p.channel.clone())
        .get_user(with_token(
            first.access_token().secret(),
            pb::GetUserRequest {
                id: Some(pb::UserId {
                    value: user.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.username, "alice");

    // Narrower scopes on request; others refused.
    let narrow = p
        .client("sipmba-cli", None)
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new("correct horse battery".into()),
        )
        .add_scope(Scope::new("telemetry:read".into()))
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(narrow.scopes().unwrap()[0].as_str(), "telemetry:read");
    let refused = p
        .client("sipmba-cli", None)
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new("correct horse battery".into()),
        )
        .add_scope(Scope::new("objects:admin".into()))
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(refused, BasicErrorResponseType::InvalidScope);

    // Rotation: every refresh returns a new refresh token.
    let old = first.refresh_token().unwrap().clone();
    let second = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(&old)
        .request_async(&http)
        .await
        .unwrap();
    let newer = second.refresh_token().unwrap().clone();
    assert_ne!(newer.secret(), old.secret());
    assert!(
        verifier
            .verify(second.access_token().secret())
            .await
            .is_ok()
    );

    // Presenting the rotated token again revokes the whole family.
    let reuse = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(&old)
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(reuse, BasicErrorResponseType::InvalidGrant);
    let after = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(&newer)
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(
        after,
        BasicErrorResponseType::InvalidGrant,
        "the newest token of the family is dead too"
    );
    for token in [
        first.access_token().secret(),
        second.access_token().secret(),
    ] {
        assert!(matches!(
            p.sso.verifier().verify(token).await,
            Err(AuthError::Revoked)
        ));
    }
    // Another login (another family) is unaffected.
    assert!(
        p.sso
            .verifier()
            .verify(narrow.access_token().secret())
            .await
            .is_ok()
    );
    let garbage = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(&RefreshToken::new("nope".into()))
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(garbage, BasicErrorResponseType::InvalidGrant);
}

async fn wrong_passwords_are_throttled_and_disabled_users_refused(backend: Backend) {
    let p = start(backend).await;
    let root = p
        .sso
        .register("root-user", "root password 1")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            p.login("root-user", "wrong password").await.unwrap_err(),
            BasicErrorResponseType::InvalidGrant
        );
    }
    // The sixth attempt is slowed down, even with the right password.
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", p.base))
        .form(&[
            ("grant_type", "password"),
            ("username", "root-user"),
            ("password", "root password 1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    // Unknown users answer like wrong passwords.
    assert_eq!(
        p.login("nobody-here", "whatever pw").await.unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );

    // A child whose parent is disabled cannot log in.
    let admin = p.admin_token().await;
    let mut users = pb::user_service_client::UserServiceClient::new(p.channel.clone());
    let child = users
        .create_user(with_token(
            &admin,
            pb::CreateUserRequest {
                username: "child-user".into(),
                parent: Some(pb::UserId {
                    value: root.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let child_id = Uuid::parse_str(&child.id.unwrap().value).unwrap();
    p.sso
        .set_password(child_id, "child-user", "child password")
        .await
        .unwrap();
    let child_token = p.login("child-user", "child password").await.unwrap();
    users
        .disable_user(with_token(
            &admin,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: root.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        p.login("child-user", "child password").await.unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );
    let refresh = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(child_token.refresh_token().unwrap())
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(refresh, BasicErrorResponseType::InvalidGrant);
    // Bad requests get RFC 6749 bodies.
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", p.base))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:device_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    // Token requests are counted by grant and outcome.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", p.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"sipmba_sso_token_requests_total{grant="password",outcome="invalid_grant"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="slow_down""#), "{metrics}");
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", p.base))
        .form(&[("grant_type", "password"), ("username", "x")])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("`password`")
    );
    for path in ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"] {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", p.base))
            .header("content-type", "application/json")
            .body(r#"{"grant_type":"password"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{path}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("x-www-form-urlencoded")
        );
    }
}

async fn things_get_thing_tokens_with_client_credentials(backend: Backend) {
    let p = start(backend).await;
    let owner = p
        .sso
        .register("thing-owner", "owner password")
        .await
        .unwrap();
    let login = p.login("thing-owner", "owner password").await.unwrap();
    let user_token = login.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &user_token,
            pb::CreateThingRequest {
                name: "pi-1".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let thing_id = Uuid::parse_str(&thing.id.unwrap().value).unwrap();
    let caller = p.sso.verifier().verify(&user_token).await.unwrap();
    let (client_id, secret) = p.sso.issue_thing_secret(&caller, thing_id).await.unwrap();

    let token = p
        .client(&client_id, Some(&secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    assert!(
        token.refresh_token().is_none(),
        "things get no refresh token"
    );
    let principal = p
        .verifier()
        .verify(token.access_token().secret())
        .await
        .unwrap();
    assert_eq!(principal.kind, Kind::Thing);
    assert_eq!(principal.subject, thing_id);
    assert_eq!(principal.owner, Some(owner));
    assert!(principal.has_scope("telemetry:write") && principal.has_scope("commands:read"));

    // A thing cannot obtain user scopes, nor authenticate with a wrong secret.
    let err = p
        .client(&client_id, Some(&secret))
        .exchange_client_credentials()
        .add_scope(Scope::new("users:write".into()))
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(err, BasicErrorResponseType::InvalidScope);
    let err = p
        .client(&client_id, Some("not-the-secret"))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(err, BasicErrorResponseType::InvalidClient);

    // A service keeps a current token with its client credentials.
    let secret_svc = sipmba_sso::secrets::random_secret();
    p.sso
        .ensure_service_client(
            "control",
            &secret_svc,
            Uuid::new_v4(),
            &[scopes::OBJECTS_AUTHORIZE],
        )
        .await
        .unwrap();
    let credentials = sipmba_auth::client::ServiceCredentials::new(
        &format!("{}/oauth2/token", p.base),
        "control",
        &secret_svc,
        "",
    )
    .unwrap();
    let first = credentials.token().await.unwrap();
    assert_eq!(
        credentials.token().await.unwrap(),
        first,
        "cached until a minute before expiry"
    );
    let service = p.sso.verifier().verify(&first).await.unwrap();
    assert_eq!(service.kind, Kind::Service);
    assert!(service.has_scope(scopes::OBJECTS_AUTHORIZE));
    let wrong = sipmba_auth::client::ServiceCredentials::new(
        &format!("{}/oauth2/token", p.base),
        "control",
        "not the secret",
        "",
    )
    .unwrap();
    match wrong.token().await {
        Err(sipmba_auth::client::CredentialsError::Refused { error, .. }) => {
            assert_eq!(error, "invalid_client")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        !format!("{credentials:?}").contains(&secret_svc),
        "no secret in Debug"
    );

    // Rotation: the old secret stops working at once.
    let (_, rotated) = p.sso.issue_thing_secret(&caller, thing_id).await.unwrap();
    let err = p
        .client(&client_id, Some(&secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(err, BasicErrorResponseType::InvalidClient);
    assert!(
        p.client(&client_id, Some(&rotated))
            .exchange_client_credentials()
            .request_async(&http)
            .await
            .is_ok()
    );

    // A user who does not control the thing cannot issue its secret.
    let stranger = p
        .sso
        .register("stranger", "stranger password")
        .await
        .unwrap();
    let stranger_token = p.login("stranger", "stranger password").await.unwrap();
    let stranger_principal = p
        .sso
        .verifier()
        .verify(stranger_token.access_token().secret())
        .await
        .unwrap();
    assert_eq!(stranger_principal.subject, stranger);
    assert!(
        p.sso
            .issue_thing_secret(&stranger_principal, thing_id)
            .await
            .is_err()
    );

    // A disabled thing gets no token.
    pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .disable_thing(with_token(
            &user_token,
            pb::DisableThingRequest {
                id: Some(pb::ThingId {
                    value: thing_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    let err = p
        .client(&client_id, Some(&rotated))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(err, BasicErrorResponseType::InvalidGrant);
}

async fn introspection_revocation_and_key_rotation(backend: Backend) {
    let p = start(backend).await;
    p.sso
        .register("intro-user", "intro password")
        .await
        .unwrap();
    let login = p.login("intro-user", "intro password").await.unwrap();
    let access = login.access_token().secret().clone();
    let refresh = login.refresh_token().unwrap().secret().clone();
    let admin = p.admin_token().await;
    let http_client = reqwest::Client::new();
    let introspect = |token: String| {
        let client = http_client.clone();
        let url = format!("{}/oauth2/introspect", p.base);
        let admin = admin.clone();
        async move {
            client
                .post(url)
                .bearer_auth(admin)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let info = introspect(access.clone()).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["kind"], "user");
    assert_eq!(info["token_type"], "access_token");
    assert_eq!(
        introspect(refresh.clone()).await["token_type"],
        "refresh_token"
    );
    assert_eq!(
        introspect("garbage".into()).await,
        serde_json::json!({ "active": false })
    );
    // Introspection needs tokens:introspect.
    let denied = http_client
        .post(format!("{}/oauth2/introspect", p.base))
        .bearer_auth(&access)
        .form(&[("token", access.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    // A service client may introspect with Basic credentials instead of a bearer token.
    let secret = sipmba_sso::secrets::random_secret();
    p.sso
        .ensure_service_client(
            "introspector",
            &secret,
            Uuid::new_v4(),
            &[scopes::TOKENS_INTROSPECT],
        )
        .await
        .unwrap();
    let basic: serde_json::Value = http_client
        .post(format!("{}/oauth2/introspect", p.base))
        .basic_auth("introspector", Some(&secret))
        .form(&[("token", access.clone())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(basic["active"], true);
    let wrong = http_client
        .post(format!("{}/oauth2/introspect", p.base))
        .basic_auth("introspector", Some("wrong"))
        .form(&[("token", access.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("www-authenticate").is_some());

    // RFC 7009: revoke the access token; unknown tokens are fine too.
    for token in [access.clone(), "unknown".to_string()] {
        let response = http_client
            .post(format!("{}/oauth2/revoke", p.base))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(introspect(access.clone()).await["active"], false);
    assert!(matches!(
        p.sso.verifier().verify(&access).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(
        introspect(refresh.clone()).await["active"],
        true,
        "the refresh token lives on"
    );
    http_client
        .post(format!("{}/oauth2/revoke", p.base))
        .form(&[("token", refresh.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspect(refresh).await["active"], false);

    // Discovery names the endpoints; key rotation keeps old tokens valid.
    let discovery: serde_json::Value = http_client
        .get(format!("{}/.well-known/openid-configuration", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery["token_endpoint"],
        format!("{}/oauth2/token", p.base)
    );
    let before = p.login("intro-user", "intro password").await.unwrap();
    assert_eq!(
        p.sso.refresh_keys().await.unwrap(),
        None,
        "a fresh key is not rotated"
    );
    let new_kid = p.sso.rotate_keys().await.unwrap();
    let after = p.login("intro-user", "intro password").await.unwrap();
    let verifier = p.verifier();
    assert!(
        verifier
            .verify(before.access_token().secret())
            .await
            .is_ok(),
        "a retired key still verifies"
    );
    assert!(verifier.verify(after.access_token().secret()).await.is_ok());
    let jwks: serde_json::Value = http_client
        .get(format!("{}/.well-known/jwks.json", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&new_kid.as_str()));
}

async fn sso_tokens_expire_and_are_bound_to_their_issuer_and_audience(backend: Backend) {
    let p = start(backend).await;
    p.sso
        .register("bound-user", "bound user password")
        .await
        .unwrap();
    let token = p.login("bound-user", "bound user password").await.unwrap();
    let token = token.access_token().secret().clone();
    let jwks = format!("{}/.well-known/jwks.json", p.base);
    let verifier = |issuer: &str, audience: &str, leeway: u64| {
        let mut config = VerifierConfig::new(JwksSource::Url(jwks.clone()), issuer, audience);
        config.leeway = Duration::from_secs(leeway);
        Verifier::new(config, Revocations::default()).unwrap()
    };
    assert!(verifier(&p.base, AUDIENCE, 0).verify(&token).await.is_ok());
    assert!(matches!(
        verifier(&p.base, "another-platform", 0)
            .verify(&token)
            .await,
        Err(AuthError::WrongAudience)
    ));
    assert!(matches!(
        verifier("https://elsewhere", AUDIENCE, 0)
            .verify(&token)
            .await,
        Err(AuthError::WrongIssuer)
    ));

    // A token of another sso (another key) is a forgery here.
    let other = start(backend).await;
    other
        .sso
        .register("bound-user", "bound user password")
        .await
        .unwrap();
    let foreign = other
        .login("bound-user", "bound user password")
        .await
        .unwrap();
    let err = verifier(&p.base, AUDIENCE, 0)
        .verify(foreign.access_token().secret())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownKey | AuthError::WrongIssuer),
        "{err:?}"
    );

    // Short-lived tokens expire: an sso issuing 1-second user tokens.
    let short = start_with(backend, |c| c.user_token_lifetime = Duration::from_secs(1)).await;
    let short_base = short.base.clone();
    short
        .sso
        .register("short-user", "short user password")
        .await
        .unwrap();
    let issued = short
        .sso
        .password_grant("short-user", "short user password", "", None)
        .await
        .unwrap();
    assert_eq!(issued.expires_in, Duration::from_secs(1));
    let short = short.sso;
    let strict = {
        let mut config =
            VerifierConfig::new(JwksSource::Static(short.jwks()), &short_base, AUDIENCE);
        config.leeway = Duration::ZERO;
        Verifier::new(config, Revocations::default()).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match strict.verify(&issued.access_token).await {
            Err(AuthError::Expired) => break,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "the token never expired"
            ),
            Err(other) => panic!("expected expiry, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
