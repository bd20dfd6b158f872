//! The grants (RFC 6749 §4): password, refresh token (rotated, reuse revokes the family) and
//! client credentials, with their throttling and scopes. The authorization code grant is in
//! [`crate::authorize`]; it signs users in through the same password check and login.

use std::{net::IpAddr, time::Duration};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr,
};
use sipmba_auth::{Kind, scopes, signing::AccessClaims};
use sipmba_runtime::{ServiceError, ids::now_ms};
use uuid::Uuid;

use crate::{
    Sso,
    entity::{clients, credentials, issued, refresh_tokens},
    secrets,
};

use crate::{OAuthError, OAuthErrorCode};

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub access_token: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// A refresh token (users only).
    pub refresh_token: Option<String>,
    /// Granted scopes, space-separated.
    pub scope: String,
}

pub(crate) fn resolve_scopes(requested: &str, allowed: &[&str]) -> Result<Vec<String>, OAuthError> {
    let requested: Vec<&str> = requested.split_whitespace().collect();
    if requested.is_empty() {
        return Ok(allowed.iter().map(|s| (*s).to_owned()).collect());
    }
    let refused: Vec<&str> = requested
        .iter()
        .copied()
        .filter(|s| !allowed.contains(s))
        .collect();
    if !refused.is_empty() {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidScope,
            format!(
                "not allowed for this principal: {}; allowed: {}",
                refused.join(" "),
                allowed.join(" ")
            ),
        ));
    }
    let mut out: Vec<String> = requested.into_iter().map(str::to_owned).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

pub(crate) fn kind_number(kind: Kind) -> i16 {
    match kind {
        Kind::User => 1,
        Kind::Thing => 2,
        Kind::Service => 3,
    }
}

impl Sso {
    pub(crate) fn lifetime(&self, kind: Kind) -> Duration {
        let c = &self.inner.config;
        match kind {
            Kind::User => c.user_token_lifetime,
            Kind::Thing => c.thing_token_lifetime,
            Kind::Service => c.service_token_lifetime,
        }
    }

