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
    entity::{
        ACTIVE, DISABLED, channel_grants, channel_things, channels, object_events, thing_labels,
        things, users,
    },
    validate,
};

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
        if tree && txn.get_database_backend() == DatabaseBackend::Postgres {
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(74000001)")
                .await?;
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
            let rows: Vec<Uuid> = users::Entity::find()
                .select_only()
                .column(users::Column::Id)
                .filter(users::Column::Id.is_in(chunk.to_vec()))
                .filter(users::Column::State.ne(ACTIVE))
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
    ) -> ServiceResult<users::Model> {
        match users::Entity::find_by_id(id).one(&self.db).await? {
            Some(user) if caller.controls(&user.path) => Ok(user),
            _ => Err(ServiceError::not_found(format!("{what} {id} not found"))),
        }
    }

    /// The owner to act for: `owner` when given, else the calling user.
    async fn owner_for(&self, caller: &Caller, owner: Option<Uuid>) -> ServiceResult<users::Model> {
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

    // ----- users ------------------------------------------------------------------------------

    async fn user_view(&self, user: users::Model) -> ServiceResult<pb::User> {
        let disabled = self.disabled_among(&[&user.path]).await?;
        Ok(Self::user_message(user, &disabled))
    }

    fn user_message(user: users::Model, disabled: &HashSet<Uuid>) -> pb::User {
        pb::User {
            id: user_id(user.id),
            username: user.username,
            parent: user.parent_id.and_then(user_id),
            state: state_enum(user.state) as i32,
            effective_state: Self::path_state(&user.path, disabled) as i32,
            depth: u32::try_from(user.depth).unwrap_or(0),
            created: Some(timestamp_from_ms(user.created_ms)),
            updated: Some(timestamp_from_ms(user.updated_ms)),
        }
    }

    /// Creates a user: a child of `parent`, or a root user (admins only).
    pub async fn create_user(
        &self,
        caller: &Caller,
        username: &str,
        parent: Option<Uuid>,
    ) -> ServiceResult<pb::User> {
        validate::username(username)?;
        let txn = self.write(true).await?;
        let (parent_id, path_prefix, depth) = match parent {
            None => {
                if !matches!(caller, Caller::Admin { .. }) {
                    return Err(ServiceError::PermissionDenied(
                        "root users are created by registration; give `parent` to create a user below you".into(),
                    ));
                }
                (None, "/".to_owned(), 0)
            }
            Some(parent) => {
                let parent = match users::Entity::find_by_id(parent).one(&txn).await? {
                    Some(p) if caller.controls(&p.path) => p,
                    _ => {
                        return Err(ServiceError::not_found(format!(
                            "parent user {parent} not found"
                        )));
                    }
                };
                if parent.depth + 1 > validate::MAX_DEPTH {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "the user tree is limited to {} levels below a root user",
                        validate::MAX_DEPTH
                    )));
                }
                (Some(parent.id), parent.path, parent.depth + 1)
            }
        };
        if users::Entity::find()
            .filter(users::Column::Username.eq(username))
            .count(&txn)
            .await?
            > 0
        {
            return Err(ServiceError::AlreadyExists(format!(
                "username {username:?} is taken; choose another"
            )));
        }
        let id = Uuid::new_v4();
        let now = now_ms();
        let model = users::ActiveModel {
            id: Set(id),
            username: Set(username.to_owned()),
            parent_id: Set(parent_id),
            path: Set(format!("{path_prefix}{}/", segment(id))),
            depth: Set(depth),
            state: Set(ACTIVE),
            created_ms: Set(now),
            updated_ms: Set(now),
        };
        match users::Entity::insert(model)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                return Err(ServiceError::AlreadyExists(format!(
                    "username {username:?} is taken; choose another"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        let user = self.visible_user(caller, id, "user").await?;
        self.user_view(user).await
    }

    /// A user of the caller's subtree.
    pub async fn get_user(&self, caller: &Caller, id: Uuid) -> ServiceResult<pb::User> {
        let user = self.visible_user(caller, id, "user").await?;
        self.user_view(user).await
    }

    /// A page of the users below `root` (default: the caller).
    pub async fn list_users(
        &self,
        caller: &Caller,
        root: Option<Uuid>,
        children_only: bool,
        page: &Page,
    ) -> ServiceResult<(Vec<pb::User>, String)> {
        let root = match (root, caller.user_id()) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(ServiceError::invalid(
                    "`root` is required when a service lists users",
                ));
            }
        };
        let root = self.visible_user(caller, root, "user").await?;
        let mut query = users::Entity::find();
        query = if children_only {
            query.filter(users::Column::ParentId.eq(root.id))
        } else {
            query.filter(in_subtree(users::Column::Path, &root.path))
        };
        if let Some(after) = page.after {
            query = query.filter(users::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(users::Column::Id)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await?;
        let next = page.finish(&mut rows, |u| u.id);
        let paths: Vec<&str> = rows.iter().map(|u| u.path.as_str()).collect();
        let disabled = self.disabled_among(&paths).await?;
        let users = rows
            .into_iter()
            .map(|u| Self::user_message(u, &disabled))
            .collect();
        Ok((users, next))
    }

    /// Disables `id` and its whole subtree in one transaction, with its event.
    pub async fn disable_user(&self, caller: &Caller, id: Uuid) -> ServiceResult<(u64, u64)> {
        let target = self.visible_user(caller, id, "user").await?;
        if caller.user_id() == Some(id) {
            return Err(ServiceError::FailedPrecondition(
                "you cannot disable yourself; a user above you can".into(),
            ));
        }
        let txn = self.write(true).await?;
        // Re-read inside the transaction: the path is what the update ranges over.
        let target = users::Entity::find_by_id(target.id)
            .one(&txn)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("user {id} not found")))?;
        let affected: Vec<Uuid> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(in_subtree(users::Column::Path, &target.path))
            .filter(users::Column::State.eq(ACTIVE))
            .into_tuple()
            .all(&txn)
            .await?;
        users::Entity::update_many()
            .col_expr(users::Column::State, Expr::value(DISABLED))
            .col_expr(users::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(in_subtree(users::Column::Path, &target.path))
            .filter(users::Column::State.eq(ACTIVE))
            .exec(&txn)
            .await?;
        let things: Vec<Uuid> = things::Entity::find()
            .select_only()
            .column(things::Column::Id)
            .filter(
                things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(users::Column::Id)
                        .from(users::Entity)
                        .cond_where(in_subtree(users::Column::Path, &target.path))
                        .to_owned(),
                ),
            )
            .into_tuple()
            .all(&txn)
            .await?;
        let seq = self
            .record_event(
                &txn,
                pb::ObjectEventKind::UserDisabled,
                id,
                &affected,
                &things,
                caller,
            )
            .await?;
        txn.commit().await?;
        self.events.notify_waiters();
        tracing::info!(user = %id, users = affected.len(), things = things.len(), "disabled a subtree");
        Ok((affected.len() as u64, seq))
    }

    /// Enables `id` (and its subtree when `recursive`).
    pub async fn enable_user(
        &self,
        caller: &Caller,
        id: Uuid,
        recursive: bool,
    ) -> ServiceResult<u64> {
        let target = self.visible_user(caller, id, "user").await?;
        let txn = self.write(true).await?;
        let scope = if recursive {
            in_subtree(users::Column::Path, &target.path)
        } else {
            sea_orm::Condition::all().add(users::Column::Id.eq(target.id))
        };
        let affected: Vec<Uuid> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(scope.clone())
            .filter(users::Column::State.ne(ACTIVE))
            .into_tuple()
            .all(&txn)
            .await?;
        users::Entity::update_many()
            .col_expr(users::Column::State, Expr::value(ACTIVE))
            .col_expr(users::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(scope)
            .filter(users::Column::State.ne(ACTIVE))
            .exec(&txn)
            .await?;
        self.record_event(
            &txn,
            pb::ObjectEventKind::UserEnabled,
            id,
            &affected,
            &[],
            caller,
        )
        .await?;
        txn.commit().await?;
        self.events.notify_waiters();
        Ok(affected.len() as u64)
    }

    /// Moves `id` with its subtree below `new_parent`.
    pub async fn move_user(
        &self,
        caller: &Caller,
        id: Uuid,
        new_parent: Uuid,
    ) -> ServiceResult<pb::User> {
        if caller.user_id() == Some(id) {
            return Err(ServiceError::FailedPrecondition(
                "you cannot move yourself; a user above you can".into(),
            ));
        }
        let txn = self.write(true).await?;
        let target = match users::Entity::find_by_id(id).one(&txn).await? {
            Some(u) if caller.controls(&u.path) => u,
            _ => return Err(ServiceError::not_found(format!("user {id} not found"))),
        };
        let parent = match users::Entity::find_by_id(new_parent).one(&txn).await? {
            Some(u) if caller.controls(&u.path) => u,
            _ => {
                return Err(ServiceError::not_found(format!(
                    "new parent user {new_parent} not found"
                )));
            }
        };
        if parent.path.starts_with(&target.path) {
            return Err(ServiceError::FailedPrecondition(format!(
                "moving user {id} below {new_parent} would create a cycle: {new_parent} is in the subtree of {id}"
            )));
        }
        if target.parent_id != Some(parent.id) {
            let deepest: Option<i32> = users::Entity::find()
                .select_only()
                .column_as(users::Column::Depth.max(), "deepest")
                .filter(in_subtree(users::Column::Path, &target.path))
                .into_tuple()
                .one(&txn)
                .await?
                .flatten();
            let shift = parent.depth + 1 - target.depth;
            if deepest.unwrap_or(target.depth) + shift > validate::MAX_DEPTH {
                return Err(ServiceError::FailedPrecondition(format!(
                    "the move would make the tree deeper than {} levels",
                    validate::MAX_DEPTH
                )));
            }
            let new_prefix = format!("{}{}/", parent.path, segment(target.id));
            let keep_from = i32::try_from(target.path.len()).unwrap_or(i32::MAX) + 1;
            users::Entity::update_many()
                .col_expr(
                    users::Column::Path,
                    Expr::cust_with_values(
                        // sea-query numbers placeholders on PostgreSQL and not on SQLite.
                        match txn.get_database_backend() {
                            DatabaseBackend::Postgres => "$1 || substr(path, $2)",
                            _ => "? || substr(path, ?)",
                        },
                        [
                            sea_orm::Value::from(new_prefix),
                            sea_orm::Value::from(keep_from),
                        ],
                    ),
                )
                .col_expr(
                    users::Column::Depth,
                    Expr::col(users::Column::Depth).add(shift),
                )
                .filter(in_subtree(users::Column::Path, &target.path))
                .exec(&txn)
                .await?;
            users::Entity::update_many()
                .col_expr(users::Column::ParentId, Expr::value(parent.id))
                .col_expr(users::Column::UpdatedMs, Expr::value(now_ms()))
                .filter(users::Column::Id.eq(target.id))
                .exec(&txn)
                .await?;
            self.record_event(&txn, pb::ObjectEventKind::UserMoved, id, &[id], &[], caller)
                .await?;
        }
        txn.commit().await?;
        self.events.notify_waiters();
        self.get_user(caller, id).await
    }

    // ----- things -----------------------------------------------------------------------------

    /// A thing and how the caller reaches it, or NOT_FOUND.
    async fn visible_thing(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<(things::Model, users::Model, ThingAccess)> {
        let not_found = || ServiceError::not_found(format!("thing {id} not found"));
        let thing = things::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        let owner = users::Entity::find_by_id(thing.owner_id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        if caller.controls(&owner.path) {
            return Ok((thing, owner, ThingAccess::Control));
        }
        if let Some(user) = caller.user_id()
            && self
                .granted(user, &thing, &owner.path, None)
                .await?
                .is_some()
        {
            return Ok((thing, owner, ThingAccess::Grant));
        }
        Err(not_found())
    }

    /// A thing the caller controls: NOT_FOUND when invisible, PERMISSION_DENIED when only
    /// shared with it.
    async fn controlled_thing(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<(things::Model, users::Model)> {
        match self.visible_thing(caller, id).await? {
            (thing, owner, ThingAccess::Control) => Ok((thing, owner)),
            (_, _, ThingAccess::Grant) => Err(ServiceError::PermissionDenied(format!(
                "thing {id} is shared with you through a channel; only users above its owner may change it"
            ))),
        }
    }

    /// The live grant (channel id) through which `user` reaches `thing` with `permission` (any
    /// permission when `None`). A grant counts only while unexpired and while the channel's owner
    /// still controls the thing's owner.
    async fn granted(
        &self,
        user: Uuid,
        thing: &things::Model,
        owner_path: &str,
        permission: Option<pb::ChannelPermission>,
    ) -> ServiceResult<Option<Uuid>> {
        let now = now_ms();
        let mut query = channel_grants::Entity::find()
            .filter(channel_grants::Column::GranteeId.eq(user))
            .filter(
                sea_orm::Condition::any()
                    .add(channel_grants::Column::ExpiresMs.is_null())
                    .add(channel_grants::Column::ExpiresMs.gt(now)),
            )
            .filter(
                channel_grants::Column::ChannelId.in_subquery(
                    Query::select()
                        .column(channel_things::Column::ChannelId)
                        .from(channel_things::Entity)
                        .and_where(channel_things::Column::ThingId.eq(thing.id))
                        .to_owned(),
                ),
            );
        query = match permission {
            Some(pb::ChannelPermission::ReadTelemetry) => {
                query.filter(channel_grants::Column::ReadTelemetry.eq(true))
            }
            Some(pb::ChannelPermission::SendCommands) => {
                query.filter(channel_grants::Column::SendCommands.eq(true))
            }
            _ => query,
        };
        let grants = query.all(&self.db).await?;
        if grants.is_empty() {
            return Ok(None);
        }
        let channel_ids: Vec<Uuid> = grants.iter().map(|g| g.channel_id).collect();
        let channel_owners: Vec<Uuid> = channels::Entity::find()
            .select_only()
            .column(channels::Column::OwnerId)
            .filter(channels::Column::Id.is_in(channel_ids.clone()))
            .into_tuple()
            .all(&self.db)
            .await?;
        let owner_paths: Vec<String> = users::Entity::find()
            .select_only()
            .column(users::Column::Path)
            .filter(users::Column::Id.is_in(channel_owners))
            .into_tuple()
            .all(&self.db)
            .await?;
        if owner_paths
            .iter()
            .any(|p| owner_path.starts_with(p.as_str()))
        {
            Ok(channel_ids.first().copied())
        } else {
            Ok(None)
        }
    }

    async fn labels_of(
        &self,
        ids: &[Uuid],
    ) -> ServiceResult<HashMap<Uuid, HashMap<String, String>>> {
        let mut out: HashMap<Uuid, HashMap<String, String>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = thing_labels::Entity::find()
            .filter(thing_labels::Column::ThingId.is_in(ids.to_vec()))
            .all(&self.db)
            .await?;
        for row in rows {
            out.entry(row.thing_id)
                .or_default()
                .insert(row.key, row.value);
        }
        Ok(out)
    }

    /// The paths of the owners of `rows`, by owner id.
    async fn owner_paths(&self, rows: &[things::Model]) -> ServiceResult<HashMap<Uuid, String>> {
        let owner_ids: HashSet<Uuid> = rows.iter().map(|t| t.owner_id).collect();
        Ok(users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .column(users::Column::Path)
            .filter(users::Column::Id.is_in(owner_ids))
            .into_tuple::<(Uuid, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }

    async fn things_view(&self, rows: Vec<things::Model>) -> ServiceResult<Vec<pb::Thing>> {
        let owners = self.owner_paths(&rows).await?;
        self.things_view_with(rows, owners).await
    }

    /// [`Self::things_view`] with the owners' paths already read.
    async fn things_view_with(
        &self,
        rows: Vec<things::Model>,
        owners: HashMap<Uuid, String>,
    ) -> ServiceResult<Vec<pb::Thing>> {
        let ids: Vec<Uuid> = rows.iter().map(|t| t.id).collect();
        let mut labels = self.labels_of(&ids).await?;
        let paths: Vec<&str> = owners.values().map(String::as_str).collect();
        let disabled = self.disabled_among(&paths).await?;
        Ok(rows
            .into_iter()
            .map(|t| {
                let owner_state = owners
                    .get(&t.owner_id)
                    .map_or(pb::ObjectState::Disabled, |p| {
                        Self::path_state(p, &disabled)
                    });
                let effective = if t.state == ACTIVE && owner_state == pb::ObjectState::Active {
                    pb::ObjectState::Active
                } else {
                    pb::ObjectState::Disabled
                };
                pb::Thing {
                    id: Some(thing_id(t.id)),
                    owner: user_id(t.owner_id),
                    name: t.name,
                    labels: labels.remove(&t.id).unwrap_or_default(),
                    state: state_enum(t.state) as i32,
                    effective_state: effective as i32,
                    created: Some(timestamp_from_ms(t.created_ms)),
                    updated: Some(timestamp_from_ms(t.updated_ms)),
                }
            })
            .collect())
    }

    async fn thing_view(&self, thing: things::Model) -> ServiceResult<pb::Thing> {
        self.things_view(vec![thing])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::Internal("thing view lost its row".into()))
    }

    /// Registers a thing for `owner` (default: the caller).
    pub async fn create_thing(
        &self,
        caller: &Caller,
        name: &str,
        owner: Option<Uuid>,
        labels: &HashMap<String, String>,
    ) -> ServiceResult<pb::Thing> {
        validate::object_name("name", name)?;
        validate::labels(labels)?;
        let owner = self.owner_for(caller, owner).await?;
        let txn = self.write(false).await?;
        let taken = things::Entity::find()
            .filter(things::Column::OwnerId.eq(owner.id))
            .filter(things::Column::Name.eq(name))
            .count(&txn)
            .await?;
        let exists = || {
            ServiceError::AlreadyExists(format!(
                "user {} already has a thing named {name:?}",
                owner.id
            ))
        };
        if taken > 0 {
            return Err(exists());
        }
        let id = Uuid::new_v4();
        let now = now_ms();
        let model = things::ActiveModel {
            id: Set(id),
            owner_id: Set(owner.id),
            name: Set(name.to_owned()),
            state: Set(ACTIVE),
            created_ms: Set(now),
            updated_ms: Set(now),
        };
        match things::Entity::insert(model)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        insert_labels(&txn, id, labels).await?;
        txn.commit().await?;
        let thing = things::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::Internal("created thing vanished".into()))?;
        self.thing_view(thing).await
    }

    /// A thing the caller controls or reaches through a live grant.
    pub async fn get_thing(&self, caller: &Caller, id: Uuid) -> ServiceResult<pb::Thing> {
        let (thing, _, _) = self.visible_thing(caller, id).await?;
        self.thing_view(thing).await
    }

    /// A page of things by owner or subtree, filtered by labels.
    pub async fn list_things(
        &self,
        caller: &Caller,
        scope: ThingScope,
        selectors: &[pb::LabelSelector],
        page: &Page,
    ) -> ServiceResult<(Vec<pb::Thing>, String, Vec<Uuid>)> {
        validate::selectors(selectors, validate::MAX_LABELS)?;
        let mut query = things::Entity::find();
        // With `Reachable`: the user's path, to tell shared things from its own.
        let mut reacher: Option<String> = None;
        query = match scope {
            ThingScope::Owner(owner) => {
                let owner = self.visible_user(caller, owner, "owner user").await?;
                query.filter(things::Column::OwnerId.eq(owner.id))
            }
            ThingScope::Subtree(root) => {
                let root = match (root, caller.user_id()) {
                    (Some(id), _) | (None, Some(id)) => id,
                    (None, None) => {
                        return Err(ServiceError::invalid(
                            "`owner` or `subtree` is required when a service lists things",
                        ));
                    }
                };
                let root = self.visible_user(caller, root, "user").await?;
                query.filter(
                    things::Column::OwnerId.in_subquery(
                        Query::select()
                            .column(users::Column::Id)
                            .from(users::Entity)
                            .cond_where(in_subtree(users::Column::Path, &root.path))
                            .to_owned(),
                    ),
                )
            }
            ThingScope::Reachable(user) => {
                let user = self.visible_user(caller, user, "user").await?;
                let owned = things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(users::Column::Id)
                        .from(users::Entity)
                        .cond_where(in_subtree(users::Column::Path, &user.path))
                        .to_owned(),
                );
                // The rule of `granted`, for every thing at once: a live grant to the user on a
                // channel holding the thing, whose owner's path is a prefix of the thing owner's.
                let shared = things::Column::Id.in_subquery(reachable_through_grants(user.id));
                reacher = Some(user.path);
                query.filter(sea_orm::Condition::any().add(owned).add(shared))
            }
        };
        query = with_labels(query, selectors);
        if let Some(after) = page.after {
            query = query.filter(things::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(things::Column::Id)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await?;
        let next = page.finish(&mut rows, |t| t.id);
        // The owners' paths serve the view and tell the shared things (owned outside the
        // reacher's subtree) apart.
        let owners = self.owner_paths(&rows).await?;
        let shared = match reacher {
            Some(path) => rows
                .iter()
                .filter(|t| {
                    owners
                        .get(&t.owner_id)
                        .is_some_and(|p| !p.starts_with(&path))
                })
                .map(|t| t.id)
                .collect(),
            None => Vec::new(),
        };
        Ok((self.things_view_with(rows, owners).await?, next, shared))
    }

    /// Renames a thing and/or replaces its labels.
    pub async fn update_thing(
        &self,
        caller: &Caller,
        id: Uuid,
        name: Option<&str>,
        labels: Option<&HashMap<String, String>>,
    ) -> ServiceResult<pb::Thing> {
        if let Some(name) = name {
            validate::object_name("name", name)?;
        }
        if let Some(labels) = labels {
            validate::labels(labels)?;
        }
        let (thing, _) = self.controlled_thing(caller, id).await?;
        let txn = self.write(false).await?;
        if let Some(name) = name.filter(|n| *n != thing.name) {
            let taken = things::Entity::find()
                .filter(things::Column::OwnerId.eq(thing.owner_id))
                .filter(things::Column::Name.eq(name))
                .count(&txn)
                .await?;
            if taken > 0 {
                return Err(ServiceError::AlreadyExists(format!(
                    "user {} already has a thing named {name:?}",
                    thing.owner_id
                )));
            }
            things::Entity::update_many()
                .col_expr(things::Column::Name, Expr::value(name))
                .filter(things::Column::Id.eq(id))
                .exec(&txn)
                .await
                .map_err(|e| {
                    if unique_violation(&e) {
                        ServiceError::AlreadyExists(format!("another thing is named {name:?}"))
                    } else {
                        e.into()
                    }
                })?;
        }
        if let Some(labels) = labels {
            thing_labels::Entity::delete_many()
                .filter(thing_labels::Column::ThingId.eq(id))
                .exec(&txn)
                .await?;
            insert_labels(&txn, id, labels).await?;
        }
        things::Entity::update_many()
            .col_expr(things::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(things::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.get_thing(caller, id).await
    }

    /// Sets a thing's stored state; disabling emits THING_DISABLED.
    pub async fn set_thing_state(
        &self,
        caller: &Caller,
        id: Uuid,
        active: bool,
    ) -> ServiceResult<pb::Thing> {
        self.controlled_thing(caller, id).await?;
        let txn = self.write(false).await?;
        let state = if active { ACTIVE } else { DISABLED };
        things::Entity::update_many()
            .col_expr(things::Column::State, Expr::value(state))
            .col_expr(things::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(things::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        if !active {
            self.record_event(
                &txn,
                pb::ObjectEventKind::ThingDisabled,
                id,
                &[],
                &[id],
                caller,
            )
            .await?;
        }
        txn.commit().await?;
        self.events.notify_waiters();
        self.get_thing(caller, id).await
    }

    /// Deletes a thing (its labels and channel connections go with it).
    pub async fn delete_thing(&self, caller: &Caller, id: Uuid) -> ServiceResult<u64> {
        self.controlled_thing(caller, id).await?;
        let txn = self.write(false).await?;
        thing_labels::Entity::delete_many()
            .filter(thing_labels::Column::ThingId.eq(id))
            .exec(&txn)
            .await?;
        channel_things::Entity::delete_many()
            .filter(channel_things::Column::ThingId.eq(id))
            .exec(&txn)
            .await?;
        things::Entity::delete_by_id(id).exec(&txn).await?;
        let seq = self
            .record_event(
                &txn,
                pb::ObjectEventKind::ThingDeleted,
                id,
                &[],
                &[id],
                caller,
            )
            .await?;
        txn.commit().await?;
        self.events.notify_waiters();
        Ok(seq)
    }

    // ----- channels ---------------------------------------------------------------------------

    async fn controlled_channel(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<channels::Model> {
        let not_found = || ServiceError::not_found(format!("channel {id} not found"));
        let channel = channels::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        let owner = users::Entity::find_by_id(channel.owner_id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        if caller.controls(&owner.path) {
            Ok(channel)
        } else {
            Err(not_found())
        }
    }

    async fn channel_view(&self, channel: channels::Model) -> ServiceResult<pb::Channel> {
        let things: Vec<Uuid> = channel_things::Entity::find()
            .select_only()
            .column(channel_things::Column::ThingId)
            .filter(channel_things::Column::ChannelId.eq(channel.id))
            .order_by_asc(channel_things::Column::ThingId)
            .into_tuple()
            .all(&self.db)
            .await?;
        let now = now_ms();
        let grants = channel_grants::Entity::find()
            .filter(channel_grants::Column::ChannelId.eq(channel.id))
            .filter(
                sea_orm::Condition::any()
                    .add(channel_grants::Column::ExpiresMs.is_null())
                    .add(channel_grants::Column::ExpiresMs.gt(now)),
            )
            .order_by_asc(channel_grants::Column::GranteeId)
            .all(&self.db)
            .await?;
        Ok(pb::Channel {
            id: Some(pb::ChannelId {
                value: channel.id.to_string(),
            }),
            owner: user_id(channel.owner_id),
            name: channel.name,
            things: things.into_iter().map(thing_id).collect(),
            grants: grants
                .into_iter()
                .map(|g| {
                    let mut permissions = Vec::new();
                    if g.read_telemetry {
                        permissions.push(pb::ChannelPermission::ReadTelemetry as i32);
                    }
                    if g.send_commands {
                        permissions.push(pb::ChannelPermission::SendCommands as i32);
                    }
                    pb::ChannelGrant {
                        grantee: user_id(g.grantee_id),
                        permissions,
                        expires: g.expires_ms.map(timestamp_from_ms),
                        created: Some(timestamp_from_ms(g.created_ms)),
                    }
                })
                .collect(),
            created: Some(timestamp_from_ms(channel.created_ms)),
        })
    }

    /// Creates a channel for `owner` (default: the caller).
    pub async fn create_channel(
        &self,
        caller: &Caller,
        name: &str,
        owner: Option<Uuid>,
    ) -> ServiceResult<pb::Channel> {
        validate::object_name("name", name)?;
        let owner = self.owner_for(caller, owner).await?;
        let exists = || {
            ServiceError::AlreadyExists(format!(
                "user {} already has a channel named {name:?}",
                owner.id
            ))
        };
        let txn = self.write(false).await?;
        if channels::Entity::find()
            .filter(channels::Column::OwnerId.eq(owner.id))
            .filter(channels::Column::Name.eq(name))
            .count(&txn)
            .await?
            > 0
        {
            return Err(exists());
        }
        let id = Uuid::new_v4();
        let model = channels::ActiveModel {
            id: Set(id),
            owner_id: Set(owner.id),
            name: Set(name.to_owned()),
            created_ms: Set(now_ms()),
        };
        match channels::Entity::insert(model)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        self.get_channel(caller, id).await
    }

    /// A channel the caller controls.
    pub async fn get_channel(&self, caller: &Caller, id: Uuid) -> ServiceResult<pb::Channel> {
        let channel = self.controlled_channel(caller, id).await?;
        self.channel_view(channel).await
    }

    /// A page of the channels owned in a subtree.
    pub async fn list_channels(
        &self,
        caller: &Caller,
        subtree: Option<Uuid>,
        page: &Page,
    ) -> ServiceResult<(Vec<pb::Channel>, String)> {
        let root = match (subtree, caller.user_id()) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(ServiceError::invalid(
                    "`subtree` is required when a service lists channels",
                ));
            }
        };
        let root = self.visible_user(caller, root, "user").await?;
        let mut query = channels::Entity::find().filter(
            channels::Column::OwnerId.in_subquery(
                Query::select()
                    .column(users::Column::Id)
                    .from(users::Entity)
                    .cond_where(in_subtree(users::Column::Path, &root.path))
                    .to_owned(),
            ),
        );
        if let Some(after) = page.after {
            query = query.filter(channels::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(channels::Column::Id)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await?;
        let next = page.finish(&mut rows, |c| c.id);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.channel_view(row).await?);
        }
        Ok((out, next))
    }

    /// Deletes a channel with its connections and grants.
    pub async fn delete_channel(&self, caller: &Caller, id: Uuid) -> ServiceResult<()> {
        self.controlled_channel(caller, id).await?;
        let txn = self.write(false).await?;
        channel_grants::Entity::delete_many()
            .filter(channel_grants::Column::ChannelId.eq(id))
            .exec(&txn)
            .await?;
        channel_things::Entity::delete_many()
            .filter(channel_things::Column::ChannelId.eq(id))
            .exec(&txn)
            .await?;
        channels::Entity::delete_by_id(id).exec(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Connects a thing the caller controls. Idempotent.
    pub async fn connect_thing(
        &self,
        caller: &Caller,
        channel: Uuid,
        thing: Uuid,
    ) -> ServiceResult<pb::Channel> {
        let channel = self.controlled_channel(caller, channel).await?;
        let (thing, _) = self.controlled_thing(caller, thing).await?;
        let exists = channel_things::Entity::find_by_id((channel.id, thing.id))
            .one(&self.db)
            .await?
            .is_some();
        if !exists {
            let model = channel_things::ActiveModel {
                channel_id: Set(channel.id),
                thing_id: Set(thing.id),
            };
            match channel_things::Entity::insert(model)
                .exec_without_returning(&self.db)
                .await
            {
                Ok(_) => {}
                Err(e) if unique_violation(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.channel_view(channel).await
    }

    /// Disconnects a thing. Idempotent.
    pub async fn disconnect_thing(
        &self,
        caller: &Caller,
        channel: Uuid,
        thing: Uuid,
    ) -> ServiceResult<pb::Channel> {
        let channel = self.controlled_channel(caller, channel).await?;
        channel_things::Entity::delete_many()
            .filter(channel_things::Column::ChannelId.eq(channel.id))
            .filter(channel_things::Column::ThingId.eq(thing))
            .exec(&self.db)
            .await?;
        self.channel_view(channel).await
    }

    /// Grants (or replaces the grant of) permissions to `grantee`.
    pub async fn grant(
        &self,
        caller: &Caller,
        channel: Uuid,
        grantee: Uuid,
        permissions: &[pb::ChannelPermission],
        expires_ms: Option<i64>,
    ) -> ServiceResult<pb::Channel> {
        if permissions.is_empty() {
            return Err(ServiceError::invalid(
                "`permissions` must name at least one of READ_TELEMETRY, SEND_COMMANDS",
            ));
        }
        if let Some(exp) = expires_ms
            && exp <= now_ms()
        {
            return Err(ServiceError::invalid(
                "`expires` is in the past; give a future time or none",
            ));
        }
        let channel = self.controlled_channel(caller, channel).await?;
        if users::Entity::find_by_id(grantee)
            .one(&self.db)
            .await?
            .is_none()
        {
            return Err(ServiceError::not_found(format!(
                "grantee user {grantee} not found"
            )));
        }
        let txn = self.write(false).await?;
        channel_grants::Entity::delete_many()
            .filter(channel_grants::Column::ChannelId.eq(channel.id))
            .filter(channel_grants::Column::GranteeId.eq(grantee))
            .exec(&txn)
            .await?;
        let model = channel_grants::ActiveModel {
            channel_id: Set(channel.id),
            grantee_id: Set(grantee),
            read_telemetry: Set(permissions.contains(&pb::ChannelPermission::ReadTelemetry)),
            send_commands: Set(permissions.contains(&pb::ChannelPermission::SendCommands)),
            expires_ms: Set(expires_ms),
            created_ms: Set(now_ms()),
        };
        channel_grants::Entity::insert(model)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        self.channel_view(channel).await
    }

    /// Removes a grant. Idempotent.
    pub async fn revoke_grant(
        &self,
        caller: &Caller,
        channel: Uuid,
        grantee: Uuid,
    ) -> ServiceResult<pb::Channel> {
        let channel = self.controlled_channel(caller, channel).await?;
        channel_grants::Entity::delete_many()
            .filter(channel_grants::Column::ChannelId.eq(channel.id))
            .filter(channel_grants::Column::GranteeId.eq(grantee))
            .exec(&self.db)
            .await?;
        self.channel_view(channel).await
    }

    // ----- decisions for other services -------------------------------------------------------

    /// Whether `user` may exercise `permission` on `thing`: through its subtree or a live grant,
    /// both effectively ACTIVE. Allowed: how, and the thing's owner; refused: why.
    pub async fn check_access(
        &self,
        user: Uuid,
        thing: Uuid,
        permission: pb::ChannelPermission,
    ) -> ServiceResult<Result<(&'static str, Uuid), pb::AccessDenial>> {
        use pb::AccessDenial::{NotReachable, PermissionMissing, ThingInactive};
        let Some((user_path, true)) = self.lookup(user).await? else {
            return Ok(Err(NotReachable));
        };
        let Some(thing) = things::Entity::find_by_id(thing).one(&self.db).await? else {
            return Ok(Err(NotReachable));
        };
        let Some((owner_path, owner_active)) = self.lookup(thing.owner_id).await? else {
            return Ok(Err(NotReachable));
        };
        let active = thing.state == ACTIVE && owner_active;
        let via = if owner_path.starts_with(&user_path) {
            "subtree"
        } else if self
            .granted(user, &thing, &owner_path, Some(permission))
            .await?
            .is_some()
        {
            "grant"
        } else if self
            .granted(user, &thing, &owner_path, None)
            .await?
            .is_some()
        {
            return Ok(Err(PermissionMissing));
        } else {
            return Ok(Err(NotReachable));
        };
        if !active {
            return Ok(Err(ThingInactive));
        }
        Ok(Ok((via, thing.owner_id)))
    }

    /// The effectively active things of `selection` on which `user` may exercise every one of
    /// `permissions`, by id, at most [`MAX_ACCESSIBLE`]; true when there were more.
    pub async fn accessible_things(
        &self,
        user: Uuid,
        selection: &Selection,
        permissions: &[pb::ChannelPermission],
    ) -> ServiceResult<(Vec<Uuid>, bool)> {
        let Some((path, true)) = self.lookup(user).await? else {
            return Err(ServiceError::not_found(format!(
                "user {user} not found, or not active"
            )));
        };
        let now = now_ms();
        let live_grants = |user: Uuid| {
            Query::select()
                .column(channel_grants::Column::ChannelId)
                .from(channel_grants::Entity)
                .and_where(channel_grants::Column::GranteeId.eq(user))
                .cond_where(
                    sea_orm::Condition::any()
                        .add(channel_grants::Column::ExpiresMs.is_null())
                        .add(channel_grants::Column::ExpiresMs.gt(now)),
                )
                .to_owned()
        };
        let fetch = u64::try_from(MAX_ACCESSIBLE + 1).unwrap_or(u64::MAX);
        let candidates: Vec<Uuid> = match selection {
            Selection::Channel(id) => {
                let not_found = || ServiceError::not_found(format!("channel {id} not found"));
                let channel = channels::Entity::find_by_id(*id)
                    .one(&self.db)
                    .await?
                    .ok_or_else(not_found)?;
                let (owner_path, _) = self.lookup(channel.owner_id).await?.ok_or_else(not_found)?;
                let granted = || {
                    channel_grants::Entity::find()
                        .filter(channel_grants::Column::ChannelId.eq(*id))
                        .filter(channel_grants::Column::ChannelId.in_subquery(live_grants(user)))
                };
                if !owner_path.starts_with(&path) && granted().one(&self.db).await?.is_none() {
                    return Err(not_found());
                }
                channel_things::Entity::find()
                    .select_only()
                    .column(channel_things::Column::ThingId)
                    .filter(channel_things::Column::ChannelId.eq(*id))
                    .order_by_asc(channel_things::Column::ThingId)
                    .limit(fetch)
                    .into_tuple()
                    .all(&self.db)
                    .await?
            }
            Selection::Labels(selectors) => {
                if selectors.is_empty() {
                    return Err(ServiceError::invalid(
                        "`labels` must hold at least one selector",
                    ));
                }
                validate::selectors(selectors, MAX_SELECTORS)?;
                let owned = things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(users::Column::Id)
                        .from(users::Entity)
                        .cond_where(in_subtree(users::Column::Path, &path))
                        .to_owned(),
                );
                let via_grant = things::Column::Id.in_subquery(
                    Query::select()
                        .column(channel_things::Column::ThingId)
                        .from(channel_things::Entity)
                        .and_where(channel_things::Column::ChannelId.in_subquery(live_grants(user)))
                        .to_owned(),
                );
                with_labels(
                    things::Entity::find()
                        .select_only()
                        .column(things::Column::Id)
                        .filter(sea_orm::Condition::any().add(owned).add(via_grant)),
                    selectors,
                )
                .order_by_asc(things::Column::Id)
                .limit(fetch)
                .into_tuple()
                .all(&self.db)
                .await?
            }
        };
        let truncated = candidates.len() > MAX_ACCESSIBLE;
        let mut allowed = Vec::with_capacity(candidates.len().min(MAX_ACCESSIBLE));
        'things: for thing in candidates.into_iter().take(MAX_ACCESSIBLE) {
            for permission in permissions {
                if self.check_access(user, thing, *permission).await?.is_err() {
                    continue 'things;
                }
            }
            allowed.push(thing);
        }
        Ok((allowed, truncated))
    }

    /// Effective state of a user.
    pub async fn user_effective_state(&self, id: Uuid) -> ServiceResult<pb::ObjectState> {
        let (_, active) = self
            .lookup(id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("user {id} not found")))?;
        Ok(if active {
            pb::ObjectState::Active
        } else {
            pb::ObjectState::Disabled
        })
    }

    /// Effective state and owner of a thing.
    pub async fn thing_effective_state(&self, id: Uuid) -> ServiceResult<(pb::ObjectState, Uuid)> {
        let thing = things::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("thing {id} not found")))?;
        let owner_state = self.user_effective_state(thing.owner_id).await?;
        let state = if thing.state == ACTIVE && owner_state == pb::ObjectState::Active {
            pb::ObjectState::Active
        } else {
            pb::ObjectState::Disabled
        };
        Ok((state, thing.owner_id))
    }

    // ----- events -----------------------------------------------------------------------------

    async fn record_event(
        &self,
        txn: &DatabaseTransaction,
        kind: pb::ObjectEventKind,
        subject: Uuid,
        users: &[Uuid],
        things: &[Uuid],
        caller: &Caller,
    ) -> ServiceResult<u64> {
        let encode = |ids: &[Uuid]| {
            serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into())
        };
        let model = object_events::ActiveModel {
            kind: Set(kind as i32),
            subject: Set(subject.to_string()),
            users: Set(encode(users)),
            things: Set(encode(things)),
            actor: Set(caller.actor()),
            created_ms: Set(now_ms()),
            ..Default::default()
        };
        let seq = object_events::Entity::insert(model)
            .exec(txn)
            .await?
            .last_insert_id;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: u64,
        limit: u64,
    ) -> ServiceResult<Vec<pb::ObjectEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = object_events::Entity::find()
            .filter(object_events::Column::Seq.gt(after))
            .order_by_asc(object_events::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        let decode = |text: &str| -> Vec<String> { serde_json::from_str(text).unwrap_or_default() };
        Ok(rows
            .into_iter()
            .map(|e| pb::ObjectEvent {
                sequence: u64::try_from(e.seq).unwrap_or(0),
                kind: e.kind,
                subject: e.subject,
                users: decode(&e.users)
                    .into_iter()
                    .map(|value| pb::UserId { value })
                    .collect(),
                things: decode(&e.things)
                    .into_iter()
                    .map(|value| pb::ThingId { value })
                    .collect(),
                time: Some(timestamp_from_ms(e.created_ms)),
                actor: e.actor,
            })
            .collect())
    }

    /// Notified when this process commits an event (other replicas are seen by polling).
    pub fn event_signal(&self) -> std::sync::Arc<Notify> {
        self.events.clone()
    }
}

/// Which things a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum ThingScope {
    /// One owner's things.
    Owner(Uuid),
    /// A subtree's things (`None`: the caller's).
    Subtree(Option<Uuid>),
    /// A user's subtree's things and those shared with the user through live grants.
    Reachable(Uuid),
}

/// The things `user` reaches through live grants, as a subquery: a grant to the user, unexpired,
/// on a channel holding the thing, whose owner's path is a prefix of the thing owner's path (the
/// channel's owner still controls the thing) — the rule of `granted`, for every thing at once.
fn reachable_through_grants(user: Uuid) -> sea_orm::sea_query::SelectStatement {
    use sea_orm::sea_query::{Alias, JoinType};
    let (ct, g, c, cu, t, tu) = (
        Alias::new("ct"),
        Alias::new("g"),
        Alias::new("c"),
        Alias::new("cu"),
        Alias::new("t"),
        Alias::new("tu"),
    );
    Query::select()
        .column((ct.clone(), channel_things::Column::ThingId))
        .from_as(channel_things::Entity, ct.clone())
        .join_as(
            JoinType::InnerJoin,
            channel_grants::Entity,
            g.clone(),
            Expr::col((g.clone(), channel_grants::Column::ChannelId))
                .equals((ct.clone(), channel_things::Column::ChannelId)),
        )
        .join_as(
            JoinType::InnerJoin,
            channels::Entity,
            c.clone(),
            Expr::col((c.clone(), channels::Column::Id))
                .equals((ct.clone(), channel_things::Column::ChannelId)),
        )
        .join_as(
            JoinType::InnerJoin,
            users::Entity,
            cu.clone(),
            Expr::col((cu.clone(), users::Column::Id)).equals((c, channels::Column::OwnerId)),
        )
        .join_as(
            JoinType::InnerJoin,
            things::Entity,
            t.clone(),
            Expr::col((t.clone(), things::Column::Id))
                .equals((ct, channel_things::Column::ThingId)),
        )
        .join_as(
            JoinType::InnerJoin,
            users::Entity,
            tu.clone(),
            Expr::col((tu, users::Column::Id)).equals((t, things::Column::OwnerId)),
        )
        .and_where(Expr::col((g.clone(), channel_grants::Column::GranteeId)).eq(user))
        .cond_where(
            sea_orm::Condition::any()
                .add(Expr::col((g.clone(), channel_grants::Column::ExpiresMs)).is_null())
                .add(Expr::col((g, channel_grants::Column::ExpiresMs)).gt(now_ms())),
        )
        // Both functions exist in SQLite and PostgreSQL alike.
        .and_where(Expr::cust("substr(tu.path, 1, length(cu.path)) = cu.path"))
        .to_owned()
}

/// Narrows `query` over things to those matching every selector.
fn with_labels<Q: QueryFilter>(mut query: Q, selectors: &[pb::LabelSelector]) -> Q {
    for s in selectors {
        let mut sub = Query::select();
        sub.column(thing_labels::Column::ThingId)
            .from(thing_labels::Entity)
            .and_where(thing_labels::Column::Key.eq(s.key.clone()));
        if let Some(v) = &s.value {
            sub.and_where(thing_labels::Column::Value.eq(v.clone()));
        }
        query = query.filter(things::Column::Id.in_subquery(sub.to_owned()));
    }
    query
}

async fn insert_labels(
    txn: &DatabaseTransaction,
    thing: Uuid,
    labels: &HashMap<String, String>,
) -> ServiceResult<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let rows = labels.iter().map(|(k, v)| thing_labels::ActiveModel {
        thing_id: Set(thing),
        key: Set(k.clone()),
        value: Set(v.clone()),
    });
    thing_labels::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await?;
    Ok(())
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
