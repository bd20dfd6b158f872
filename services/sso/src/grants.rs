//! The grants, introspection, revocation and accounts: everything the HTTP and gRPC fronts call.

use std::{net::IpAddr, time::Duration};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr,
};
use sipmba_auth::{Kind, Principal, scopes, signing::AccessClaims};
use sipmba_runtime::{ServiceError, ServiceResult, ids::now_ms};
use uuid::Uuid;

use crate::{
    Sso,
    entity::{clients, credentials, issued, refresh_tokens, revocations},
    secrets,
};

/// RFC 6749 §5.2 error codes (and `slow_down` for throttling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// Malformed request.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant (password, refresh token) is invalid, expired, revoked or reused.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// Unknown grant type.
    UnsupportedGrantType,
    /// A requested scope is unknown or not allowed.
    InvalidScope,
    /// Too many failed attempts; retry later.
    SlowDown,
    /// Unexpected failure.
    ServerError,
    /// A dependency is down; retry later.
    TemporarilyUnavailable,
}

impl OAuthErrorCode {
    /// The code as written in an error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::SlowDown => "slow_down",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An OAuth error: a code, a description a person can act on, and when to retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    /// The RFC 6749 code.
    pub code: OAuthErrorCode,
    /// What went wrong (never a secret).
    pub description: String,
    /// For `slow_down` and `temporarily_unavailable`.
    pub retry_after: Option<Duration>,
}

impl OAuthError {
    pub(crate) fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }

    fn invalid_client() -> Self {
        Self::new(
            OAuthErrorCode::InvalidClient,
            "unknown client or wrong client secret",
        )
    }

    fn slow_down(retry_after: Duration) -> Self {
        Self {
            code: OAuthErrorCode::SlowDown,
            description: format!(
                "too many failed attempts; try again in {} s",
                retry_after.as_secs().max(1)
            ),
            retry_after: Some(retry_after),
        }
    }
}

