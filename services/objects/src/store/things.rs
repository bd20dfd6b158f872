//! Things: created, listed, updated, disabled and deleted, with their labels, as their owners
//! and the users they are shared with see them.

use super::*;

impl Store {
    /// A thing and how the caller reaches it, or NOT_FOUND.
    pub(super) async fn visible_thing(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<(entity::things::Model, entity::users::Model, ThingAccess)> {
        let not_found = || ServiceError::not_found(format!("thing {id} not found"));
        let thing = entity::things::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        let owner = entity::users::Entity::find_by_id(thing.owner_id)
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
    pub(super) async fn controlled_thing(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<(entity::things::Model, entity::users::Model)> {
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
    pub(super) async fn granted(
        &self,
        user: Uuid,
        thing: &entity::things::Model,
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
        let channel_owners: Vec<Uuid> = entity::channels::Entity::find()
            .select_only()
            .column(entity::channels::Column::OwnerId)
            .filter(entity::channels::Column::Id.is_in(channel_ids.clone()))
            .into_tuple()
            .all(&self.db)
            .await?;
        let owner_paths: Vec<String> = entity::users::Entity::find()
            .select_only()
            .column(entity::users::Column::Path)
            .filter(entity::users::Column::Id.is_in(channel_owners))
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

    pub(super) async fn labels_of(
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
    pub(super) async fn owner_paths(
        &self,
        rows: &[entity::things::Model],
    ) -> ServiceResult<HashMap<Uuid, String>> {
        let owner_ids: HashSet<Uuid> = rows.iter().map(|t| t.owner_id).collect();
        Ok(entity::users::Entity::find()
            .select_only()
            .column(entity::users::Column::Id)
            .column(entity::users::Column::Path)
            .filter(entity::users::Column::Id.is_in(owner_ids))
            .into_tuple::<(Uuid, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }

    pub(super) async fn things_view(
        &self,
        rows: Vec<entity::things::Model>,
    ) -> ServiceResult<Vec<pb::Thing>> {
        let owners = self.owner_paths(&rows).await?;
        self.things_view_with(rows, owners).await
    }

    /// [`Self::things_view`] with the owners' paths already read.
    pub(super) async fn things_view_with(
        &self,
        rows: Vec<entity::things::Model>,
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

    pub(super) async fn thing_view(
        &self,
        thing: entity::things::Model,
    ) -> ServiceResult<pb::Thing> {
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
        let taken = entity::things::Entity::find()
            .filter(entity::things::Column::OwnerId.eq(owner.id))
            .filter(entity::things::Column::Name.eq(name))
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
        let model = entity::things::ActiveModel {
            id: Set(id),
            owner_id: Set(owner.id),
            name: Set(name.to_owned()),
            state: Set(ACTIVE),
            created_ms: Set(now),
            updated_ms: Set(now),
        };
        match entity::things::Entity::insert(model)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        insert_labels(&txn, id, labels).await?;
        txn.commit().await?;
        let thing = entity::things::Entity::find_by_id(id)
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
        let mut query = entity::things::Entity::find();
        // With `Reachable`: the user's path, to tell shared things from its own.
        let mut reacher: Option<String> = None;
        query = match scope {
            ThingScope::Owner(owner) => {
                let owner = self.visible_user(caller, owner, "owner user").await?;
                query.filter(entity::things::Column::OwnerId.eq(owner.id))
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
                    entity::things::Column::OwnerId.in_subquery(
                        Query::select()
                            .column(entity::users::Column::Id)
                            .from(entity::users::Entity)
                            .cond_where(in_subtree(entity::users::Column::Path, &root.path))
                            .to_owned(),
                    ),
                )
            }
            ThingScope::Reachable(user) => {
                let user = self.visible_user(caller, user, "user").await?;
                let owned = entity::things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(entity::users::Column::Id)
                        .from(entity::users::Entity)
                        .cond_where(in_subtree(entity::users::Column::Path, &user.path))
                        .to_owned(),
                );
                // The rule of `granted`, for every thing at once: a live grant to the user on a
                // channel holding the thing, whose owner's path is a prefix of the thing owner's.
                let shared =
                    entity::things::Column::Id.in_subquery(reachable_through_grants(user.id));
                reacher = Some(user.path);
                query.filter(sea_orm::Condition::any().add(owned).add(shared))
            }
        };
        query = with_labels(query, selectors);
        if let Some(after) = page.after {
            query = query.filter(entity::things::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(entity::things::Column::Id)
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
            let taken = entity::things::Entity::find()
                .filter(entity::things::Column::OwnerId.eq(thing.owner_id))
                .filter(entity::things::Column::Name.eq(name))
                .count(&txn)
                .await?;
            if taken > 0 {
                return Err(ServiceError::AlreadyExists(format!(
                    "user {} already has a thing named {name:?}",
                    thing.owner_id
                )));
            }
            entity::things::Entity::update_many()
                .col_expr(entity::things::Column::Name, Expr::value(name))
                .filter(entity::things::Column::Id.eq(id))
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
        entity::things::Entity::update_many()
            .col_expr(entity::things::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(entity::things::Column::Id.eq(id))
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
        entity::things::Entity::update_many()
            .col_expr(entity::things::Column::State, Expr::value(state))
            .col_expr(entity::things::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(entity::things::Column::Id.eq(id))
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
        entity::things::Entity::delete_by_id(id).exec(&txn).await?;
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
pub(super) fn reachable_through_grants(user: Uuid) -> sea_orm::sea_query::SelectStatement {
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
            entity::channels::Entity,
            c.clone(),
            Expr::col((c.clone(), entity::channels::Column::Id))
                .equals((ct.clone(), channel_things::Column::ChannelId)),
        )
        .join_as(
            JoinType::InnerJoin,
            entity::users::Entity,
            cu.clone(),
            Expr::col((cu.clone(), entity::users::Column::Id))
                .equals((c, entity::channels::Column::OwnerId)),
        )
        .join_as(
            JoinType::InnerJoin,
            entity::things::Entity,
            t.clone(),
            Expr::col((t.clone(), entity::things::Column::Id))
                .equals((ct, channel_things::Column::ThingId)),
        )
        .join_as(
            JoinType::InnerJoin,
            entity::users::Entity,
            tu.clone(),
            Expr::col((tu, entity::users::Column::Id)).equals((t, entity::things::Column::OwnerId)),
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
pub(super) fn with_labels<Q: QueryFilter>(mut query: Q, selectors: &[pb::LabelSelector]) -> Q {
    for s in selectors {
        let mut sub = Query::select();
        sub.column(thing_labels::Column::ThingId)
            .from(thing_labels::Entity)
            .and_where(thing_labels::Column::Key.eq(s.key.clone()));
        if let Some(v) = &s.value {
            sub.and_where(thing_labels::Column::Value.eq(v.clone()));
        }
        query = query.filter(entity::things::Column::Id.in_subquery(sub.to_owned()));
    }
    query
}

pub(super) async fn insert_labels(
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
