//! Users: the tree, created, listed, disabled, enabled and moved.

use super::*;

impl Store {
    pub(super) async fn user_view(&self, user: entity::users::Model) -> ServiceResult<pb::User> {
        let disabled = self.disabled_among(&[&user.path]).await?;
        Ok(Self::user_message(user, &disabled))
    }

    pub(super) fn user_message(user: entity::users::Model, disabled: &HashSet<Uuid>) -> pb::User {
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
                let parent = match entity::users::Entity::find_by_id(parent).one(&txn).await? {
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
        if entity::users::Entity::find()
            .filter(entity::users::Column::Username.eq(username))
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
        let model = entity::users::ActiveModel {
            id: Set(id),
            username: Set(username.to_owned()),
            parent_id: Set(parent_id),
            path: Set(format!("{path_prefix}{}/", segment(id))),
            depth: Set(depth),
            state: Set(ACTIVE),
            created_ms: Set(now),
            updated_ms: Set(now),
        };
        match entity::users::Entity::insert(model)
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
        let mut query = entity::users::Entity::find();
        query = if children_only {
            query.filter(entity::users::Column::ParentId.eq(root.id))
        } else {
            query.filter(in_subtree(entity::users::Column::Path, &root.path))
        };
        if let Some(after) = page.after {
            query = query.filter(entity::users::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(entity::users::Column::Id)
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
        let target = entity::users::Entity::find_by_id(target.id)
            .one(&txn)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("user {id} not found")))?;
        let affected: Vec<Uuid> = entity::users::Entity::find()
            .select_only()
            .column(entity::users::Column::Id)
            .filter(in_subtree(entity::users::Column::Path, &target.path))
            .filter(entity::users::Column::State.eq(ACTIVE))
            .into_tuple()
            .all(&txn)
            .await?;
        entity::users::Entity::update_many()
            .col_expr(entity::users::Column::State, Expr::value(DISABLED))
            .col_expr(entity::users::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(in_subtree(entity::users::Column::Path, &target.path))
            .filter(entity::users::Column::State.eq(ACTIVE))
            .exec(&txn)
            .await?;
        let things: Vec<Uuid> = entity::things::Entity::find()
            .select_only()
            .column(entity::things::Column::Id)
            .filter(
                entity::things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(entity::users::Column::Id)
                        .from(entity::users::Entity)
                        .cond_where(in_subtree(entity::users::Column::Path, &target.path))
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
            in_subtree(entity::users::Column::Path, &target.path)
        } else {
            sea_orm::Condition::all().add(entity::users::Column::Id.eq(target.id))
        };
        let affected: Vec<Uuid> = entity::users::Entity::find()
            .select_only()
            .column(entity::users::Column::Id)
            .filter(scope.clone())
            .filter(entity::users::Column::State.ne(ACTIVE))
            .into_tuple()
            .all(&txn)
            .await?;
        entity::users::Entity::update_many()
            .col_expr(entity::users::Column::State, Expr::value(ACTIVE))
            .col_expr(entity::users::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(scope)
            .filter(entity::users::Column::State.ne(ACTIVE))
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
        let target = match entity::users::Entity::find_by_id(id).one(&txn).await? {
            Some(u) if caller.controls(&u.path) => u,
            _ => return Err(ServiceError::not_found(format!("user {id} not found"))),
        };
        let parent = match entity::users::Entity::find_by_id(new_parent)
            .one(&txn)
            .await?
        {
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
            let deepest: Option<i32> = entity::users::Entity::find()
                .select_only()
                .column_as(entity::users::Column::Depth.max(), "deepest")
                .filter(in_subtree(entity::users::Column::Path, &target.path))
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
            entity::users::Entity::update_many()
                .col_expr(
                    entity::users::Column::Path,
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
                    entity::users::Column::Depth,
                    Expr::col(entity::users::Column::Depth).add(shift),
                )
                .filter(in_subtree(entity::users::Column::Path, &target.path))
                .exec(&txn)
                .await?;
            entity::users::Entity::update_many()
                .col_expr(entity::users::Column::ParentId, Expr::value(parent.id))
                .col_expr(entity::users::Column::UpdatedMs, Expr::value(now_ms()))
                .filter(entity::users::Column::Id.eq(target.id))
                .exec(&txn)
                .await?;
            self.record_event(&txn, pb::ObjectEventKind::UserMoved, id, &[id], &[], caller)
                .await?;
        }
        txn.commit().await?;
        self.events.notify_waiters();
        self.get_user(caller, id).await
    }
}
