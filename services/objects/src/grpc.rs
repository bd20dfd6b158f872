//! gRPC front of the Objects store: parse, authorize the caller, call the store, answer.

use std::time::Duration;

use sipmba_auth::{Access, Principal, scopes};
use sipmba_proto::v1::{
    self as pb, access_service_server::AccessService, channel_service_server::ChannelService,
    event_service_server::EventService, thing_service_server::ThingService,
    user_service_server::UserService,
};
use sipmba_runtime::{
    ServiceError, ServiceResult, Shutdown,
    ids::{Page, optional_id, required_id, timestamp_to_ms},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{Caller, Selection, Store, ThingScope};

/// Implements every Objects gRPC service over one [`Store`].
#[derive(Debug, Clone)]
pub struct ObjectsService {
    store: Store,
    shutdown: Shutdown,
}

impl ObjectsService {
    /// Serves `store`; streams end when `shutdown` starts.
    pub fn new(store: Store, shutdown: Shutdown) -> Self {
        Self { store, shutdown }
    }

    /// Registers the services, their access rules and their database with `server`.
    pub fn register(self, server: &mut sipmba_runtime::Server) {
        server
            .add_service(pb::user_service_server::UserServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::thing_service_server::ThingServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::channel_service_server::ChannelServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::access_service_server::AccessServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::event_service_server::EventServiceServer::new(
                self.clone(),
            ))
            .access(access_policy())
            .requires_database(self.store.db().clone());
    }

    async fn caller<T>(&self, req: &Request<T>) -> ServiceResult<Caller> {
        self.store.caller(Principal::from_request(req)?).await
    }
}

/// The scope each Objects method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    use Access::Scope;
    vec![
        (
            "/sipmba.v1.UserService/CreateUser",
            Scope(scopes::USERS_WRITE),
        ),
        ("/sipmba.v1.UserService/GetUser", Scope(scopes::USERS_READ)),
        (
            "/sipmba.v1.UserService/ListUsers",
            Scope(scopes::USERS_READ),
        ),
        (
            "/sipmba.v1.UserService/DisableUser",
            Scope(scopes::USERS_WRITE),
        ),
        (
            "/sipmba.v1.UserService/EnableUser",
            Scope(scopes::USERS_WRITE),
        ),
        (
            "/sipmba.v1.UserService/MoveUser",
            Scope(scopes::USERS_WRITE),
        ),
        (
            "/sipmba.v1.ThingService/CreateThing",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.ThingService/GetThing",
            Scope(scopes::THINGS_READ),
        ),
        (
            "/sipmba.v1.ThingService/ListThings",
            Scope(scopes::THINGS_READ),
        ),
        (
            "/sipmba.v1.ThingService/UpdateThing",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.ThingService/DisableThing",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.ThingService/EnableThing",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.ThingService/DeleteThing",
            Scope(scopes::THINGS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/CreateChannel",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/GetChannel",
            Scope(scopes::CHANNELS_READ),
        ),
        (
            "/sipmba.v1.ChannelService/ListChannels",
            Scope(scopes::CHANNELS_READ),
        ),
        (
            "/sipmba.v1.ChannelService/DeleteChannel",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/ConnectThing",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/DisconnectThing",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/GrantAccess",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.ChannelService/RevokeGrant",
            Scope(scopes::CHANNELS_WRITE),
        ),
        (
            "/sipmba.v1.AccessService/CheckAccess",
            Scope(scopes::OBJECTS_AUTHORIZE),
        ),
        (
            "/sipmba.v1.AccessService/GetEffectiveState",
            Scope(scopes::OBJECTS_AUTHORIZE),
        ),
        (
            "/sipmba.v1.AccessService/ListAccessibleThings",
            Scope(scopes::OBJECTS_AUTHORIZE),
        ),
        (
            "/sipmba.v1.EventService/WatchEvents",
            Scope(scopes::OBJECTS_EVENTS),
        ),
    ]
}

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(result: ServiceResult<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

fn permission(field: &str, value: i32) -> ServiceResult<pb::ChannelPermission> {
    match pb::ChannelPermission::try_from(value) {
        Ok(p) if p != pb::ChannelPermission::Unspecified => Ok(p),
        _ => Err(ServiceError::invalid(format!(
            "`{field}` must be READ_TELEMETRY (1) or SEND_COMMANDS (2), got {value}"
        ))),
    }
}

#[tonic::async_trait]
impl UserService for ObjectsService {
    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> Reply<pb::User> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let parent = optional_id("parent", r.parent.as_ref())?;
                self.store.create_user(&caller, &r.username, parent).await
            }
            .await,
        )
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Reply<pb::User> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.get_user(&caller, id).await
            }
            .await,
        )
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let root = optional_id("root", r.root.as_ref())?;
                let filters = format!("users:{root:?}:{}", r.children_only);
                let page = Page::decode(r.page.as_ref(), &filters)?;
                let (users, next_page_token) = self
                    .store
                    .list_users(&caller, root, r.children_only, &page)
                    .await?;
                Ok(pb::ListUsersResponse {
                    users,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn disable_user(
        &self,
        req: Request<pb::DisableUserRequest>,
    ) -> Reply<pb::DisableUserResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                let (users_disabled, event_sequence) = self.store.disable_user(&caller, id).await?;
                Ok(pb::DisableUserResponse {
                    users_disabled,
                    event_sequence,
                })
            }
            .await,
        )
    }

    async fn enable_user(
        &self,
        req: Request<pb::EnableUserRequest>,
    ) -> Reply<pb::EnableUserResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let id = required_id("id", r.id.as_ref())?;
                let users_enabled = self.store.enable_user(&caller, id, r.recursive).await?;
                Ok(pb::EnableUserResponse { users_enabled })
            }
            .await,
        )
    }

    async fn move_user(&self, req: Request<pb::MoveUserRequest>) -> Reply<pb::User> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let id = required_id("id", r.id.as_ref())?;
                let parent = required_id("new_parent", r.new_parent.as_ref())?;
                self.store.move_user(&caller, id, parent).await
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl ThingService for ObjectsService {
    async fn create_thing(&self, req: Request<pb::CreateThingRequest>) -> Reply<pb::Thing> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let owner = optional_id("owner", r.owner.as_ref())?;
                self.store
                    .create_thing(&caller, &r.name, owner, &r.labels)
                    .await
            }
            .await,
        )
    }

    async fn get_thing(&self, req: Request<pb::GetThingRequest>) -> Reply<pb::Thing> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.get_thing(&caller, id).await
            }
            .await,
        )
    }

    async fn list_things(
        &self,
        req: Request<pb::ListThingsRequest>,
    ) -> Reply<pb::ListThingsResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let scope = match &r.scope {
                    Some(pb::list_things_request::Scope::Owner(id)) => {
                        ThingScope::Owner(required_id("owner", Some(id))?)
                    }
                    Some(pb::list_things_request::Scope::Subtree(id)) => {
                        ThingScope::Subtree(Some(required_id("subtree", Some(id))?))
                    }
                    Some(pb::list_things_request::Scope::Reachable(id)) => {
                        ThingScope::Reachable(required_id("reachable", Some(id))?)
                    }
                    None => ThingScope::Subtree(None),
                };
                let mut filters = format!("things:{scope:?}");
                for s in &r.labels {
                    filters.push_str(&format!(":{}={:?}", s.key, s.value));
                }
                let page = Page::decode(r.page.as_ref(), &filters)?;
                let (things, next_page_token, shared) = self
                    .store
                    .list_things(&caller, scope, &r.labels, &page)
                    .await?;
                Ok(pb::ListThingsResponse {
                    things,
                    next_page_token,
                    shared: shared
                        .into_iter()
                        .map(|id| pb::ThingId {
                            value: id.to_string(),
                        })
                        .collect(),
                })
            }
            .await,
        )
    }

    async fn update_thing(&self, req: Request<pb::UpdateThingRequest>) -> Reply<pb::Thing> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let id = required_id("id", r.id.as_ref())?;
                if r.name.is_none() && !r.replace_labels {
                    return Err(ServiceError::invalid(
                        "nothing to update: set `name`, or `replace_labels` with `labels`",
                    ));
                }
                let labels = r.replace_labels.then_some(&r.labels);
                self.store
                    .update_thing(&caller, id, r.name.as_deref(), labels)
                    .await
            }
            .await,
        )
    }

    async fn disable_thing(&self, req: Request<pb::DisableThingRequest>) -> Reply<pb::Thing> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.set_thing_state(&caller, id, false).await
            }
            .await,
        )
    }

    async fn enable_thing(&self, req: Request<pb::EnableThingRequest>) -> Reply<pb::Thing> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.set_thing_state(&caller, id, true).await
            }
            .await,
        )
    }

    async fn delete_thing(
        &self,
        req: Request<pb::DeleteThingRequest>,
    ) -> Reply<pb::DeleteThingResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                let event_sequence = self.store.delete_thing(&caller, id).await?;
                Ok(pb::DeleteThingResponse { event_sequence })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl ChannelService for ObjectsService {
    async fn create_channel(&self, req: Request<pb::CreateChannelRequest>) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let owner = optional_id("owner", r.owner.as_ref())?;
                self.store.create_channel(&caller, &r.name, owner).await
            }
            .await,
        )
    }

    async fn get_channel(&self, req: Request<pb::GetChannelRequest>) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.get_channel(&caller, id).await
            }
            .await,
        )
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Reply<pb::ListChannelsResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let subtree = optional_id("subtree", r.subtree.as_ref())?;
                let page = Page::decode(r.page.as_ref(), &format!("channels:{subtree:?}"))?;
                let (channels, next_page_token) =
                    self.store.list_channels(&caller, subtree, &page).await?;
                Ok(pb::ListChannelsResponse {
                    channels,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> Reply<pb::DeleteChannelResponse> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let id = required_id("id", req.get_ref().id.as_ref())?;
                self.store.delete_channel(&caller, id).await?;
                Ok(pb::DeleteChannelResponse {})
            }
            .await,
        )
    }

    async fn connect_thing(&self, req: Request<pb::ConnectThingRequest>) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let channel = required_id("channel", r.channel.as_ref())?;
                let thing = required_id("thing", r.thing.as_ref())?;
                self.store.connect_thing(&caller, channel, thing).await
            }
            .await,
        )
    }

    async fn disconnect_thing(
        &self,
        req: Request<pb::DisconnectThingRequest>,
    ) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let channel = required_id("channel", r.channel.as_ref())?;
                let thing = required_id("thing", r.thing.as_ref())?;
                self.store.disconnect_thing(&caller, channel, thing).await
            }
            .await,
        )
    }

    async fn grant_access(&self, req: Request<pb::GrantAccessRequest>) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let channel = required_id("channel", r.channel.as_ref())?;
                let grantee = required_id("grantee", r.grantee.as_ref())?;
                let permissions = r
                    .permissions
                    .iter()
                    .map(|p| permission("permissions", *p))
                    .collect::<ServiceResult<Vec<_>>>()?;
                let expires = r
                    .expires
                    .as_ref()
                    .map(|t| timestamp_to_ms("expires", t))
                    .transpose()?;
                self.store
                    .grant(&caller, channel, grantee, &permissions, expires)
                    .await
            }
            .await,
        )
    }

    async fn revoke_grant(&self, req: Request<pb::RevokeGrantRequest>) -> Reply<pb::Channel> {
        reply(
            async {
                let caller = self.caller(&req).await?;
                let r = req.get_ref();
                let channel = required_id("channel", r.channel.as_ref())?;
                let grantee = required_id("grantee", r.grantee.as_ref())?;
                self.store.revoke_grant(&caller, channel, grantee).await
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl AccessService for ObjectsService {
    async fn check_access(
        &self,
        req: Request<pb::CheckAccessRequest>,
    ) -> Reply<pb::CheckAccessResponse> {
        reply(
            async {
                let r = req.get_ref();
                let user = required_id("user", r.user.as_ref())?;
                let thing = required_id("thing", r.thing.as_ref())?;
                let permission = permission("permission", r.permission)?;
                Ok(
                    match self.store.check_access(user, thing, permission).await? {
                        Ok((via, owner)) => pb::CheckAccessResponse {
                            allowed: true,
                            via: via.to_owned(),
                            thing_owner: Some(pb::UserId {
                                value: owner.to_string(),
                            }),
                            denial: pb::AccessDenial::Unspecified as i32,
                        },
                        Err(denial) => pb::CheckAccessResponse {
                            denial: denial as i32,
                            ..Default::default()
                        },
                    },
                )
            }
            .await,
        )
    }

    async fn get_effective_state(
        &self,
        req: Request<pb::GetEffectiveStateRequest>,
    ) -> Reply<pb::GetEffectiveStateResponse> {
        reply(
            async {
                use pb::get_effective_state_request::Subject;
                match &req.get_ref().subject {
                    Some(Subject::User(id)) => {
                        let id = required_id("user", Some(id))?;
                        let state = self.store.user_effective_state(id).await?;
                        Ok(pb::GetEffectiveStateResponse {
                            effective_state: state as i32,
                            owner: None,
                        })
                    }
                    Some(Subject::Thing(id)) => {
                        let id = required_id("thing", Some(id))?;
                        let (state, owner) = self.store.thing_effective_state(id).await?;
                        Ok(pb::GetEffectiveStateResponse {
                            effective_state: state as i32,
                            owner: Some(pb::UserId {
                                value: owner.to_string(),
                            }),
                        })
                    }
                    None => Err(ServiceError::invalid(
                        "`subject` is required: a user or a thing",
                    )),
                }
            }
            .await,
        )
    }

    async fn list_accessible_things(
        &self,
        req: Request<pb::ListAccessibleThingsRequest>,
    ) -> Reply<pb::ListAccessibleThingsResponse> {
        reply(
            async {
                use pb::list_accessible_things_request::Selection as S;
                let r = req.get_ref();
                let user = required_id("user", r.user.as_ref())?;
                let selection = match &r.selection {
                    Some(S::Channel(id)) => Selection::Channel(required_id("channel", Some(id))?),
                    Some(S::Labels(set)) => Selection::Labels(set.selectors.clone()),
                    None => {
                        return Err(ServiceError::invalid(
                            "`selection` is required: a channel or labels",
                        ));
                    }
                };
                if r.permissions.is_empty() {
                    return Err(ServiceError::invalid(
                        "`permissions` must name at least one permission",
                    ));
                }
                let permissions = r
                    .permissions
                    .iter()
                    .map(|p| permission("permissions", *p))
                    .collect::<ServiceResult<Vec<_>>>()?;
                let (things, truncated) = self
                    .store
                    .accessible_things(user, &selection, &permissions)
                    .await?;
                Ok(pb::ListAccessibleThingsResponse {
                    things: things
                        .into_iter()
                        .map(|t| pb::ThingId {
                            value: t.to_string(),
                        })
                        .collect(),
                    truncated,
                })
            }
            .await,
        )
    }
}

/// Events are sent in pages of this size.
const EVENT_BATCH: u64 = 500;
/// Other replicas' commits are noticed by polling at this interval.
const EVENT_POLL: Duration = Duration::from_millis(500);

#[tonic::async_trait]
impl EventService for ObjectsService {
    type WatchEventsStream = ReceiverStream<Result<pb::ObjectEvent, Status>>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let mut after = req.get_ref().after_sequence;
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let signal = store.event_signal();
        tokio::spawn(async move {
            loop {
                let committed = signal.notified();
                tokio::pin!(committed);
                committed.as_mut().enable();
                let batch = match store.events_after(after, EVENT_BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = batch.len() as u64 == EVENT_BATCH;
                for event in batch {
                    after = event.sequence;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    () = committed => {}
                    () = tokio::time::sleep(EVENT_POLL) => {}
                    () = tx.closed() => return,
                    () = shutdown.clone().wait() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
