//! Introspection (RFC 7662) and revocation (RFC 7009): of one token, of a refresh-token family,
//! of everything a subject holds.

use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use sipmba_auth::Kind;
use sipmba_runtime::{ServiceResult, ids::now_ms};
use uuid::Uuid;

use crate::{
    Sso,
    entity::{clients, issued, refresh_tokens, revocations},
    secrets,
};

use crate::{OAuthError, grants::kind_number};

/// How long past its expiry a row still matters: the largest leeway a verifier accepts.
const GRACE_MS: i64 = sipmba_auth::GRACE_SECS * 1000;

/// The PostgreSQL advisory lock each insert into the revocation outbox holds until its commit
/// (`sipmba_runtime::db::advisory_lock`), so that revocations commit in the order of their
/// sequence numbers and the publisher, which reads past its cursor, never skips one.
pub const OUTBOX_LOCK: i64 = 74_000_104;

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

impl Sso {
    /// RFC 7662: what a token is, and whether it is usable now.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, OAuthError> {
        if let Ok(p) = self.inner.verifier.verify(token).await {
            let active = match p.kind {
                Kind::User => self
                    .inner
                    .objects
                    .user(p.subject)
                    .await?
                    .is_some_and(|effective| effective.active()),
                Kind::Thing => self
                    .inner
                    .objects
                    .thing(p.subject)
                    .await?
                    .is_some_and(|effective| effective.active()),
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
        if !self
            .inner
            .objects
            .user(row.user_id)
            .await?
            .is_some_and(|effective| effective.active())
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

    pub(crate) async fn refresh_row(
        &self,
        token: &str,
    ) -> Result<Option<refresh_tokens::Model>, OAuthError> {
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

    /// Inserts a revocation into the outbox, under [`OUTBOX_LOCK`].
    async fn record_revocation(&self, row: revocations::ActiveModel) -> ServiceResult<()> {
        let txn = sipmba_runtime::db::begin_locked(&self.inner.db, OUTBOX_LOCK).await?;
        revocations::Entity::insert(row)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    pub(crate) async fn revoke_access(&self, jti: &str, exp_secs: i64) -> ServiceResult<()> {
        self.record_revocation(revocations::ActiveModel {
            jti: Set(Some(jti.to_owned())),
            subject: Set(None),
            not_before_ms: Set(None),
            kind: Set(0),
            expires_ms: Set(exp_secs.saturating_mul(1000)),
            ..Default::default()
        })
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
            // A token past its exp is still accepted within a verifier's leeway.
            .filter(issued::Column::ExpiresMs.gt(now_ms() - GRACE_MS))
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
        let expires_ms = at_ms.saturating_add(keep);
        self.record_revocation(revocations::ActiveModel {
            jti: Set(None),
            subject: Set(Some(subject)),
            not_before_ms: Set(Some(not_before * 1000)),
            kind: Set(kind.map_or(0, kind_number)),
            expires_ms: Set(expires_ms),
            ..Default::default()
        })
        .await?;
        self.inner.revoked.notify_waiters();
        self.inner
            .revocations
            .revoke_subject(subject, not_before, expires_ms / 1000, at_ms / 1000);
        refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::Revoked, Expr::value(true))
            .filter(refresh_tokens::Column::UserId.eq(subject))
            .filter(refresh_tokens::Column::CreatedMs.lt(not_before * 1000))
            .exec(&self.inner.db)
            .await?;
        Ok(())
    }

    /// Loads the live revocations into the in-memory list (at start), and deletes the rows past
    /// their expiry and any verifier's leeway.
    pub(crate) async fn load_revocations(&self) -> ServiceResult<()> {
        let now = now_ms();
        revocations::Entity::delete_many()
            .filter(revocations::Column::ExpiresMs.lt(now - GRACE_MS))
            .exec(&self.inner.db)
            .await?;
        issued::Entity::delete_many()
            .filter(issued::Column::ExpiresMs.lt(now - GRACE_MS))
            .exec(&self.inner.db)
            .await?;
        for row in revocations::Entity::find().all(&self.inner.db).await? {
            match (row.jti, row.subject, row.not_before_ms) {
                (Some(jti), _, _) => {
                    self.inner
                        .revocations
                        .revoke_token(jti, row.expires_ms / 1000, now / 1000)
                }
                (None, Some(subject), Some(nbf)) => self.inner.revocations.revoke_subject(
                    subject,
                    nbf / 1000,
                    row.expires_ms / 1000,
                    now / 1000,
                ),
                _ => {}
            }
        }
        Ok(())
    }
}
