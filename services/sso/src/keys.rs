//! The signing key ring: the newest unretired key signs; retired keys stay in the JWKS until every
//! token they signed has expired, so a rotation never invalidates a live token.

use std::sync::{Arc, RwLock};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    sea_query::Expr,
};
use sipmba_auth::signing::{JwkSet, SigningKey};
use sipmba_runtime::{ServiceError, ServiceResult, ids::now_ms};
use uuid::Uuid;

use crate::entity::keys;

struct Ring {
    current: Arc<SigningKey>,
    current_created_ms: i64,
    published: Vec<Arc<SigningKey>>,
}

/// Signing keys shared by every sso replica through the database.
pub struct KeyRing {
    db: DatabaseConnection,
    /// How long a retired key stays published: the longest access-token lifetime.
    keep_retired_ms: i64,
    ring: RwLock<Ring>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

fn decode(row: &keys::Model) -> ServiceResult<Arc<SigningKey>> {
    let bytes = URL_SAFE_NO_PAD
        .decode(&row.secret)
        .map_err(|_| ServiceError::Internal(format!("signing key {} is not base64url", row.kid)))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ServiceError::Internal(format!("signing key {} is not 32 bytes", row.kid)))?;
    SigningKey::from_bytes(row.kid.clone(), &secret)
        .map(Arc::new)
        .map_err(|e| ServiceError::Internal(e.to_string()))
}

impl KeyRing {
    /// Loads the keys, creating the first one when there is none.
    pub async fn load(db: DatabaseConnection, keep_retired_ms: i64) -> ServiceResult<Self> {
        let ring = Self::read(&db, keep_retired_ms).await?;
        Ok(Self {
            db,
            keep_retired_ms,
            ring: RwLock::new(ring),
        })
    }

    async fn read(db: &DatabaseConnection, keep_retired_ms: i64) -> ServiceResult<Ring> {
        let now = now_ms();
        keys::Entity::delete_many()
            .filter(keys::Column::RetiredMs.lt(now - keep_retired_ms))
            .exec(db)
            .await?;
        let mut rows = keys::Entity::find()
            .order_by_desc(keys::Column::CreatedMs)
            .all(db)
            .await?;
        if !rows.iter().any(|k| k.retired_ms.is_none()) {
            let row = Self::create(db).await?;
            rows.insert(0, row);
        }
        let mut published = Vec::with_capacity(rows.len());
        let mut current = None;
        for row in &rows {
            let key = decode(row)?;
            if current.is_none() && row.retired_ms.is_none() {
                current = Some((key.clone(), row.created_ms));
            }
            published.push(key);
        }
        let (current, current_created_ms) =
            current.ok_or_else(|| ServiceError::Internal("no active signing key".into()))?;
        Ok(Ring {
            current,
            current_created_ms,
            published,
        })
    }

    async fn create(db: &DatabaseConnection) -> ServiceResult<keys::Model> {
        let kid = format!("k-{}", Uuid::new_v4().simple());
        let key =
            SigningKey::generate(kid.clone()).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let row = keys::Model {
            kid: kid.clone(),
            secret: URL_SAFE_NO_PAD.encode(key.secret_bytes()),
            created_ms: now_ms(),
            retired_ms: None,
        };
        keys::Entity::insert(keys::ActiveModel {
            kid: Set(row.kid.clone()),
            secret: Set(row.secret.clone()),
            created_ms: Set(row.created_ms),
            retired_ms: Set(None),
        })
        .exec_without_returning(db)
        .await?;
        tracing::info!(%kid, "created a signing key");
        Ok(row)
    }

    /// Re-reads the keys (another replica may have rotated).
    pub async fn reload(&self) -> ServiceResult<()> {
        let ring = Self::read(&self.db, self.keep_retired_ms).await?;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(())
    }

    /// Retires the signing key and starts signing with a new one; returns the new `kid`.
    pub async fn rotate(&self) -> ServiceResult<String> {
        let now = now_ms();
        let row = Self::create(&self.db).await?;
        keys::Entity::update_many()
            .col_expr(keys::Column::RetiredMs, Expr::value(now))
            .filter(keys::Column::RetiredMs.is_null())
            .filter(keys::Column::Kid.ne(row.kid.clone()))
            .exec(&self.db)
            .await?;
        self.reload().await?;
        Ok(row.kid)
    }

    /// When the signing key was created (ms).
    pub fn current_created_ms(&self) -> i64 {
        self.ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current_created_ms
    }

    /// The key that signs now.
    pub fn current(&self) -> Arc<SigningKey> {
        self.ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// Every published key (current and retired-but-live).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .ring
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .published
                .iter()
                .map(|k| k.jwk())
                .collect(),
        }
    }
}
