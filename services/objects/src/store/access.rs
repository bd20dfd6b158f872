//! The decisions other services ask for: may this user read or command this thing, which
//! things may it reach, and the effective state of users and things.

use super::{things::with_labels, *};

impl Store {
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
        let Some(thing) = entity::things::Entity::find_by_id(thing)
            .one(&self.db)
            .await?
        else {
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
                let channel = entity::channels::Entity::find_by_id(*id)
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
                let owned = entity::things::Column::OwnerId.in_subquery(
                    Query::select()
                        .column(entity::users::Column::Id)
                        .from(entity::users::Entity)
                        .cond_where(in_subtree(entity::users::Column::Path, &path))
                        .to_owned(),
                );
                let via_grant = entity::things::Column::Id.in_subquery(
                    Query::select()
                        .column(channel_things::Column::ThingId)
                        .from(channel_things::Entity)
                        .and_where(channel_things::Column::ChannelId.in_subquery(live_grants(user)))
                        .to_owned(),
                );
                with_labels(
                    entity::things::Entity::find()
                        .select_only()
                        .column(entity::things::Column::Id)
                        .filter(sea_orm::Condition::any().add(owned).add(via_grant)),
                    selectors,
                )
                .order_by_asc(entity::things::Column::Id)
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
        let thing = entity::things::Entity::find_by_id(id)
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
}
