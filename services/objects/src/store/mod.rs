//! The Objects store: every rule about the tree, things, channels and grants, on sea-orm (the same
//! code on PostgreSQL and SQLite). The gRPC layer only parses requests and calls in here.

use std::collections::{HashMap, HashSet};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement,
    sea_query::{Expr, ExprTrait, Query},
};
use sipmba_auth::{Kind, Principal, scopes};
use sipmba_proto::v1 as pb;
use sipmba_runtime::{
    ServiceError, ServiceResult,
    ids::{Page, now_ms, timestamp_from_ms},
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    entity::{self, ACTIVE, DISABLED, channel_grants, channel_things, object_events, thing_labels},
    validate,
};

mod access;
mod channels;
mod events;
mod things;
mod users;

pub use things::ThingScope;

/// Most things [`Store::accessible_things`] lists.
pub const MAX_ACCESSIBLE: usize = 10_000;
/// Most label selectors in a selection.
pub const MAX_SELECTORS: usize = 16;

/// The things [`Store::accessible_things`] considers.
#[derive(Debug, Clone)]
pub enum Selection {
    /// The things connected to a channel.
    Channel(Uuid),
    /// The things matching every selector, owned in the user's subtree or granted to it.
    Labels(Vec<pb::LabelSelector>),
}

/// Who is acting, as far as Objects is concerned.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A service holding `objects:admin`: acts on everything.
    Admin {
        /// `service:<uuid>`.
        actor: String,
    },
    /// An effectively active user: acts on its subtree.
    User {
        /// The user.
        id: Uuid,
        /// Its materialized path.
        path: String,
    },
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Admin { actor } => actor.clone(),
            Caller::User { id, .. } => format!("user:{id}"),
        }
    }

    fn controls(&self, path: &str) -> bool {
        match self {
            Caller::Admin { .. } => true,
            Caller::User { path: own, .. } => path.starts_with(own.as_str()),
        }
    }

    fn user_id(&self) -> Option<Uuid> {
        match self {
            Caller::Admin { .. } => None,
            Caller::User { id, .. } => Some(*id),
        }
    }
}

/// The Objects store.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    events: std::sync::Arc<Notify>,
}

/// The PostgreSQL advisory lock of changes to the tree's shape.
const TREE_LOCK: i64 = 74_000_001;

/// The path of user `$1` and the number of non-ACTIVE users among it and its ancestors.
const EFFECTIVE_STATE_SQL: &str = "WITH RECURSIVE anc(id, parent_id, state) AS ( \
       SELECT id, parent_id, state FROM users WHERE id = $1 \
       UNION ALL SELECT u.id, u.parent_id, u.state FROM users u JOIN anc ON u.id = anc.parent_id) \
     SELECT u.path AS path, (SELECT COUNT(*) FROM anc WHERE anc.state <> 1) AS disabled \
     FROM users u WHERE u.id = $1";

