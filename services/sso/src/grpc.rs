//! gRPC front of sso: TokenService, AccountService, KeyService (`sso.proto`).

use sipmba_auth::{Access, Kind, Principal, scopes};
use sipmba_proto::v1::{
    self as pb, account_service_server::AccountService, key_service_server::KeyService,
    token_service_server::TokenService,
};
use sipmba_runtime::ids::{now_ms, parse_uuid, required_id, timestamp_from_ms};
use tonic::{Request, Response, Status};

use crate::{Introspection, Issued, OAuthError, OAuthErrorCode, Sso};

/// What each sso method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    use Access::{Authenticated, Public, Scope};
    vec![
        ("/sipmba.v1.TokenService/Token", Public),
        (
            "/sipmba.v1.TokenService/Introspect",
            Scope(scopes::TOKENS_INTROSPECT),
        ),
        ("/sipmba.v1.TokenService/Revoke", Public),
        // Open or closed registration is decided by the handler.
        ("/sipmba.v1.AccountService/RegisterUser", Public),
        ("/sipmba.v1.AccountService/ChangePassword", Authenticated),
        // users:write for users, objects:admin for services: decided by the handler.
        ("/sipmba.v1.AccountService/SetUserPassword", Authenticated),
        (
            "/sipmba.v1.AccountService/IssueThingSecret",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.AccountService/RotateThingSecret",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.AccountService/RevokeSubject",
            Scope(scopes::TOKENS_ADMIN),
        ),
        ("/sipmba.v1.KeyService/GetJwks", Public),
    ]
}

impl Sso {
    /// Registers sso's gRPC services with `server`.
    pub fn register_grpc(&self, server: &mut sipmba_runtime::Server) {
        let requests = self.inner.metrics.requests.clone();
        server.metrics(move |registry| {
            registry.register(
                "sso_token_requests",
                "Token requests by grant and outcome (issued, or the OAuth error code)",
                requests,
            );
        });
        server
            .add_service(pb::token_service_server::TokenServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::account_service_server::AccountServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::key_service_server::KeyServiceServer::new(self.clone()))
            .access(access_policy());
    }
}

fn oauth_status(e: OAuthError) -> Status {
    let message = format!("{}: {}", e.code.as_str(), e.description);
    match e.code {
        OAuthErrorCode::InvalidRequest | OAuthErrorCode::UnsupportedGrantType => {
            Status::invalid_argument(message)
        }
        OAuthErrorCode::InvalidClient | OAuthErrorCode::InvalidGrant => {
            Status::unauthenticated(message)
        }
        OAuthErrorCode::InvalidScope | OAuthErrorCode::UnauthorizedClient => {
            Status::permission_denied(message)
        }
        OAuthErrorCode::SlowDown => Status::resource_exhausted(message),
        OAuthErrorCode::ServerError => Status::internal(message),
        OAuthErrorCode::TemporarilyUnavailable => Status::unavailable(message),
    }
}

fn client_addr<T>(req: &Request<T>) -> Option<std::net::IpAddr> {
    req.remote_addr().map(|a| a.ip())
}

fn token_response(issued: Issued) -> pb::TokenResponse {
    pb::TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer".into(),
        expires_in: Some(prost_types::Duration {
            seconds: i64::try_from(issued.expires_in.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        refresh_token: issued.refresh_token,
        scope: issued.scope,
    }
}

fn kind_enum(kind: Kind) -> pb::PrincipalKind {
    match kind {
        Kind::User => pb::PrincipalKind::User,
        Kind::Thing => pb::PrincipalKind::Thing,
        Kind::Service => pb::PrincipalKind::Service,
    }
}

#[tonic::async_trait]
impl TokenService for Sso {
    async fn token(
        &self,
        req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        use pb::token_request::Grant;
        let addr = client_addr(&req);
        let issued = match &req.get_ref().grant {
            Some(Grant::Password(g)) => {
                self.password_grant(&g.username, &g.password, &g.scope, addr)
                    .await
            }
            Some(Grant::RefreshToken(g)) => self.refresh_grant(&g.refresh_token, &g.scope).await,
            Some(Grant::ClientCredentials(g)) => {
                self.client_credentials_grant(&g.client_id, &g.client_secret, &g.scope, addr)
                    .await
            }
            None => Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                "`grant` is required: password, refresh_token or client_credentials",
            )),
        };
        issued
            .map(|i| Response::new(token_response(i)))
            .map_err(oauth_status)
    }

    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = &req.get_ref().token;
        if token.is_empty() {
            return Err(Status::invalid_argument("`token` is required"));
        }
        let info: Introspection = Sso::introspect(self, token).await.map_err(oauth_status)?;
        if !info.active {
            return Ok(Response::new(pb::IntrospectResponse::default()));
        }
        let c = &self.inner.config;
        let ts = |s: Option<i64>| s.map(|s| timestamp_from_ms(s.saturating_mul(1000)));
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            scope: info.scope,
            client_id: info.client_id.unwrap_or_default(),
            sub: info.sub.map(|s| s.to_string()).unwrap_or_default(),
            kind: info.kind.map_or(0, |k| kind_enum(k) as i32),
            exp: ts(info.exp),
            iat: ts(info.iat),
            nbf: ts(info.iat),
            aud: vec![c.audience.clone()],
            iss: c.issuer.clone(),
            jti: info.jti.unwrap_or_default(),
            owner: info.owner.map(|o| pb::UserId {
                value: o.to_string(),
            }),
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let token = &req.get_ref().token;
        if token.is_empty() {
            return Err(Status::invalid_argument("`token` is required"));
        }
        Sso::revoke(self, token).await.map_err(oauth_status)?;
        Ok(Response::new(pb::RevokeResponse {}))
    }
}

