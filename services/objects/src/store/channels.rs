//! Channels: things connected to them, and time-limited grants on them to other users.

use super::*;

impl Store {
    pub(super) async fn controlled_channel(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ServiceResult<entity::channels::Model> {
        let not_found = || ServiceError::not_found(format!("channel {id} not found"));
        let channel = entity::channels::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        let owner = entity::users::Entity::find_by_id(channel.owner_id)
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        if caller.controls(&owner.path) {
            Ok(channel)
        } else {
            Err(not_found())
        }
    }

    pub(super) async fn channel_view(
        &self,
        channel: entity::channels::Model,
    ) -> ServiceResult<pb::Channel> {
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
        if entity::channels::Entity::find()
            .filter(entity::channels::Column::OwnerId.eq(owner.id))
            .filter(entity::channels::Column::Name.eq(name))
            .count(&txn)
            .await?
            > 0
        {
            return Err(exists());
        }
        let id = Uuid::new_v4();
        let model = entity::channels::ActiveModel {
            id: Set(id),
            owner_id: Set(owner.id),
            name: Set(name.to_owned()),
            created_ms: Set(now_ms()),
        };
        match entity::channels::Entity::insert(model)
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
        let mut query = entity::channels::Entity::find().filter(
            entity::channels::Column::OwnerId.in_subquery(
                Query::select()
                    .column(entity::users::Column::Id)
                    .from(entity::users::Entity)
                    .cond_where(in_subtree(entity::users::Column::Path, &root.path))
                    .to_owned(),
            ),
        );
        if let Some(after) = page.after {
            query = query.filter(entity::channels::Column::Id.gt(after));
        }
        let mut rows = query
            .order_by_asc(entity::channels::Column::Id)
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
        entity::channels::Entity::delete_by_id(id)
            .exec(&txn)
            .await?;
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
        if entity::users::Entity::find_by_id(grantee)
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
}
