//! The signing key ring, shared by every sso replica through the database.
//!
//! Each key row carries when it starts signing (`created_ms`) and, once a successor exists, when
//! it stops (`retired_ms`). A rotation publishes the next key [`KeyTiming::publish_ahead_ms`]
//! before it signs, so every replica (each re-reads the ring every minute) publishes a key before
//! any token it signed is presented; a retired key stays published until every token it signed
//! has expired. Making the first key and rotating run under one database lock, so replicas
//! starting or rotating together agree on one key.

use std::sync::{Arc, RwLock};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, sea_query::Expr,
};
use sipmba_auth::signing::{JwkSet, SigningKey};
use sipmba_runtime::{Clock, ServiceError, ServiceResult};
use uuid::Uuid;

use crate::entity::keys;

/// The PostgreSQL advisory lock held while the ring is changed.
const RING_LOCK: i64 = 74_000_103;

/// How long keys are published around their signing time.
#[derive(Clone, Copy, Debug)]
pub struct KeyTiming {
    /// How long a retired key stays published: the longest access-token lifetime.
    pub keep_retired_ms: i64,
    /// How long a new key is published before it signs.
    pub publish_ahead_ms: i64,
}

impl KeyTiming {
    /// Two minutes ahead: twice the interval at which every replica re-reads the ring.
    pub const PUBLISH_AHEAD_MS: i64 = 2 * 60_000;
}

/// The published keys with when each signs, newest first.
struct Ring(Vec<(Arc<SigningKey>, keys::Model)>);

impl Ring {
    /// The key signing at `now`; the ring always holds one (reading it makes one when not).
    fn at(&self, now: i64) -> &(Arc<SigningKey>, keys::Model) {
        self.0
            .iter()
            .find(|(_, row)| signs_at(row, now))
            .or_else(|| self.0.iter().find(|(_, row)| row.created_ms <= now))
            .or_else(|| self.0.last())
            .unwrap_or_else(|| unreachable!("a read ring holds a key"))
    }
}

/// Signing keys shared by every sso replica through the database.
pub struct KeyRing {
    db: DatabaseConnection,
    timing: KeyTiming,
    clock: Clock,
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

/// Whether `row` signs at `now`: it has started and not yet been retired.
fn signs_at(row: &keys::Model, now: i64) -> bool {
    row.created_ms <= now && row.retired_ms.is_none_or(|retired| retired > now)
}

async fn rows(db: &impl ConnectionTrait) -> ServiceResult<Vec<keys::Model>> {
    Ok(keys::Entity::find()
        .order_by_desc(keys::Column::CreatedMs)
        .order_by_desc(keys::Column::Kid)
        .all(db)
        .await?)
}

/// A new key that takes over at `starts_ms` from every key not yet retired; returns its `kid`.
async fn succeed(db: &impl ConnectionTrait, starts_ms: i64) -> ServiceResult<String> {
    keys::Entity::update_many()
        .col_expr(keys::Column::RetiredMs, Expr::value(starts_ms))
        .filter(keys::Column::RetiredMs.is_null())
        .exec(db)
        .await?;
    insert(db, starts_ms).await
}

/// A new key that starts signing at `starts_ms`.
async fn insert(db: &impl ConnectionTrait, starts_ms: i64) -> ServiceResult<String> {
    let kid = format!("k-{}", Uuid::new_v4().simple());
    let key =
        SigningKey::generate(kid.clone()).map_err(|e| ServiceError::Internal(e.to_string()))?;
    keys::Entity::insert(keys::ActiveModel {
        kid: Set(kid.clone()),
        secret: Set(URL_SAFE_NO_PAD.encode(key.secret_bytes())),
        created_ms: Set(starts_ms),
        retired_ms: Set(None),
    })
    .exec_without_returning(db)
    .await?;
    Ok(kid)
}

impl KeyRing {
    /// Loads the keys, making the first one when there is none.
    pub async fn load(
        db: DatabaseConnection,
        timing: KeyTiming,
        clock: Clock,
    ) -> ServiceResult<Self> {
        let ring = Self::read(&db, timing, &clock).await?;
        Ok(Self {
            db,
            timing,
            clock,
            ring: RwLock::new(ring),
        })
    }