/// One path segment: a user id in unpadded base64url (22 characters).
fn segment(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The ids along a materialized path, root first.
fn path_ids(path: &str) -> Vec<Uuid> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .filter_map(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .filter_map(|b| Uuid::from_slice(&b).ok())
        .collect()
}

/// `[lo, hi)` bounds of the subtree under `path` (the node itself included): every path that
/// starts with `path`, which ends in `/`, and nothing else, since `0` follows `/` bytewise.
fn subtree_range(path: &str) -> (String, String) {
    let mut hi = path.to_owned();
    hi.pop();
    hi.push('0');
    (path.to_owned(), hi)
}

fn in_subtree<C: ColumnTrait>(col: C, path: &str) -> sea_orm::Condition {
    let (lo, hi) = subtree_range(path);
    sea_orm::Condition::all().add(col.gte(lo)).add(col.lt(hi))
}

fn state_enum(state: i16) -> pb::ObjectState {
    if state == ACTIVE {
        pb::ObjectState::Active
    } else {
        pb::ObjectState::Disabled
    }
}

fn user_id(id: Uuid) -> Option<pb::UserId> {
    Some(pb::UserId {
        value: id.to_string(),
    })
}

fn thing_id(id: Uuid) -> pb::ThingId {
    pb::ThingId {
        value: id.to_string(),
    }
}

fn unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// A thing as the caller sees it: through control of its owner, or only through a grant.
enum ThingAccess {
    Control,
    Grant,
}

impl Store {
    /// A store on `db` (migrated with [`crate::migration::Migrator`]).
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            events: std::sync::Arc::new(Notify::new()),
        }
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock up front, so that a
    /// read-then-write cannot fail on a concurrent writer); on PostgreSQL, changes to the tree's
    /// shape also take a transaction-scoped advisory lock, so that paths never go stale.
    async fn write(&self, tree: bool) -> ServiceResult<DatabaseTransaction> {
        let txn = sipmba_runtime::db::begin_write(&self.db).await?;
        if tree {
            sipmba_runtime::db::advisory_lock(&txn, TREE_LOCK).await?;
        }
        Ok(txn)
    }

    // ----- callers and visibility -------------------------------------------------------------

    /// Decides who the principal is for Objects: an `objects:admin` service, or an effectively
    /// active user. Things and other services manage nothing here.
    pub async fn caller(&self, principal: &Principal) -> ServiceResult<Caller> {
        match principal.kind {
            Kind::Service if principal.has_scope(scopes::OBJECTS_ADMIN) => Ok(Caller::Admin {
                actor: principal.actor(),
            }),
            Kind::User => {
                let (path, active) = self.lookup(principal.subject).await?.ok_or_else(|| {
                    ServiceError::Unauthenticated(
                        "the user this token was issued to no longer exists".into(),
                    )
                })?;
                if !active {
                    return Err(ServiceError::Unauthenticated(
                        "the user this token was issued to is disabled, or a user above it is"
                            .into(),
                    ));
                }
                Ok(Caller::User {
                    id: principal.subject,
                    path,
                })
            }
            kind => Err(ServiceError::PermissionDenied(format!(
                "objects are managed by users and by services holding `{}`; a {kind} token cannot",
                scopes::OBJECTS_ADMIN
            ))),
        }
    }

    /// A user's path, and whether it and every ancestor are ACTIVE, in one round trip: the
    /// ancestors are walked up `parent_id` by primary key inside the database (measured faster
    /// than an `IN` list built from the path; see the `tree` benchmark).
    pub async fn lookup(&self, id: Uuid) -> ServiceResult<Option<(String, bool)>> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DatabaseBackend::Postgres => EFFECTIVE_STATE_SQL.to_owned(),
            _ => EFFECTIVE_STATE_SQL.replace("$1", "?1"),
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let path: String = row.try_get("", "path")?;
        let disabled: i64 = row.try_get("", "disabled")?;
        Ok(Some((path, disabled == 0)))
    }

    /// Users along the given paths that are not ACTIVE (one query for a whole page).
    async fn disabled_among(&self, paths: &[&str]) -> ServiceResult<HashSet<Uuid>> {
        let ids: HashSet<Uuid> = paths.iter().flat_map(|p| path_ids(p)).collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut disabled = HashSet::new();
        let ids: Vec<Uuid> = ids.into_iter().collect();
        for chunk in ids.chunks(500) {
            let rows: Vec<Uuid> = entity::users::Entity::find()
                .select_only()
                .column(entity::users::Column::Id)
                .filter(entity::users::Column::Id.is_in(chunk.to_vec()))
                .filter(entity::users::Column::State.ne(ACTIVE))
                .into_tuple()
                .all(&self.db)
                .await?;
            disabled.extend(rows);
        }
        Ok(disabled)
    }

    fn path_state(path: &str, disabled: &HashSet<Uuid>) -> pb::ObjectState {
        if path_ids(path).iter().any(|id| disabled.contains(id)) {
            pb::ObjectState::Disabled
        } else {
            pb::ObjectState::Active
        }
    }

    /// A user the caller controls, or NOT_FOUND (whether it exists or not).
    async fn visible_user(
        &self,
        caller: &Caller,
        id: Uuid,
        what: &str,
    ) -> ServiceResult<entity::users::Model> {
        match entity::users::Entity::find_by_id(id).one(&self.db).await? {
            Some(user) if caller.controls(&user.path) => Ok(user),
            _ => Err(ServiceError::not_found(format!("{what} {id} not found"))),
        }
    }

    /// The owner to act for: `owner` when given, else the calling user.
    async fn owner_for(
        &self,
        caller: &Caller,
        owner: Option<Uuid>,
    ) -> ServiceResult<entity::users::Model> {
        let id = match (owner, caller.user_id()) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(ServiceError::invalid(
                    "`owner` is required when a service creates an object",
                ));
            }
        };
        self.visible_user(caller, id, "owner user").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtree_range_covers_exactly_the_descendants() {
        let root = format!("/{}/", segment(Uuid::new_v4()));
        let child = format!("{root}{}/", segment(Uuid::new_v4()));
        let sibling = format!("/{}/", segment(Uuid::new_v4()));
        let (lo, hi) = subtree_range(&root);
        for (path, inside) in [(&root, true), (&child, true), (&sibling, false)] {
            assert_eq!(
                path.as_str() >= lo.as_str() && path.as_str() < hi.as_str(),
                inside,
                "{path}"
            );
        }
        assert_eq!(path_ids(&child).len(), 2);
    }
}