#[tonic::async_trait]
impl AccountService for Sso {
    async fn register_user(
        &self,
        req: Request<pb::RegisterUserRequest>,
    ) -> Result<Response<pb::RegisterUserResponse>, Status> {
        if !self.inner.config.open_registration {
            let bearer = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "registration is closed: only services holding objects:admin may register users",
                    )
                })?;
            let caller = self
                .inner
                .verifier
                .verify(bearer)
                .await
                .map_err(|e| e.to_status())?;
            if !caller.has_scope(scopes::OBJECTS_ADMIN) {
                return Err(Status::permission_denied(
                    "registration is closed: registering users needs the objects:admin scope",
                ));
            }
        }
        let r = req.get_ref();
        let user = self
            .register(&r.username, &r.password)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RegisterUserResponse {
            user: Some(pb::UserId {
                value: user.to_string(),
            }),
        }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = Principal::from_request(&req)?.clone();
        if caller.kind != Kind::User {
            return Err(Status::permission_denied("only users have passwords"));
        }
        let r = req.get_ref();
        let revoked_sessions =
            Sso::change_password(self, &caller, &r.current_password, &r.new_password)
                .await
                .map_err(oauth_status)?;
        Ok(Response::new(pb::ChangePasswordResponse {
            revoked_sessions,
        }))
    }

    async fn set_user_password(
        &self,
        req: Request<pb::SetUserPasswordRequest>,
    ) -> Result<Response<pb::SetUserPasswordResponse>, Status> {
        let caller = Principal::from_request(&req)?.clone();
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let r = req.get_ref();
        let user = required_id("user", r.user.as_ref()).map_err(Status::from)?;
        let revoked_sessions = self
            .set_user_password(&caller, &bearer, user, &r.new_password)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::SetUserPasswordResponse {
            revoked_sessions,
        }))
    }

    async fn issue_thing_secret(
        &self,
        req: Request<pb::IssueThingSecretRequest>,
    ) -> Result<Response<pb::IssueThingSecretResponse>, Status> {
        let caller = Principal::from_request(&req)?.clone();
        let thing = required_id("thing", req.get_ref().thing.as_ref()).map_err(Status::from)?;
        let (client_id, client_secret) = self
            .thing_secret(&caller, thing, Some(false))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::IssueThingSecretResponse {
            client_id,
            client_secret,
            created: Some(timestamp_from_ms(now_ms())),
        }))
    }

    async fn rotate_thing_secret(
        &self,
        req: Request<pb::RotateThingSecretRequest>,
    ) -> Result<Response<pb::RotateThingSecretResponse>, Status> {
        let caller = Principal::from_request(&req)?.clone();
        let thing = required_id("thing", req.get_ref().thing.as_ref()).map_err(Status::from)?;
        let (client_id, client_secret) = self
            .thing_secret(&caller, thing, Some(true))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RotateThingSecretResponse {
            client_id,
            client_secret,
            created: Some(timestamp_from_ms(now_ms())),
        }))
    }

    async fn revoke_subject(
        &self,
        req: Request<pb::RevokeSubjectRequest>,
    ) -> Result<Response<pb::RevokeSubjectResponse>, Status> {
        let r = req.get_ref();
        let kind = match pb::PrincipalKind::try_from(r.kind) {
            Ok(pb::PrincipalKind::User) => Kind::User,
            Ok(pb::PrincipalKind::Thing) => Kind::Thing,
            Ok(pb::PrincipalKind::Service) => Kind::Service,
            _ => {
                return Err(Status::invalid_argument(
                    "`kind` must be USER, THING or SERVICE",
                ));
            }
        };
        let subject = parse_uuid("subject", &r.subject).map_err(Status::from)?;
        let now = now_ms();
        self.revoke_subject(subject, Some(kind), now)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RevokeSubjectResponse {
            not_before: Some(timestamp_from_ms(now / 1000 * 1000)),
        }))
    }
}

#[tonic::async_trait]
impl KeyService for Sso {
    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let set = self.jwks();
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let sipmba_auth::signing::PublicJwkParams::OctetKeyPair(okp) = &jwk.algorithm
                else {
                    return None;
                };
                Some(pb::Jwk {
                    kid: jwk.common.key_id.clone().unwrap_or_default(),
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: okp.x.clone(),
                    alg: "EdDSA".into(),
                    r#use: "sig".into(),
                    not_after: None,
                })
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse { keys }))
    }
}
