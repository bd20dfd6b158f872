//! Accounts: users registered and their passwords, things' secrets, service clients.

use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use sipmba_auth::{Kind, Principal, scopes};
use sipmba_runtime::{ServiceError, ServiceResult, ids::now_ms};
use uuid::Uuid;

use crate::{
    Sso,
    entity::{clients, credentials, issued, refresh_tokens},
    secrets,
};

use crate::{
    OAuthError, OAuthErrorCode,
    grants::{Issued, kind_number},
};

impl Sso {
    /// Registers a root user with a password.
    pub async fn register(&self, username: &str, password: &str) -> ServiceResult<Uuid> {
        secrets::check_password("password", password)?;
        let user = self.inner.objects.create_root_user(username).await?;
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
    pub(crate) async fn revoke_logins(&self, user: Uuid, keep: Option<Uuid>) -> ServiceResult<u32> {
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
            .username(as_caller, user)
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
                    .controls_thing(caller.subject, thing)
                    .await?
            }
            Kind::Service => caller.has_scope(scopes::OBJECTS_ADMIN),
            Kind::Thing => false,
        };
        if !allowed {
            return Err(ServiceError::not_found(format!("thing {thing} not found")));
        }
        let Some(owner) = self
            .inner
            .objects
            .thing(thing)
            .await?
            .and_then(|effective| effective.owner)
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
    pub(crate) async fn put_client(&self, client: clients::Model) -> ServiceResult<()> {
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
