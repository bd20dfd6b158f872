//! sso over real HTTP, driven by the `oauth2` crate as a standard client, with Objects running
//! beside it, on PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use oauth2::{
    ClientId, ClientSecret, RefreshToken, RequestTokenError, ResourceOwnerPassword,
    ResourceOwnerUsername, Scope, TokenResponse, TokenUrl,
    basic::{BasicClient, BasicErrorResponseType},
};
use sipmba_auth::{AuthError, JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_proto::v1 as pb;
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_sso::{Sso, SsoConfig};
use sipmba_testkit::{Backend, TestDb, with_token};
use tonic::transport::Channel;
use uuid::Uuid;

struct Platform {
    sso: Sso,
    shutdown: Shutdown,
    base: String,
    channel: Channel,
    _trigger: ShutdownTrigger,
    _db: TestDb,
}

const AUDIENCE: &str = "sipmba";

async fn start(backend: Backend) -> Platform {
    start_with(backend, |_| {}).await
}

async fn start_with(backend: Backend, adjust: impl FnOnce(&mut SsoConfig)) -> Platform {
    sipmba_testkit::init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_objects::migrate(&conn).await.unwrap();
    sipmba_sso::migrate(&conn).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut config = SsoConfig::new(&base, AUDIENCE, &base);
    config.password_cost = sipmba_sso::secrets::PasswordCost {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    adjust(&mut config);
    let revocations = Revocations::default();
    let sso = Sso::start(conn.clone(), config, revocations).await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let shutdown_handle = shutdown.clone();
    let mut server = Server::new();
    sipmba_objects::ObjectsService::new(sipmba_objects::Store::new(conn), shutdown.clone())
        .register(&mut server);
    server.http(sipmba_sso::router(sso.clone()));
    sso.register_grpc(&mut server);
    sso.follow_objects(shutdown.clone());
    tokio::spawn(server.run(
        listener,
        None,
        sso.verifier(),
        shutdown,
        Duration::from_secs(1),
    ));
    let channel = Channel::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Platform {
        sso,
        shutdown: shutdown_handle,
        base,
        channel,
        _trigger: trigger,
        _db: db,
    }
}

async fn http(request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = reqwest::Client::new()
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    Ok(builder.body(response.bytes().await?.to_vec()).unwrap())
}

impl Platform {
    fn client(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> oauth2::basic::BasicClient<
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    > {
        let mut client = BasicClient::new(ClientId::new(id.into()))
            .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", self.base)).unwrap());
        if let Some(secret) = secret {
            client = client.set_client_secret(ClientSecret::new(secret.into()));
        }
        client
    }

    /// A service client with objects:admin, as the operator would hold.
    async fn admin_token(&self) -> String {
        let secret = sipmba_sso::secrets::random_secret();
        let mut all = scopes::USER_SCOPES.to_vec();
        all.extend([
            scopes::OBJECTS_ADMIN,
            scopes::OBJECTS_AUTHORIZE,
            scopes::TOKENS_INTROSPECT,
        ]);
        self.sso
            .ensure_service_client("operator", &secret, Uuid::new_v4(), &all)
            .await
            .unwrap();
        let token = self
            .client("operator", Some(&secret))
            .exchange_client_credentials()
            .request_async(&http)
            .await
            .expect("service client_credentials");
        token.access_token().secret().clone()
    }

    async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<oauth2::basic::BasicTokenResponse, BasicErrorResponseType> {
        self.client("sipmba-cli", None)
            .exchange_password(
                &ResourceOwnerUsername::new(username.into()),
                &ResourceOwnerPassword::new(password.into()),
            )
            .request_async(&http)
            .await
            .map_err(oauth_error)
    }

    fn verifier(&self) -> Verifier {
        let config = VerifierConfig::new(
            JwksSource::Url(format!("{}/.well-known/jwks.json", self.base)),
            &self.base,
            AUDIENCE,
        );
        Verifier::new(config, Revocations::default()).unwrap()
    }
}

fn oauth_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> BasicErrorResponseType {
    match e {
        RequestTokenError::ServerResponse(r) => r.error().clone(),
        other => panic!("expected an OAuth error response, got {other:?}"),
    }
}

sipmba_testkit::on_both_databases!(
    password_login_and_rotating_refresh_with_reuse_detection,
    wrong_passwords_are_throttled_and_disabled_users_refused,
    things_get_thing_tokens_with_client_credentials,
    introspection_revocation_and_key_rotation,
    the_grpc_api_registers_logs_in_and_manages_credentials,
    disabling_a_parent_revokes_its_subtree_and_their_things_within_a_second,
    revocations_reach_other_services_through_the_log_within_a_second,
    sso_tokens_expire_and_are_bound_to_their_issuer_and_audience,
    a_parent_sets_the_password_of_a_child_and_nobody_else_can,
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
        .form(&[("grant_type", "authorization_code")])
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

async fn the_grpc_api_registers_logs_in_and_manages_credentials(backend: Backend) {
    use tonic::Code;
    let p = start(backend).await;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(p.channel.clone());
    let mut tokens = pb::token_service_client::TokenServiceClient::new(p.channel.clone());
    let register = |username: &str| pb::RegisterUserRequest {
        username: username.into(),
        password: "grpc password".into(),
    };

    // Registration is closed by default: only objects:admin services register users.
    let err = accounts
        .register_user(register("grpc-user"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let admin = p.admin_token().await;
    let user = accounts
        .register_user(with_token(&admin, register("grpc-user")))
        .await
        .unwrap()
        .into_inner();
    let user_id = Uuid::parse_str(&user.user.unwrap().value).unwrap();
    let err = accounts
        .register_user(with_token(&admin, register("grpc-user")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let short = pb::RegisterUserRequest {
        username: "short-pw".into(),
        password: "short".into(),
    };
    assert_eq!(
        accounts
            .register_user(with_token(&admin, short))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let password = |password: &str| pb::TokenRequest {
        grant: Some(pb::token_request::Grant::Password(pb::PasswordGrant {
            username: "grpc-user".into(),
            password: password.into(),
            scope: String::new(),
        })),
    };
    let session_a = tokens
        .token(password("grpc password"))
        .await
        .unwrap()
        .into_inner();
    let session_b = tokens
        .token(password("grpc password"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session_a.token_type, "Bearer");
    let err = tokens.token(password("wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().starts_with("invalid_grant"), "{err:?}");
    let err = tokens
        .token(pb::TokenRequest { grant: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Changing the password ends the other session, keeps this one.
    let changed = accounts
        .change_password(with_token(
            &session_a.access_token,
            pb::ChangePasswordRequest {
                current_password: "grpc password".into(),
                new_password: "a new grpc password".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.revoked_sessions, 1);
    let refresh = |token: &str| pb::TokenRequest {
        grant: Some(pb::token_request::Grant::RefreshToken(
            pb::RefreshTokenGrant {
                refresh_token: token.into(),
                scope: String::new(),
            },
        )),
    };
    assert_eq!(
        tokens
            .token(refresh(session_b.refresh_token.as_deref().unwrap()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert!(
        tokens
            .token(refresh(session_a.refresh_token.as_deref().unwrap()))
            .await
            .is_ok()
    );
    assert!(
        tokens.token(password("grpc password")).await.is_err(),
        "the old password is gone"
    );

    // Thing secrets: issue once, then rotate.
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &session_a.access_token,
            pb::CreateThingRequest {
                name: "grpc-thing".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let issue = pb::IssueThingSecretRequest {
        thing: thing.id.clone(),
    };
    let first = accounts
        .issue_thing_secret(with_token(&session_a.access_token, issue.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        accounts
            .issue_thing_secret(with_token(&session_a.access_token, issue))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let rotated = accounts
        .rotate_thing_secret(with_token(
            &session_a.access_token,
            pb::RotateThingSecretRequest {
                thing: thing.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.client_id, first.client_id);
    assert_ne!(rotated.client_secret, first.client_secret);
    let thing_token = tokens
        .token(pb::TokenRequest {
            grant: Some(pb::token_request::Grant::ClientCredentials(
                pb::ClientCredentialsGrant {
                    client_id: rotated.client_id.clone(),
                    client_secret: rotated.client_secret.clone(),
                    scope: String::new(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(thing_token.refresh_token.is_none());

    // Introspection over gRPC needs tokens:introspect.
    let info = tokens
        .introspect(with_token(
            &admin,
            pb::IntrospectRequest {
                token: thing_token.access_token.clone(),
                token_type_hint: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(info.active);
    assert_eq!(info.kind, pb::PrincipalKind::Thing as i32);
    assert_eq!(info.owner.unwrap().value, user_id.to_string());
    let err = tokens
        .introspect(with_token(
            &session_a.access_token,
            pb::IntrospectRequest {
                token: thing_token.access_token.clone(),
                token_type_hint: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // RevokeSubject ends every token of the user issued so far.
    let admin_revoker = {
        let secret = sipmba_sso::secrets::random_secret();
        p.sso
            .ensure_service_client("revoker", &secret, Uuid::new_v4(), &[scopes::TOKENS_ADMIN])
            .await
            .unwrap();
        p.client("revoker", Some(&secret))
            .exchange_client_credentials()
            .request_async(&http)
            .await
            .unwrap()
            .access_token()
            .secret()
            .clone()
    };
    accounts
        .revoke_subject(with_token(
            &admin_revoker,
            pb::RevokeSubjectRequest {
                kind: pb::PrincipalKind::User as i32,
                subject: user_id.to_string(),
            },
        ))
        .await
        .unwrap();
    assert!(matches!(
        p.sso.verifier().verify(&session_a.access_token).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(
        accounts
            .revoke_subject(with_token(
                &session_a.access_token,
                pb::RevokeSubjectRequest {
                    kind: 1,
                    subject: user_id.to_string()
                }
            ))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated,
        "a revoked token is refused before the scope is even considered"
    );

    // The key set over gRPC matches the HTTP one.
    let jwks = pb::key_service_client::KeyServiceClient::new(p.channel.clone())
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].kty, "OKP");
}

async fn disabling_a_parent_revokes_its_subtree_and_their_things_within_a_second(backend: Backend) {
    let p = start(backend).await;
    let root = p
        .sso
        .register("org-root", "org root password")
        .await
        .unwrap();
    let root_login = p.login("org-root", "org root password").await.unwrap();
    let root_token = root_login.access_token().secret().clone();
    let mut users = pb::user_service_client::UserServiceClient::new(p.channel.clone());
    let team = users
        .create_user(with_token(
            &root_token,
            pb::CreateUserRequest {
                username: "org-team".into(),
                parent: Some(pb::UserId {
                    value: root.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let team_id = Uuid::parse_str(&team.id.unwrap().value).unwrap();
    let member = users
        .create_user(with_token(
            &root_token,
            pb::CreateUserRequest {
                username: "org-member".into(),
                parent: Some(pb::UserId {
                    value: team_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let member_id = Uuid::parse_str(&member.id.unwrap().value).unwrap();
    p.sso
        .set_password(member_id, "org-member", "member password")
        .await
        .unwrap();
    let member_login = p.login("org-member", "member password").await.unwrap();
    let member_token = member_login.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &member_token,
            pb::CreateThingRequest {
                name: "member-pi".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let thing_id = Uuid::parse_str(&thing.id.unwrap().value).unwrap();
    let member_principal = p.sso.verifier().verify(&member_token).await.unwrap();
    let (client_id, secret) = p
        .sso
        .issue_thing_secret(&member_principal, thing_id)
        .await
        .unwrap();
    let thing_token = p
        .client(&client_id, Some(&secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    let thing_token = thing_token.access_token().secret().clone();

    // The root disables the team: the member (two levels down) and the member's thing lose
    // their live tokens.
    users
        .disable_user(with_token(
            &root_token,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: team_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    let disabled_at = std::time::Instant::now();
    let verifier = p.sso.verifier();
    loop {
        let member = verifier.verify(&member_token).await;
        let thing = verifier.verify(&thing_token).await;
        if matches!(member, Err(AuthError::Revoked)) && matches!(thing, Err(AuthError::Revoked)) {
            break;
        }
        assert!(
            disabled_at.elapsed() < Duration::from_secs(1),
            "not revoked within a second: {member:?} {thing:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The refresh token is dead too, and the root is untouched.
    let refresh = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(member_login.refresh_token().unwrap())
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(refresh, BasicErrorResponseType::InvalidGrant);
    assert!(verifier.verify(&root_token).await.is_ok());
}

/// Captured log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs() {
    // Everything at debug, our own crates at trace: far more than production logs.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,sipmba_sso=trace,sipmba_auth=trace,sipmba_runtime=trace,sipmba_objects=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let p = start(Backend::Sqlite).await;
    let password = "a very secret password";
    p.sso.register("logged-user", password).await.unwrap();
    let _ = p.login("logged-user", "a wrong password attempt").await;
    let login = p.login("logged-user", password).await.unwrap();
    let refreshed = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(login.refresh_token().unwrap())
        .request_async(&http)
        .await
        .unwrap();
    // Reuse of the rotated token (logged as a warning) and revocation of the new one.
    let _ = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(login.refresh_token().unwrap())
        .request_async(&http)
        .await;
    let access = refreshed.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &access,
            pb::CreateThingRequest {
                name: "logged-thing".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await;
    // The family was revoked by the reuse: this call fails, and says so in the logs.
    assert!(thing.is_err());
    let fresh = p.login("logged-user", password).await.unwrap();
    let fresh_access = fresh.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &fresh_access,
            pb::CreateThingRequest {
                name: "logged-thing".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let principal = p.sso.verifier().verify(&fresh_access).await.unwrap();
    let thing_id = Uuid::parse_str(&thing.id.unwrap().value).unwrap();
    let (client_id, client_secret) = p
        .sso
        .issue_thing_secret(&principal, thing_id)
        .await
        .unwrap();
    let thing_token = p
        .client(&client_id, Some(&client_secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", p.base))
        .form(&[("token", fresh.refresh_token().unwrap().secret().as_str())])
        .send()
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("password login") && logs.contains("refresh token reused"),
        "the run was logged:\n{logs}"
    );
    let secrets = [
        password.to_string(),
        "a wrong password attempt".to_string(),
        login.access_token().secret().clone(),
        login.refresh_token().unwrap().secret().clone(),
        access,
        refreshed.refresh_token().unwrap().secret().clone(),
        fresh_access,
        fresh.refresh_token().unwrap().secret().clone(),
        client_secret,
        thing_token.access_token().secret().clone(),
    ];
    for secret in &secrets {
        // Any sizeable piece of a token would be a leak, not only the whole of it.
        let head = &secret[..secret.len().min(24)];
        let tail = &secret[secret.len().saturating_sub(24)..];
        for probe in [head, tail] {
            assert!(!logs.contains(probe), "a secret reached the logs: {probe}");
        }
    }
}

async fn revocations_reach_other_services_through_the_log_within_a_second(backend: Backend) {
    use sipmba_queue::{
        Queue,
        revocations::{RevocationPublisher, follow},
    };
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let p = start(backend).await;
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    p.sso.publish_revocations(
        RevocationPublisher::new(queue.clone()).await.unwrap(),
        p.shutdown.clone(),
    );

    // Another service: its own revocation list, fed by the topic, and the JWKS over HTTP.
    let service = |queue: Queue| {
        let revocations = Revocations::default();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(follow(
            queue,
            revocations.clone(),
            ready.clone(),
            p.shutdown.clone().wait(),
        ));
        let config = VerifierConfig::new(
            JwksSource::Url(format!("{}/.well-known/jwks.json", p.base)),
            &p.base,
            AUDIENCE,
        );
        (Verifier::new(config, revocations).unwrap(), ready)
    };
    let (other, ready) = service(queue.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    p.sso
        .register("log-user", "log user password")
        .await
        .unwrap();
    let first = p.login("log-user", "log user password").await.unwrap();
    let second = p.login("log-user", "log user password").await.unwrap();
    let access = first.access_token().secret().clone();
    assert!(other.verify(&access).await.is_ok());

    let refused_within_a_second = |verifier: Verifier, token: String| async move {
        let started = std::time::Instant::now();
        loop {
            match verifier.verify(&token).await {
                Err(AuthError::Revoked) => return started.elapsed(),
                other => assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "still accepted after a second: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // One token (RFC 7009 over HTTP).
    reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", p.base))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    refused_within_a_second(other.clone(), access.clone()).await;
    assert!(
        other.verify(second.access_token().secret()).await.is_ok(),
        "only that token"
    );

    // A whole subject: disabling the user in Objects.
    let admin = p.admin_token().await;
    let user = p
        .sso
        .verifier()
        .verify(second.access_token().secret())
        .await
        .unwrap()
        .subject;
    pb::user_service_client::UserServiceClient::new(p.channel.clone())
        .disable_user(with_token(
            &admin,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: user.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    refused_within_a_second(other.clone(), second.access_token().secret().clone()).await;

    // A service that starts later learns every live revocation before it is ready.
    let (late, late_ready) = service(queue);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !late_ready.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the late follower never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        late.verify(&access).await,
        Err(AuthError::Revoked)
    ));
    assert!(matches!(
        late.verify(second.access_token().secret()).await,
        Err(AuthError::Revoked)
    ));
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

async fn a_parent_sets_the_password_of_a_child_and_nobody_else_can(backend: Backend) {
    let p = start(backend).await;
    p.sso.register("parent", "parent password").await.unwrap();
    p.sso
        .register("stranger", "stranger password")
        .await
        .unwrap();
    let parent = p.login("parent", "parent password").await.unwrap();
    let parent = parent.access_token().secret().clone();
    let stranger = p.login("stranger", "stranger password").await.unwrap();
    let stranger = stranger.access_token().secret().clone();
    let child = pb::user_service_client::UserServiceClient::new(p.channel.clone())
        .create_user(with_token(
            &parent,
            pb::CreateUserRequest {
                username: "the-child".into(),
                parent: Some(pb::UserId {
                    value: p
                        .verifier()
                        .verify(&parent)
                        .await
                        .unwrap()
                        .subject
                        .to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(p.channel.clone());
    let set = |token: &str, user: Option<pb::UserId>, password: &str| {
        with_token(
            token,
            pb::SetUserPasswordRequest {
                user,
                new_password: password.into(),
            },
        )
    };
    // A child created in Objects has no password until its parent sets one.
    assert_eq!(
        p.login("the-child", "child password 1").await.unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );
    accounts
        .set_user_password(set(&parent, child.clone(), "child password 1"))
        .await
        .unwrap();
    let first = p.login("the-child", "child password 1").await.unwrap();
    // A reset revokes the child's logins.
    let reset = accounts
        .set_user_password(set(&parent, child.clone(), "child password 2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.revoked_sessions, 1);
    assert_eq!(
        p.client("sipmba-cli", None)
            .exchange_refresh_token(first.refresh_token().unwrap())
            .request_async(&http)
            .await
            .map_err(oauth_error)
            .unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );
    p.login("the-child", "child password 2").await.unwrap();
    // Someone else's child is not found; one's own password goes through ChangePassword; a
    // short password is refused.
    let refused = accounts
        .set_user_password(set(&stranger, child.clone(), "stolen password"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let me = p.verifier().verify(&parent).await.unwrap().subject;
    let own = accounts
        .set_user_password(set(
            &parent,
            Some(pb::UserId {
                value: me.to_string(),
            }),
            "another password",
        ))
        .await
        .unwrap_err();
    assert_eq!(own.code(), tonic::Code::FailedPrecondition, "{own:?}");
    let short = accounts
        .set_user_password(set(&parent, child, "short"))
        .await
        .unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument, "{short:?}");
    p.login("the-child", "child password 2").await.unwrap();
}