impl From<ServiceError> for OAuthError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                Self {
                    code: OAuthErrorCode::TemporarilyUnavailable,
                    description: "a dependency of sso is unavailable; retry shortly".into(),
                    retry_after: Some(Duration::from_secs(2)),
                }
            }
            ServiceError::InvalidArgument(msg) => Self::invalid_request(msg),
            other => {
                tracing::error!(detail = %other, "sso internal error");
                Self::new(
                    OAuthErrorCode::ServerError,
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl From<sea_orm::DbErr> for OAuthError {
    fn from(e: sea_orm::DbErr) -> Self {
        ServiceError::from(e).into()
    }
}

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

/// The answer of introspection (RFC 7662 §2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Introspection {
    /// Usable right now.
    pub active: bool,
    /// Scopes.
    pub scope: String,
    /// Client id (things and services).
    pub client_id: Option<String>,
    /// Subject.
    pub sub: Option<Uuid>,
    /// Kind of the subject.
    pub kind: Option<Kind>,
    /// Expiry (s).
    pub exp: Option<i64>,
    /// Issue time (s).
    pub iat: Option<i64>,
    /// `access_token` or `refresh_token`.
    pub token_type: Option<&'static str>,
    /// Token id.
    pub jti: Option<String>,
    /// Owner of a thing.
    pub owner: Option<Uuid>,
}

fn resolve_scopes(requested: &str, allowed: &[&str]) -> Result<Vec<String>, OAuthError> {
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
    fn lifetime(&self, kind: Kind) -> Duration {
        let c = &self.inner.config;
        match kind {
            Kind::User => c.user_token_lifetime,
            Kind::Thing => c.thing_token_lifetime,
            Kind::Service => c.service_token_lifetime,
        }
    }

    async fn issue_access(
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

    async fn new_refresh_token(
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

    async fn require_active_user(&self, user: Uuid) -> Result<(), OAuthError> {
        match self
            .inner
            .objects
            .user_active(&self.inner.keys, user)
            .await?
        {
            Some(true) => Ok(()),
            Some(false) => Err(OAuthError::invalid_grant(
                "the user is disabled, or a user above it is",
            )),
            None => Err(OAuthError::invalid_grant("the user no longer exists")),
        }
    }

    /// Runs a grant and counts its outcome.
    async fn counted(
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

    async fn password_grant_inner(
        &self,
        username: &str,
        password: &str,
        scope: &str,
        address: Option<IpAddr>,
    ) -> Result<Issued, OAuthError> {
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
        self.require_active_user(credential.user_id).await?;
        let scopes = resolve_scopes(scope, scopes::USER_SCOPES)?;
        self.inner.throttle.succeeded(username);
        let family = Uuid::new_v4();
        let scope = scopes.join(" ");
        let refresh = self
            .new_refresh_token(&self.inner.db, credential.user_id, family, &scope)
            .await?;
        let issued = self
            .issue_access(Kind::User, credential.user_id, None, &scopes, Some(family))
            .await?;
        tracing::info!(user = %credential.user_id, "password login");
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

    async fn refresh_grant_inner(&self, token: &str, scope: &str) -> Result<Issued, OAuthError> {
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

    async fn reuse_detected(&self, row: &refresh_tokens::Model) -> Result<(), OAuthError> {
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

    async fn client_credentials_grant_inner(
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
            match self
                .inner
                .objects
                .thing_active(&self.inner.keys, client.subject)
                .await?
            {
                Some((true, owner)) => (Kind::Thing, Some(owner)),
                Some((false, _)) => {
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

    // ----- introspection and revocation -------------------------------------------------------

    /// RFC 7662: what a token is, and whether it is usable now.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, OAuthError> {
        if let Ok(p) = self.inner.verifier.verify(token).await {
            let active = match p.kind {
                Kind::User => {
                    self.inner
                        .objects
                        .user_active(&self.inner.keys, p.subject)
                        .await?
                        == Some(true)
                }
                Kind::Thing => matches!(
                    self.inner
                        .objects
                        .thing_active(&self.inner.keys, p.subject)
                        .await?,
                    Some((true, _))
                ),
                Kind::Service => true,
            };
            if !active {
                return Ok(Introspection::default());
            }
            let client_id = clients::Entity::find()
                .filter(clients::Column::Subject.eq(p.subject))
                .one(&self.inner.db)
                .await?
                .map(|c| c.client_id);
            return Ok(Introspection {
                active: true,
                scope: p.scopes.iter().cloned().collect::<Vec<_>>().join(" "),
                client_id,
                sub: Some(p.subject),
                kind: Some(p.kind),
                exp: Some(p.expires_at),
                iat: Some(p.issued_at),
                token_type: Some("access_token"),
                jti: Some(p.token_id.clone()),
                owner: p.owner,
            });
        }
        let Some(row) = self.refresh_row(token).await? else {
            return Ok(Introspection::default());
        };
        let now = now_ms();
        if row.revoked || row.used_ms.is_some() || row.expires_ms <= now {
            return Ok(Introspection::default());
        }
        if self
            .inner
            .objects
            .user_active(&self.inner.keys, row.user_id)
            .await?
            != Some(true)
        {
            return Ok(Introspection::default());
        }
        Ok(Introspection {
            active: true,
            scope: row.scopes,
            client_id: None,
            sub: Some(row.user_id),
            kind: Some(Kind::User),
            exp: Some(row.expires_ms / 1000),
            iat: Some(row.created_ms / 1000),
            token_type: Some("refresh_token"),
            jti: Some(row.id.to_string()),
            owner: None,
        })
    }

    async fn refresh_row(&self, token: &str) -> Result<Option<refresh_tokens::Model>, OAuthError> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        Ok(refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(secrets::digest(token)))
            .one(&self.inner.db)
            .await?)
    }

    /// RFC 7009: revokes an access token, or a refresh token with its whole family. Unknown
    /// tokens are fine.
    pub async fn revoke(&self, token: &str) -> Result<(), OAuthError> {
        match self.inner.verifier.verify(token).await {
            Ok(p) => {
                let jti = p.token_id.clone();
                self.revoke_access(&jti, p.expires_at).await?;
                tracing::info!(subject = %p.subject, "access token revoked");
                return Ok(());
            }
            Err(sipmba_auth::AuthError::Revoked) => return Ok(()),
            Err(_) => {}
        }
        if let Some(row) = self.refresh_row(token).await? {
            self.revoke_family(row.family).await?;
            tracing::info!(user = %row.user_id, "refresh token family revoked");
        }
        Ok(())
    }

    async fn revoke_access(&self, jti: &str, exp_secs: i64) -> ServiceResult<()> {
        revocations::Entity::insert(revocations::ActiveModel {
            jti: Set(Some(jti.to_owned())),
            subject: Set(None),
            not_before_ms: Set(None),
            kind: Set(0),
            expires_ms: Set(exp_secs.saturating_mul(1000)),
            ..Default::default()
        })
        .exec_without_returning(&self.inner.db)
        .await?;
        self.inner.revoked.notify_waiters();
        self.inner
            .revocations
            .revoke_token(jti, exp_secs, now_ms() / 1000);
        Ok(())
    }

    /// Revokes every refresh token of a login and the live access tokens issued from it.
    pub async fn revoke_family(&self, family: Uuid) -> ServiceResult<()> {
        refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::Revoked, Expr::value(true))
            .filter(refresh_tokens::Column::Family.eq(family))
            .exec(&self.inner.db)
            .await?;
        let live = issued::Entity::find()
            .filter(issued::Column::Family.eq(family))
            .filter(issued::Column::ExpiresMs.gt(now_ms()))
            .all(&self.inner.db)
            .await?;
        for token in live {
            self.revoke_access(&token.jti.to_string(), token.expires_ms / 1000)
                .await?;
        }
        Ok(())
    }

    /// Revokes every token of `subject` (of `kind`, when known) issued up to `at_ms`, refresh
    /// tokens included.
    pub async fn revoke_subject(
        &self,
        subject: Uuid,
        kind: Option<Kind>,
        at_ms: i64,
    ) -> ServiceResult<()> {
        let not_before = at_ms / 1000 + 1;
        let keep = i64::try_from(self.inner.config.longest_access_lifetime().as_millis())
            .unwrap_or(i64::MAX / 2);
        revocations::Entity::insert(revocations::ActiveModel {
            jti: Set(None),
            subject: Set(Some(subject)),
            not_before_ms: Set(Some(not_before * 1000)),
            kind: Set(kind.map_or(0, kind_number)),
            expires_ms: Set(at_ms.saturating_add(keep)),
            ..Default::default()
        })
        .exec_without_returning(&self.inner.db)
        .await?;
        self.inner.revoked.notify_waiters();
        self.inner.revocations.revoke_subject(subject, not_before);
        refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::Revoked, Expr::value(true))
            .filter(refresh_tokens::Column::UserId.eq(subject))
            .filter(refresh_tokens::Column::CreatedMs.lt(not_before * 1000))
            .exec(&self.inner.db)
            .await?;
        Ok(())
    }

    /// Loads the live revocations into the in-memory list (at start).
    pub(crate) async fn load_revocations(&self) -> ServiceResult<()> {
        let now = now_ms();
        revocations::Entity::delete_many()
            .filter(revocations::Column::ExpiresMs.lt(now))
            .exec(&self.inner.db)
            .await?;
        issued::Entity::delete_many()
            .filter(issued::Column::ExpiresMs.lt(now))
            .exec(&self.inner.db)
            .await?;
        for row in revocations::Entity::find().all(&self.inner.db).await? {
            match (row.jti, row.subject, row.not_before_ms) {
                (Some(jti), _, _) => {
                    self.inner
                        .revocations
                        .revoke_token(jti, row.expires_ms / 1000, now / 1000)
                }
                (None, Some(subject), Some(nbf)) => {
                    self.inner.revocations.revoke_subject(subject, nbf / 1000)
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ----- accounts ---------------------------------------------------------------------------

    /// Registers a root user with a password.
    pub async fn register(&self, username: &str, password: &str) -> ServiceResult<Uuid> {
        secrets::check_password("password", password)?;
        let user = self
            .inner
            .objects
            .create_root_user(&self.inner.keys, username)
            .await?;
        self.set_password(user, username, password).await?;
        tracing::info!(%user, "registered a root user");
        Ok(user)
    }

    /// Changes the caller's password and revokes its other logins; returns how many.
    pub async fn change_password(
        &self,
        caller: &Principal,
        current: &str,
        new: &str,
    ) -> Result<u32, OAuthError> {
        if caller.kind != Kind::User {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "only users have passwords",
            ));
        }
        if let Err(e) = secrets::check_password("new_password", new) {
            return Err(OAuthError::invalid_request(e.to_string()));
        }
        let account = caller.subject.to_string();
        if let Some(wait) = self.inner.throttle.check(&account, None) {
            return Err(OAuthError::slow_down(wait));
        }
        let credential = credentials::Entity::find_by_id(caller.subject)
            .one(&self.inner.db)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("this user has no password"))?;
        let (presented, hash) = (current.to_owned(), credential.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&presented, &hash))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        if !ok {
            self.inner.throttle.failed(&account, None);
            return Err(OAuthError::invalid_grant("the current password is wrong"));
        }
        self.set_password(caller.subject, &credential.username, new)
            .await?;
        let keep = match Uuid::parse_str(&caller.token_id) {
            Ok(jti) => issued::Entity::find_by_id(jti)
                .one(&self.inner.db)
                .await?
                .and_then(|t| t.family),
            Err(_) => None,
        };
        let revoked = self.revoke_logins(caller.subject, keep).await?;
        tracing::info!(user = %caller.subject, revoked, "password changed");
        Ok(revoked)
    }

    /// Revokes every refresh-token family of `user` but `keep`; returns how many.
    async fn revoke_logins(&self, user: Uuid, keep: Option<Uuid>) -> ServiceResult<u32> {
        let families: std::collections::HashSet<Uuid> = refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::UserId.eq(user))
            .filter(refresh_tokens::Column::Revoked.eq(false))
            .all(&self.inner.db)
            .await?
            .into_iter()
            .map(|t| t.family)
            .filter(|f| Some(*f) != keep)
            .collect();
        for family in &families {
            self.revoke_family(*family).await?;
        }
        Ok(u32::try_from(families.len()).unwrap_or(u32::MAX))
    }

    /// Sets the password of `user`, another user of the caller's subtree (a child's first
    /// password, or a reset), and revokes that user's logins; returns how many. `bearer` is the
    /// caller's own access token: Objects decides with it whether the user is in the subtree.
    pub async fn set_user_password(
        &self,
        caller: &Principal,
        bearer: &str,
        user: Uuid,
        password: &str,
    ) -> ServiceResult<u32> {
        secrets::check_password("new_password", password)?;
        let as_caller = match caller.kind {
            Kind::User if !caller.has_scope(scopes::USERS_WRITE) => {
                return Err(ServiceError::PermissionDenied(
                    "setting a user's password needs the users:write scope".into(),
                ));
            }
            Kind::User if caller.subject == user => {
                return Err(ServiceError::FailedPrecondition(
                    "this is your own account: change your password with ChangePassword".into(),
                ));
            }
            Kind::User => Some(bearer),
            Kind::Service if caller.has_scope(scopes::OBJECTS_ADMIN) => None,
            _ => {
                return Err(ServiceError::PermissionDenied(
                    "only users above the user, or services with objects:admin, set passwords"
                        .into(),
                ));
            }
        };
        let username = self
            .inner
            .objects
            .username(&self.inner.keys, as_caller, user)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("user {user} not found")))?;
        self.set_password(user, &username, password).await?;
        let revoked = self.revoke_logins(user, None).await?;
        tracing::info!(%user, by = %caller.subject, revoked, "password set");
        Ok(revoked)
    }

    /// Stores (or replaces) the password of `user`.
    pub async fn set_password(
        &self,
        user: Uuid,
        username: &str,
        password: &str,
    ) -> ServiceResult<()> {
        let cost = self.inner.config.password_cost;
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || cost.hash(&password))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(ServiceError::Internal)?;
        credentials::Entity::delete_by_id(user)
            .exec(&self.inner.db)
            .await?;
        credentials::Entity::insert(credentials::ActiveModel {
            user_id: Set(user),
            username: Set(username.to_owned()),
            password_hash: Set(hash),
            updated_ms: Set(now_ms()),
        })
        .exec_without_returning(&self.inner.db)
        .await?;
        Ok(())
    }

    /// Creates or replaces the client of `thing`; returns `(client_id, secret)`. The caller must
    /// control the thing (own it, or be above its owner).
    pub async fn issue_thing_secret(
        &self,
        caller: &Principal,
        thing: Uuid,
    ) -> ServiceResult<(String, String)> {
        self.thing_secret(caller, thing, None).await
    }

    /// Issues (`rotate` = Some(false): only when there is none yet) or rotates (Some(true): only
    /// when there is one) a thing's secret; `None` does whichever applies.
    pub async fn thing_secret(
        &self,
        caller: &Principal,
        thing: Uuid,
        rotate: Option<bool>,
    ) -> ServiceResult<(String, String)> {
        let allowed = match caller.kind {
            Kind::User => {
                self.inner
                    .objects
                    .controls_thing(&self.inner.keys, caller.subject, thing)
                    .await?
            }
            Kind::Service => caller.has_scope(scopes::OBJECTS_ADMIN),
            Kind::Thing => false,
        };
        if !allowed {
            return Err(ServiceError::not_found(format!("thing {thing} not found")));
        }
        let Some((_, owner)) = self
            .inner
            .objects
            .thing_active(&self.inner.keys, thing)
            .await?
        else {
            return Err(ServiceError::not_found(format!("thing {thing} not found")));
        };
        let client_id = thing.to_string();
        let exists = clients::Entity::find_by_id(client_id.clone())
            .one(&self.inner.db)
            .await?
            .is_some();
        match (rotate, exists) {
            (Some(false), true) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "thing {thing} already has a secret; rotate it instead"
                )));
            }
            (Some(true), false) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "thing {thing} has no secret yet; issue one first"
                )));
            }
            _ => {}
        }
        let secret = secrets::random_secret();
        self.put_client(clients::Model {
            client_id: client_id.clone(),
            kind: kind_number(Kind::Thing),
            subject: thing,
            owner: Some(owner),
            secret_hash: secrets::digest(&secret),
            scopes: scopes::THING_SCOPES.join(" "),
            issued_ms: now_ms(),
        })
        .await?;
        tracing::info!(%thing, "issued a thing secret");
        Ok((client_id, secret))
    }

    /// Issues an access token to a service principal without a client (the `--dev` bootstrap).
    pub async fn issue_service_token(
        &self,
        subject: Uuid,
        scopes: &[&str],
    ) -> Result<Issued, OAuthError> {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.issue_access(Kind::Service, subject, None, &scopes, None)
            .await
    }

    /// Creates or replaces a service client (configuration bootstrap: the operator, processing);
    /// an existing client keeps its subject. Returns the subject.
    pub async fn ensure_service_client(
        &self,
        client_id: &str,
        secret: &str,
        subject: Uuid,
        scopes: &[&str],
    ) -> ServiceResult<Uuid> {
        // A client keeps its subject across restarts and secret changes.
        let subject = clients::Entity::find_by_id(client_id.to_owned())
            .one(&self.inner.db)
            .await?
            .map_or(subject, |existing| existing.subject);
        self.put_client(clients::Model {
            client_id: client_id.to_owned(),
            kind: kind_number(Kind::Service),
            subject,
            owner: None,
            secret_hash: secrets::digest(secret),
            scopes: scopes.join(" "),
            issued_ms: now_ms(),
        })
        .await?;
        Ok(subject)
    }

    /// Creates or replaces a client row (a new secret replaces the old one at once).
    async fn put_client(&self, client: clients::Model) -> ServiceResult<()> {
        let txn = sipmba_runtime::db::begin_write(&self.inner.db).await?;
        clients::Entity::delete_by_id(client.client_id.clone())
            .exec(&txn)
            .await?;
        clients::Entity::insert(clients::ActiveModel::from(client))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}