    pub(crate) async fn issue_access(
        &self,
        kind: Kind,
        subject: Uuid,
        owner: Option<Uuid>,
        scopes: &[String],
        family: Option<Uuid>,
    ) -> Result<Issued, OAuthError> {
        let lifetime = self.lifetime(kind);
        let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let c = &self.inner.config;
        let mut claims = AccessClaims::new(&c.issuer, &c.audience, kind, subject, &refs, lifetime);
        claims.nbf = Some(claims.iat);
        if let Some(owner) = owner {
            claims = claims.with_owner(owner);
        }
        let jti =
            Uuid::parse_str(&claims.jti).map_err(|e| ServiceError::Internal(e.to_string()))?;
        // Only tokens of a login are recorded: a family revocation must reach them. Thing and
        // service tokens are revoked by `jti` or by subject, which needs no record.
        if family.is_some() {
            issued::Entity::insert(issued::ActiveModel {
                jti: Set(jti),
                subject: Set(subject),
                family: Set(family),
                expires_ms: Set(claims.exp * 1000),
            })
            .exec_without_returning(&self.inner.db)
            .await?;
        }
        let token = self
            .inner
            .keys
            .current()
            .sign(&claims)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Issued {
            access_token: token,
            expires_in: lifetime,
            refresh_token: None,
            scope: scopes.join(" "),
        })
    }

    pub(crate) async fn new_refresh_token(
        &self,
        conn: &impl ConnectionTrait,
        user: Uuid,
        family: Uuid,
        scopes: &str,
    ) -> Result<String, OAuthError> {
        let token = secrets::random_secret();
        let now = now_ms();
        let lifetime = i64::try_from(self.inner.config.refresh_token_lifetime.as_millis())
            .unwrap_or(i64::MAX / 2);
        refresh_tokens::Entity::insert(refresh_tokens::ActiveModel {
            id: Set(Uuid::new_v4()),
            family: Set(family),
            user_id: Set(user),
            token_hash: Set(secrets::digest(&token)),
            scopes: Set(scopes.to_owned()),
            created_ms: Set(now),
            expires_ms: Set(now.saturating_add(lifetime)),
            used_ms: Set(None),
            revoked: Set(false),
        })
        .exec_without_returning(conn)
        .await?;
        Ok(token)
    }

    pub(crate) async fn require_active_user(&self, user: Uuid) -> Result<(), OAuthError> {
        match self
            .inner
            .objects
            .user(user)
            .await?
            .map(|effective| effective.active())
        {
            Some(true) => Ok(()),
            Some(false) => Err(OAuthError::invalid_grant(
                "the user is disabled, or a user above it is",
            )),
            None => Err(OAuthError::invalid_grant("the user no longer exists")),
        }
    }

    /// Runs a grant and counts its outcome.
    pub(crate) async fn counted(
        &self,
        grant: &'static str,
        attempt: impl std::future::Future<Output = Result<Issued, OAuthError>>,
    ) -> Result<Issued, OAuthError> {
        let result = attempt.await;
        self.inner.metrics.count(grant, &result);
        result
    }

    /// The `password` grant.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        scope: &str,
        address: Option<IpAddr>,
    ) -> Result<Issued, OAuthError> {
        let attempt = self.password_grant_inner(username, password, scope, address);
        self.counted("password", attempt).await
    }

    pub(crate) async fn password_grant_inner(
        &self,
        username: &str,
        password: &str,
        scope: &str,
        address: Option<IpAddr>,
    ) -> Result<Issued, OAuthError> {
        let user = self.check_password(username, password, address).await?;
        let scopes = resolve_scopes(scope, scopes::USER_SCOPES)?;
        let issued = self.login(user, &scopes, Uuid::new_v4()).await?;
        tracing::info!(%user, "password login");
        Ok(issued)
    }

    /// The user `username` names, when `password` is theirs and they are effectively ACTIVE.
    pub(crate) async fn check_password(
        &self,
        username: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Uuid, OAuthError> {
        let user = self.verify_password(username, password, address).await?;
        self.require_active_user(user).await?;
        Ok(user)
    }

    /// The user `username` names, when `password` is theirs: throttled per username and address
    /// (the token endpoint and the login page alike), and as slow for an unknown username as for
    /// a known one. Whether the user may still sign in is the caller's next question.
    pub(crate) async fn verify_password(
        &self,
        username: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Uuid, OAuthError> {
        if username.is_empty() || username.len() > 64 {
            return Err(OAuthError::invalid_request(
                "`username` must be 1 to 64 characters",
            ));
        }
        if password.is_empty() || password.len() > 1024 {
            return Err(OAuthError::invalid_request(
                "`password` must be 1 to 1024 bytes",
            ));
        }
        if let Some(wait) = self.inner.throttle.check(username, address) {
            return Err(OAuthError::slow_down(wait));
        }
        let found = credentials::Entity::find()
            .filter(credentials::Column::Username.eq(username))
            .one(&self.inner.db)
            .await?;
        let hash = found.as_ref().map_or_else(
            || self.inner.dummy_hash.clone(),
            |c| c.password_hash.clone(),
        );
        let presented = password.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || secrets::verify_password(&presented, &hash))
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let Some(credential) = found.filter(|_| matches) else {
            self.inner.throttle.failed(username, address);
            return Err(OAuthError::invalid_grant("wrong username or password"));
        };
        self.inner.throttle.succeeded(username);
        Ok(credential.user_id)
    }

    /// A new login of `user` in `family`: a refresh token and an access token for `scopes`.
    pub(crate) async fn login(
        &self,
        user: Uuid,
        scopes: &[String],
        family: Uuid,
    ) -> Result<Issued, OAuthError> {
        let scope = scopes.join(" ");
        let refresh = self
            .new_refresh_token(&self.inner.db, user, family, &scope)
            .await?;
        let issued = self
            .issue_access(Kind::User, user, None, scopes, Some(family))
            .await?;
        Ok(Issued {
            refresh_token: Some(refresh),
            ..issued
        })
    }

    /// The `refresh_token` grant: rotates the token; a reused token revokes its family.
    pub async fn refresh_grant(&self, token: &str, scope: &str) -> Result<Issued, OAuthError> {
        self.counted("refresh_token", self.refresh_grant_inner(token, scope))
            .await
    }

    pub(crate) async fn refresh_grant_inner(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<Issued, OAuthError> {
        if token.is_empty() || token.len() > 256 {
            return Err(OAuthError::invalid_request(
                "`refresh_token` is missing or malformed",
            ));
        }
        let row = refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(secrets::digest(token)))
            .one(&self.inner.db)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("unknown refresh token"))?;
        if row.revoked {
            return Err(OAuthError::invalid_grant(
                "the refresh token has been revoked",
            ));
        }
        if row.used_ms.is_some() {
            self.reuse_detected(&row).await?;
            return Err(OAuthError::invalid_grant(
                "the refresh token was already used; every token of this login is now revoked",
            ));
        }
        let now = now_ms();
        if row.expires_ms <= now {
            return Err(OAuthError::invalid_grant(
                "the refresh token has expired; log in again",
            ));
        }
        let family_scopes: Vec<&str> = row.scopes.split_whitespace().collect();
        let scopes = resolve_scopes(scope, &family_scopes)?;
        self.require_active_user(row.user_id).await?;
        // Mark it used only if nobody else did in the meantime: one winner per token.
        let updated = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::UsedMs, Expr::value(now))
            .filter(refresh_tokens::Column::Id.eq(row.id))
            .filter(refresh_tokens::Column::UsedMs.is_null())
            .filter(refresh_tokens::Column::Revoked.eq(false))
            .exec(&self.inner.db)
            .await?;
        if updated.rows_affected != 1 {
            self.reuse_detected(&row).await?;
            return Err(OAuthError::invalid_grant(
                "the refresh token was already used; every token of this login is now revoked",
            ));
        }
        let refresh = self
            .new_refresh_token(&self.inner.db, row.user_id, row.family, &row.scopes)
            .await?;
        let issued = self
            .issue_access(Kind::User, row.user_id, None, &scopes, Some(row.family))
            .await?;
        Ok(Issued {
            refresh_token: Some(refresh),
            ..issued
        })
    }

    pub(crate) async fn reuse_detected(
        &self,
        row: &refresh_tokens::Model,
    ) -> Result<(), OAuthError> {
        tracing::warn!(user = %row.user_id, family = %row.family, "refresh token reused: revoking its family");
        self.revoke_family(row.family).await?;
        Ok(())
    }

    /// Checks a client's secret (throttled, constant-time) and returns the client.
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: &str,
        address: Option<IpAddr>,
    ) -> Result<clients::Model, OAuthError> {
        if client_id.is_empty() || client_id.len() > 128 || secret.len() > 256 {
            return Err(OAuthError::invalid_client());
        }
        if let Some(wait) = self.inner.throttle.check(client_id, address) {
            return Err(OAuthError::slow_down(wait));
        }
        let client = clients::Entity::find_by_id(client_id.to_owned())
            .one(&self.inner.db)
            .await?;
        let stored = client.as_ref().map_or("", |c| c.secret_hash.as_str());
        let matches = secrets::digest_matches(secret, stored);
        let Some(client) = client.filter(|_| matches) else {
            self.inner.throttle.failed(client_id, address);
            return Err(OAuthError::invalid_client());
        };
        self.inner.throttle.succeeded(client_id);
        Ok(client)
    }

    /// The `client_credentials` grant, for things and services.
    pub async fn client_credentials_grant(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        address: Option<IpAddr>,
    ) -> Result<Issued, OAuthError> {
        let attempt = self.client_credentials_grant_inner(client_id, secret, scope, address);
        self.counted("client_credentials", attempt).await
    }

    pub(crate) async fn client_credentials_grant_inner(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        address: Option<IpAddr>,
    ) -> Result<Issued, OAuthError> {
        let client = self.authenticate_client(client_id, secret, address).await?;
        let allowed: Vec<&str> = client.scopes.split_whitespace().collect();
        let scopes = resolve_scopes(scope, &allowed)?;
        let (kind, owner) = if client.kind == kind_number(Kind::Thing) {
            match self.inner.objects.thing(client.subject).await? {
                Some(effective) if effective.active() => (Kind::Thing, effective.owner),
                Some(_) => {
                    return Err(OAuthError::invalid_grant(
                        "the thing is disabled, or its owner (or a user above it) is",
                    ));
                }
                None => return Err(OAuthError::invalid_client()),
            }
        } else {
            (Kind::Service, None)
        };
        self.issue_access(kind, client.subject, owner, &scopes, None)
            .await
    }
}
