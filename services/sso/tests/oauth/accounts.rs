//! sso's gRPC API: registration, logins, credentials, and passwords set from above.

use super::*;

sipmba_testkit::on_both_databases!(
    the_grpc_api_registers_logs_in_and_manages_credentials,
    a_parent_sets_the_password_of_a_child_and_nobody_else_can,
);

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