    async fn read(
        db: &DatabaseConnection,
        timing: KeyTiming,
        clock: &Clock,
    ) -> ServiceResult<Ring> {
        let now = clock.now_ms();
        keys::Entity::delete_many()
            .filter(keys::Column::RetiredMs.lt(now.saturating_sub(timing.keep_retired_ms)))
            .exec(db)
            .await?;
        let mut rows = rows(db).await?;
        if !rows.iter().any(|k| signs_at(k, now)) {
            rows = Self::first_key(db, now).await?;
        }
        let keys = rows
            .into_iter()
            .map(|row| Ok((decode(&row)?, row)))
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(Ring(keys))
    }

    /// Makes a key that signs from `now` unless another replica made one first (both look under
    /// the ring's lock); returns the rows after it.
    async fn first_key(db: &DatabaseConnection, now: i64) -> ServiceResult<Vec<keys::Model>> {
        let txn = sipmba_runtime::db::begin_locked(db, RING_LOCK).await?;
        let mut rows = rows(&txn).await?;
        if !rows.iter().any(|k| signs_at(k, now)) {
            // Whatever is left unretired never signs now (its start is ahead of this clock).
            let kid = succeed(&txn, now).await?;
            tracing::info!(%kid, "created a signing key");
            rows = self::rows(&txn).await?;
        }
        txn.commit().await?;
        Ok(rows)
    }

    /// Re-reads the keys (another replica may have rotated).
    pub async fn reload(&self) -> ServiceResult<()> {
        let ring = Self::read(&self.db, self.timing, &self.clock).await?;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(())
    }

    /// Publishes a new key that takes over signing `publish_ahead_ms` from now; returns its `kid`.
    pub async fn rotate(&self) -> ServiceResult<String> {
        self.rotate_when(|_| true)
            .await
            .map(|kid| kid.unwrap_or_default())
    }

    /// Rotates when the newest key (the one signing or about to) started `period_ms` ago or
    /// earlier, checked under the ring's lock so that replicas due together rotate once; returns
    /// the new `kid` after a rotation.
    pub async fn rotate_when_older(&self, period_ms: i64) -> ServiceResult<Option<String>> {
        let now = self.clock.now_ms();
        self.rotate_when(|newest| now.saturating_sub(newest) >= period_ms)
            .await
    }

    async fn rotate_when(&self, due: impl FnOnce(i64) -> bool) -> ServiceResult<Option<String>> {
        let txn = sipmba_runtime::db::begin_locked(&self.db, RING_LOCK).await?;
        let newest = rows(&txn)
            .await?
            .iter()
            .filter(|row| row.retired_ms.is_none())
            .map(|row| row.created_ms)
            .max();
        if newest.is_some_and(|newest| !due(newest)) {
            txn.rollback().await?;
            return Ok(None);
        }
        let starts = self
            .clock
            .now_ms()
            .saturating_add(self.timing.publish_ahead_ms);
        let kid = succeed(&txn, starts).await?;
        txn.commit().await?;
        self.reload().await?;
        tracing::info!(%kid, starts_ms = starts, "published the next signing key");
        Ok(Some(kid))
    }

    /// The key that signs now: the newest started one, so a published successor takes over at
    /// its start on every replica without waiting for a re-read.
    pub fn current(&self) -> Arc<SigningKey> {
        let now = self.clock.now_ms();
        self.ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .at(now)
            .0
            .clone()
    }

    /// Every published key: the next one, the current one and retired ones whose tokens may live.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .ring
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .iter()
                .map(|(key, _)| key.jwk())
                .collect(),
        }
    }
}
